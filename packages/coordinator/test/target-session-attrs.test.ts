import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { findBasebackup, type PgStandby, startStandby } from '@pgbouncer-cluster/scripts/pg-standby'
import type pg from 'pg'
import {
  metricsBase,
  type Pooler,
  scrapeMetrics,
  startPooler,
  until,
  withClient,
  writeIni,
} from './support.ts'

const BASEBACKUP = findBasebackup()

// target_session_attrs over real streaming replication: a primary on
// 127.0.0.2 and a standby made with `pg_basebackup -R` on 127.0.0.3, both in
// one host list. Which host each entry's statements run on, prefer-standby's
// fall-back and return, and a failover through a promotion with writers
// running. PgBouncer 1.18 refuses the key (`unrecognized connection
// parameter`), so nothing here runs against it.
describe('target_session_attrs with streaming replication', {
  timeout: 300_000,
  skip: skipWithout('pg_basebackup', BASEBACKUP),
}, () => {
  const primary = usePostgres({
    host: '127.0.0.2',
    databases: ['app'],
    hba: ['local replication all trust'],
  })
  let standby: PgStandby
  let pooler: Pooler

  before(
    async () => {
      const p = primary.server
      await withClient({ host: p.host, port: p.port, user: 'postgres', database: 'app' }, (c) =>
        c.query('CREATE TABLE t (writer int, n int, PRIMARY KEY (writer, n))'),
      )
      standby = await startStandby(p, '127.0.0.3')
      await until('the standby to stream', async () => {
        const { rows } = await p.query(
          "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'",
        )
        return rows.length === 1
      })
      // Synchronous: a commit the primary acknowledged is on the standby, so a
      // failover loses no insert a client was told had committed.
      await p.query("ALTER SYSTEM SET synchronous_standby_names = '*'")
      await p.query("ALTER SYSTEM SET synchronous_commit = 'on'")
      await p.query('SELECT pg_reload_conf()')
      await until('the standby to be synchronous', async () => {
        const { rows } = await p.query(
          "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
        )
        return rows.length === 1
      })
      const hosts = `host=${p.host},${standby.host} port=${p.port},${standby.port} dbname=app`
      const entry = (attrs: string) => `${hosts} target_session_attrs=${attrs}`
      const ini = writeIni({
        databases: {
          rw: entry('read-write'),
          ro: entry('read-only'),
          pr: entry('primary'),
          sb: entry('standby'),
          ps: entry('prefer-standby'),
          anyhost: hosts,
          // The primary alone, for a standby: nothing ever fits.
          nofit: `host=${p.host} port=${p.port} dbname=app target_session_attrs=standby query_wait_timeout=1`,
        },
        pgbouncer: {
          admin_users: 'postgres',
          pool_mode: 'transaction',
          default_pool_size: 6,
          max_client_conn: 200,
          query_wait_timeout: 30,
          server_login_retry: 1,
        },
      })
      pooler = await startPooler(ini, {
        workers: 2,
        timeoutMs: 60_000,
        args: ['--metrics', '127.0.0.1:0'],
      })
    },
    { timeout: 180_000 },
  )
  after(async () => {
    await pooler?.stop()
    await standby?.stop()
  })

  /** Where `n` transactions at once ran: each its own client, so the pools grow over both hosts. */
  async function where(database: string, n: number): Promise<{ standby: boolean; addr: string }[]> {
    const clients = Array.from({ length: n }, () => pooler.client({ database }))
    try {
      await Promise.all(clients.map((c) => c.connect()))
      return await Promise.all(
        clients.map(async (c) => {
          const { rows } = await c.query<{ r: boolean; addr: string }>(
            'SELECT pg_is_in_recovery() AS r, host(inet_server_addr()) AS addr',
          )
          return { standby: rows[0]!.r, addr: rows[0]!.addr }
        }),
      )
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  }

  async function hosts(): Promise<Record<string, string>[]> {
    return withClient(
      { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
      async (c) => (await c.query('SHOW HOSTS')).rows,
    )
  }

  test('read-write and primary run every statement on the primary, read-only and standby on the standby; SHOW HOSTS and /metrics show the roles', async () => {
    for (const [database, onStandby] of [
      ['rw', false],
      ['pr', false],
      ['ro', true],
      ['sb', true],
    ] as const) {
      for (let round = 0; round < 3; round++) {
        const runs = await where(database, 10)
        const wrong = runs.filter((r) => r.standby !== onStandby)
        assert.deepEqual(wrong, [], `${database}: ${wrong.length} of 10 on the wrong host`)
        const addr = onStandby ? standby.host : primary.server.host
        assert.ok(runs.every((r) => r.addr === addr))
      }
    }
    // Without the key both hosts serve (as before).
    const anyRuns = await where('anyhost', 12)
    assert.equal(new Set(anyRuns.map((r) => r.standby)).size, 2, 'anyhost used both hosts')

    const rows = await hosts()
    const rw = rows.filter((r) => r.database === 'rw')
    assert.deepEqual(
      rw.map((r) => [r.host, r.role, r.state, r.target_session_attrs]),
      [
        [primary.server.host, 'primary', 'closed', 'read-write'],
        [standby.host, 'standby', 'closed', 'read-write'],
      ],
    )
    const samples = await scrapeMetrics(metricsBase(pooler))
    const label = (host: string, port: number, role: string) =>
      `pgbouncer_cluster_host_role{database="rw",host="${host}",port="${port}",role="${role}"}`
    assert.equal(samples.get(label(primary.server.host, primary.server.port, 'primary')), 1)
    assert.equal(samples.get(label(standby.host, standby.port, 'standby')), 1)
    assert.equal(samples.get(label(standby.host, standby.port, 'primary')), 0)
  })

  test("no host fits: the client waits query_wait_timeout, then gets an error naming the entry and libpq's reason", async () => {
    const c = pooler.client({ database: 'nofit' })
    c.on('error', () => {})
    try {
      // No server ever logged in for the entry: the login itself waits for one.
      await assert.rejects(
        c.connect().then(() => c.query('SELECT 1')),
        {
          message:
            'query_wait_timeout: no host of database "nofit" fits target_session_attrs=standby: server is not in hot standby mode',
        },
      )
    } finally {
      await c.end().catch(() => {})
    }
    const row = (await hosts()).find((r) => r.database === 'nofit')!
    assert.equal(row.role, 'primary')
  })

  test('prefer-standby runs on the standby, falls back to the primary while it is stopped, and returns to it', async () => {
    assert.ok((await where('ps', 10)).every((r) => r.standby))
    // Synchronous replication would hold every commit while the standby is down: reads only here.
    await standby.halt('fast')
    try {
      // The idle servers on the standby were ended with it; the next logins find it refusing.
      let runs: { standby: boolean; addr: string }[] = []
      await until('prefer-standby to answer from the primary', async () => {
        runs = await where('ps', 1).catch(() => [])
        return runs.length === 1
      })
      const fallback = await where('ps', 10)
      assert.ok(
        fallback.every((r) => !r.standby && r.addr === primary.server.host),
        'fell back to the primary',
      )
      const ps = (await hosts()).find((r) => r.database === 'ps' && r.host === standby.host)!
      assert.notEqual(ps.state, 'closed', 'the stopped standby is not taken')
    } finally {
      await standby.start()
    }
    // Back: the pool logs in to the standby again and lets the primary's servers go.
    await until(
      'prefer-standby to return to the standby',
      async () => {
        const runs = await where('ps', 4)
        return runs.every((r) => r.standby)
      },
      30_000,
    )
  })

  test('failover: writers on read-write move to the promoted standby within query_wait_timeout; no acknowledged insert is lost', async (t) => {
    interface Done {
      writer: number
      n: number
      at: number
      addr: string
    }
    const committed: Done[] = []
    const errors: { writer: number; at: number; message: string }[] = []
    let stop = false
    const writer = async (id: number) => {
      let client: pg.Client | null = null
      let n = 0
      while (!stop) {
        try {
          if (client === null) {
            client = pooler.client({ database: 'rw' })
            client.on('error', () => {})
            await client.connect()
          }
          n++
          const { rows } = await client.query<{ addr: string }>(
            'INSERT INTO t (writer, n) VALUES ($1, $2) RETURNING host(inet_server_addr()) AS addr',
            [id, n],
          )
          committed.push({ writer: id, n, at: Date.now(), addr: rows[0]!.addr })
        } catch (err) {
          errors.push({ writer: id, at: Date.now(), message: (err as Error).message })
          const c = client
          client = null
          await c?.end().catch(() => {})
          await sleep(10)
        }
      }
      await client?.end().catch(() => {})
    }
    const writers = [1, 2, 3, 4].map(writer)
    try {
      await until('writes before the failover', async () => committed.length >= 200)
      const haltAt = Date.now()
      assert.equal(
        errors.length,
        0,
        `no error before the primary stopped: ${JSON.stringify(errors)}`,
      )
      assert.ok(committed.every((c) => c.addr === primary.server.host))
      await primary.server.halt('immediate')
      const promoteAt = Date.now()
      await standby.promote()
      const promotedAt = Date.now()
      await until(
        'writes on the new primary',
        async () => {
          const after = committed.filter((c) => c.at > promoteAt)
          return new Set(after.map((c) => c.writer)).size === 4 && after.length >= 200
        },
        60_000,
      )
      stop = true
      await Promise.all(writers)
      const afterPromotion = committed.filter((c) => c.at > promotedAt)
      const firstAfter = Math.min(...committed.filter((c) => c.at > promoteAt).map((c) => c.at))
      const lastError = Math.max(0, ...errors.map((e) => e.at))
      t.diagnostic(
        `failover: ${errors.length} errors seen by the 4 writers (${[...new Set(errors.map((e) => e.message))].join(' | ')}); ` +
          `halt→promote ${promoteAt - haltAt} ms, promote command ${promotedAt - promoteAt} ms, ` +
          `promote start→first insert ${firstAfter - promoteAt} ms, last error ${lastError === 0 ? '-' : `${lastError - haltAt} ms after the halt`}`,
      )
      assert.ok(
        afterPromotion.every((c) => c.addr === standby.host),
        'writes go to the promoted standby',
      )
      assert.ok(lastError <= firstAfter, 'no error after the first insert on the new primary')
      // Each writer had at most one statement in flight when the primary stopped.
      assert.ok(errors.length <= 4 * 2, `errors: ${JSON.stringify(errors)}`)
      const { rows } = await withClient(
        { host: standby.host, port: standby.port, user: 'postgres', database: 'app' },
        (c) => c.query<{ writer: number; n: number }>('SELECT writer, n FROM t'),
      )
      const stored = new Set(rows.map((r) => `${r.writer}/${r.n}`))
      const lost = committed.filter((c) => !stored.has(`${c.writer}/${c.n}`))
      assert.deepEqual(lost, [], 'every acknowledged insert is on the new primary')
      const rw = (await hosts()).filter((r) => r.database === 'rw')
      assert.equal(rw.find((r) => r.host === standby.host)?.role, 'primary')
    } finally {
      stop = true
      await Promise.all(writers)
    }
  })
})
