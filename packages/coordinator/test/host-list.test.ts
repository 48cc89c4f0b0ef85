import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { type AddressInfo, createServer, type Socket } from 'node:net'
import { after, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

const run = promisify(execFile)
const PGBENCH = findPgTool('pgbench')
const PSQL = findPgTool('psql')

// host=a,b with one PostgreSQL per loopback address (Linux answers on all of
// 127.0.0.0/8): where servers go, what SHOW SERVERS says, and what clients see
// when one host is down or dies under load.
describe('host lists', { timeout: 240_000 }, () => {
  const a = usePostgres({
    host: '127.0.0.2',
    databases: ['app'],
    ...(PGBENCH === null ? {} : { pgbenchInit: { scale: 1, database: 'app' } }),
  })
  const b = usePostgres({
    host: '127.0.0.3',
    databases: ['app'],
    ...(PGBENCH === null ? {} : { pgbenchInit: { scale: 1, database: 'app' } }),
  })
  const poolers: Pooler[] = []
  after(() => Promise.all(poolers.map((p) => p.stop())))

  const hostList = () =>
    `host=${a.server.host},${b.server.host} port=${a.server.port},${b.server.port} dbname=app`

  async function start(database: string, settings: Record<string, string | number>) {
    const ini = writeIni({
      databases: { app: `${hostList()} ${database}`.trim() },
      pgbouncer: { admin_users: 'postgres', max_client_conn: 200, ...settings },
    })
    const pooler = await startPooler(ini, { workers: 2, timeoutMs: 60_000 })
    poolers.push(pooler)
    return pooler
  }

  async function servers(pooler: Pooler) {
    return withClient(
      { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
      async (c) => (await c.query('SHOW SERVERS')).rows.filter((r) => r.database === 'app'),
    )
  }

  async function backendPids(server: typeof a.server): Promise<Set<number>> {
    const { rows } = await server.query<{ pid: number }>(
      "SELECT pid FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend'",
    )
    return new Set(rows.map((r) => r.pid))
  }

  /** `n` sessions at once, each in a transaction, so each needs a server of its own. */
  async function concurrentAddrs(pooler: Pooler, n: number): Promise<string[]> {
    const clients = Array.from({ length: n }, () => pooler.client({ database: 'app' }))
    try {
      await Promise.all(clients.map((c) => c.connect()))
      await Promise.all(clients.map((c) => c.query('BEGIN')))
      const rows = await Promise.all(
        clients.map((c) => c.query<{ addr: string }>('SELECT host(inet_server_addr()) AS addr')),
      )
      return rows.map((r) => r.rows[0]!.addr)
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  }

  test('round-robin (default): servers spread over both hosts; SHOW SERVERS names each real host; pgbench runs clean', {
    skip: skipWithout('pgbench', PGBENCH),
  }, async () => {
    const pooler = await start('', { pool_mode: 'transaction', default_pool_size: 4 })
    // Four open transactions on a fresh pooler: four logins, at least two of them
    // on one worker, and a worker's next login goes to the next host. (After a
    // load, the servers still open are whichever the give-backs between workers
    // left, which may all sit on one host.)
    const held = Array.from({ length: 4 }, () => pooler.client({ database: 'app' }))
    let rows: Awaited<ReturnType<typeof servers>>
    let pids: Record<string, Set<number>>
    try {
      await Promise.all(held.map((c) => c.connect()))
      await Promise.all(held.map((c) => c.query('BEGIN')))
      await Promise.all(held.map((c) => c.query('SELECT 1')))
      rows = await servers(pooler)
      pids = {
        [a.server.host]: await backendPids(a.server),
        [b.server.host]: await backendPids(b.server),
      }
    } finally {
      await Promise.all(held.map((c) => c.end().catch(() => {})))
    }
    const ports = { [a.server.host]: a.server.port, [b.server.host]: b.server.port }
    assert.equal(rows.length, 4)
    assert.deepEqual(new Set(rows.map((r) => r.addr)), new Set([a.server.host, b.server.host]))
    for (const r of rows) {
      assert.equal(r.port, ports[r.addr], `port of ${r.addr}`)
      assert.ok(pids[r.addr]!.has(r.remote_pid), `backend ${r.remote_pid} is not on ${r.addr}`)
    }
    const target = ['-h', pooler.host, '-p', String(pooler.port), '-U', 'postgres', 'app']
    const { stdout } = await run(
      PGBENCH!,
      ['-n', '-S', '-c', '8', '-j', '2', '-T', '2', ...target],
      {
        env: { ...process.env, PGCONNECT_TIMEOUT: '10' },
      },
    )
    assert.match(stdout, /number of transactions actually processed: [1-9]/)
    assert.equal(Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0), 0)
  })

  test('load_balance_hosts=disable: every server on the first host while it answers', async () => {
    const pooler = await start('load_balance_hosts=disable', { pool_mode: 'session' })
    assert.deepEqual(new Set(await concurrentAddrs(pooler, 6)), new Set([a.server.host]))
  })

  test('load_balance_hosts=disable: psql lands on the first host too', {
    skip: skipWithout('psql', PSQL),
  }, async () => {
    const pooler = await start('load_balance_hosts=disable', { pool_mode: 'session' })
    const { stdout } = await run(PSQL!, [
      '-X',
      '-At',
      '-c',
      'SELECT host(inet_server_addr())',
      pooler.url({ database: 'app' }),
    ])
    assert.equal(stdout.trim(), a.server.host)
  })

  test('a host that refuses is skipped: no client error, the database breaker stays closed; back after server_login_retry', async () => {
    await a.server.halt()
    try {
      const pooler = await start('', {
        pool_mode: 'session',
        default_pool_size: 10,
        server_login_retry: 1,
      })
      for (let round = 0; round < 3; round++) {
        assert.deepEqual(new Set(await concurrentAddrs(pooler, 8)), new Set([b.server.host]))
        await withClient(
          { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
          (c) => c.query('RECONNECT app'),
        )
      }
      assert.match(pooler.output(), /host breaker open/)
      assert.doesNotMatch(pooler.output(), /circuit breaker open/)
      await a.server.restart()
      // The cool-down ends; the next login to the host probes it and finds it back.
      await new Promise((r) => setTimeout(r, 1500))
      const seen = new Set<string>()
      for (let i = 0; i < 20 && !seen.has(a.server.host); i++) {
        for (const addr of await concurrentAddrs(pooler, 4)) seen.add(addr)
        await withClient(
          { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
          (c) => c.query('RECONNECT app'),
        )
        await new Promise((r) => setTimeout(r, 200))
      }
      assert.ok(seen.has(a.server.host), 'the host that came back gets servers again')
    } finally {
      await a.server.restart()
    }
  })

  test('a host that accepts but never answers is skipped after server_connect_timeout; no client error', async () => {
    // A silent peer at 127.0.0.4: the TCP handshake succeeds, the startup packet gets no reply.
    // disable: the first login of the pooler goes to it, the first host of the list.
    const held: Socket[] = []
    const silent = createServer((socket) => void held.push(socket))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.4', resolve))
    const silentPort = (silent.address() as AddressInfo).port
    try {
      const ini = writeIni({
        databases: {
          app: `host=127.0.0.4,${b.server.host} port=${silentPort},${b.server.port} dbname=app load_balance_hosts=disable`,
        },
        pgbouncer: {
          admin_users: 'postgres',
          pool_mode: 'session',
          default_pool_size: 10,
          server_connect_timeout: 1,
          query_wait_timeout: 60,
        },
      })
      const pooler = await startPooler(ini, { workers: 2, timeoutMs: 60_000 })
      poolers.push(pooler)
      for (let round = 0; round < 2; round++) {
        assert.deepEqual(new Set(await concurrentAddrs(pooler, 6)), new Set([b.server.host]))
        await withClient(
          { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
          (c) => c.query('RECONNECT app'),
        )
      }
      assert.ok(held.length > 0, 'no login ever tried the silent host')
      assert.match(pooler.output(), /server connect timeout/)
      assert.match(pooler.output(), /host breaker open/)
      assert.doesNotMatch(pooler.output(), /circuit breaker open/)
    } finally {
      for (const socket of held) socket.destroy()
      silent.close()
    }
  })

  /**
   * Clients looping on one-statement transactions while the host their
   * servers are on is killed (pg_ctl -m immediate). Returns the errors and the
   * time from the kill to the first query the other host answers.
   */
  async function failover(pooler: Pooler, victim: typeof a.server, survivor: typeof a.server) {
    const CLIENTS = 8
    let stop = false
    let killedAt = 0
    let firstOnSurvivor = 0
    let after = 0
    const errors: string[] = []
    const errorTimes: number[] = []
    const seenBefore = new Set<string>()
    let okBefore = 0
    async function loop(): Promise<void> {
      let client: pg.Client | null = null
      while (!stop) {
        try {
          if (client === null) {
            client = pooler.client({ database: 'app' })
            client.on('error', () => {})
            await client.connect()
          }
          const { rows } = await client.query<{ addr: string }>(
            // A few ms per query keeps several servers busy, so round-robin has opened
            // servers on both hosts before the kill even on a fast machine.
            'SELECT host(inet_server_addr()) AS addr, pg_sleep(0.005)',
          )
          const addr = rows[0]!.addr
          if (killedAt === 0) {
            seenBefore.add(addr)
            okBefore++
          } else if (addr === survivor.host && firstOnSurvivor === 0)
            firstOnSurvivor = performance.now()
          if (firstOnSurvivor !== 0) after++
        } catch (err) {
          errors.push((err as Error).message)
          errorTimes.push(performance.now())
          await client?.end().catch(() => {})
          client = null
        }
      }
      await client?.end().catch(() => {})
    }
    const loops = Array.from({ length: CLIENTS }, () => loop())
    // Under load the first logins may be slow: every client answered once, then the kill.
    const warmUp = Date.now() + 30_000
    while (okBefore < CLIENTS * 4 && Date.now() < warmUp)
      await new Promise((r) => setTimeout(r, 20))
    killedAt = performance.now()
    await victim.halt('immediate')
    const haltReturned = performance.now()
    const deadline = Date.now() + 60_000
    while (firstOnSurvivor === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20))
    await new Promise((r) => setTimeout(r, 2000))
    const settled = performance.now() - 1000
    stop = true
    await Promise.all(loops)
    return {
      clients: CLIENTS,
      seenBefore,
      errors,
      /** Errors in the last second of the run: none once the failover is over. */
      lateErrors: errorTimes.filter((at) => at > settled).length,
      queriesAfterFailover: after,
      msFromKill: firstOnSurvivor === 0 ? -1 : firstOnSurvivor - killedAt,
      msFromHaltReturn: firstOnSurvivor === 0 ? -1 : firstOnSurvivor - haltReturned,
    }
  }

  for (const mode of ['disable', 'round-robin'] as const) {
    test(`failover (${mode}): one host killed mid-run; at most the in-flight transactions fail, new ones go to the other host`, async (t) => {
      const pooler = await start(`load_balance_hosts=${mode}`, {
        pool_mode: 'transaction',
        default_pool_size: 4,
        server_login_retry: 2,
        query_wait_timeout: 30,
      })
      try {
        const r = await failover(pooler, a.server, b.server)
        if (r.seenBefore.size === 0) process.stderr.write(pooler.output())
        const report = `failover ${mode}: ${r.errors.length} client errors (${r.clients} clients), first query on ${b.server.host} ${r.msFromKill.toFixed(0)} ms after pg_ctl -m immediate was called (${r.msFromHaltReturn.toFixed(0)} ms after it returned), ${r.queriesAfterFailover} queries after; errors: ${[...new Set(r.errors)].join(' | ') || 'none'}`
        t.diagnostic(report)
        process.stderr.write(`${report}\n`)
        if (mode === 'disable')
          assert.deepEqual(r.seenBefore, new Set([a.server.host]), 'disable: all on the first host')
        else assert.ok(r.seenBefore.has(a.server.host) && r.seenBefore.has(b.server.host))
        assert.ok(r.msFromKill >= 0, 'no query reached the surviving host')
        // Each client has one transaction in flight at a time: only those on the dead host fail.
        assert.ok(r.errors.length <= r.clients, `errors: ${r.errors.join(' | ')}`)
        assert.equal(r.lateErrors, 0, `errors after failover: ${r.errors.join(' | ')}`)
        assert.ok(r.queriesAfterFailover > 0)
        assert.doesNotMatch(pooler.output(), /circuit breaker open/)
      } finally {
        await a.server.restart()
      }
    })
  }
})
