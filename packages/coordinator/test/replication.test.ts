import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { type Pooler, startPooler, until, withClient, writeIni } from './support.ts'

// Replication connections (PgBouncer 1.23+): a client whose startup packet has
// `replication=database` (logical) or a true boolean (physical) gets a server
// of its own, opened with its startup parameters (options included), linked
// to it alone, counted in the pool's limits and closed when it goes. PgBouncer
// 1.18 refuses the parameter, so these run against ours alone.
const db = usePostgres({
  databases: ['app'],
  hba: ['host replication all 127.0.0.1/32 trust'],
  settings: { wal_level: 'logical', max_wal_senders: '10' },
})
const run = promisify(execFile)
const PG_BASEBACKUP = findPgTool('pg_basebackup')

async function walsenders(): Promise<number> {
  const { rows } = await db.server.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'walsender'",
  )
  return rows[0].n
}

describe('replication connections', { timeout: 120_000 }, () => {
  let p: Pooler
  before(async () => {
    p = await startPooler(
      writeIni({
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
          // What pg_basebackup and pg_receivewal ask for, as in PgBouncer's own tests.
          replication: `host=127.0.0.1 port=${db.server.port} dbname=replication`,
        },
        pgbouncer: { pool_mode: 'transaction', default_pool_size: 2, admin_users: 'postgres' },
      }),
      { workers: 1 },
    )
  })
  after(() => p.stop())

  const config = (extra: pg.ClientConfig = {}): pg.ClientConfig => ({
    host: p.host,
    port: p.port,
    user: 'postgres',
    database: 'app',
    ...extra,
  })
  const show = (what: string) =>
    withClient(config({ database: 'pgbouncer' }), async (c) => (await c.query(`SHOW ${what}`)).rows)

  test('logical: SQL and IDENTIFY_SYSTEM on a server opened with the client’s options, shown in SHOW CLIENTS/SERVERS', async () => {
    const c = new pg.Client(
      config({
        replication: 'database',
        application_name: 'abc',
        options: '-c enable_seqscan=off',
      } as pg.ClientConfig),
    )
    await c.connect()
    try {
      assert.equal((await c.query('SHOW enable_seqscan')).rows[0].enable_seqscan, 'off')
      assert.equal((await c.query('SHOW application_name')).rows[0].application_name, 'abc')
      const identified = await c.query('IDENTIFY_SYSTEM')
      assert.equal(identified.rows.length, 1)
      assert.equal(identified.rows[0].dbname, 'app')
      assert.equal(await walsenders(), 1)
      const clients = await show('CLIENTS')
      assert.deepEqual(
        clients.filter((r) => r.database === 'app').map((r) => r.replication),
        ['logical'],
      )
      const servers = await show('SERVERS')
      assert.deepEqual(
        servers.map((r) => `${r.replication} ${r.state}`),
        ['logical active'],
      )
      // A plain client of the same pool is not served by it.
      await withClient(config(), async (plain) => {
        const { rows } = await plain.query('SELECT pg_backend_pid() AS pid')
        assert.notEqual(rows[0].pid, identified.rows[0].pid)
      })
    } finally {
      await c.end()
    }
    await until(
      'the replication server closed with its client',
      async () => (await walsenders()) === 0,
    )
    const servers = await show('SERVERS')
    assert.ok(servers.every((r) => r.replication === 'none'))
  })

  test('physical: IDENTIFY_SYSTEM works and SQL gets PostgreSQL’s own refusal', async () => {
    for (const value of ['true', 'yes', 'on', '1']) {
      const c = new pg.Client(config({ replication: value } as pg.ClientConfig))
      await c.connect()
      try {
        const { rows } = await c.query('IDENTIFY_SYSTEM')
        assert.equal(rows.length, 1)
        assert.equal(rows[0].dbname, null, `replication=${value} is physical`)
        await assert.rejects(c.query('SELECT 1'), (err: { code?: string; message: string }) => {
          assert.equal(err.code, '0A000')
          assert.match(err.message, /cannot execute SQL commands in WAL sender for physical/)
          return true
        })
        const clients = await show('CLIENTS')
        assert.ok(clients.some((r) => r.replication === 'physical'))
      } finally {
        await c.end()
      }
    }
    await until('no walsender left', async () => (await walsenders()) === 0)
  })

  test('replication=false is an ordinary client of the pool', async () => {
    await withClient(config({ replication: 'false' } as pg.ClientConfig), async (c) => {
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    })
    assert.equal(await walsenders(), 0)
  })

  test('replication servers count toward pool_size', async () => {
    const a = new pg.Client(config({ replication: 'database' } as pg.ClientConfig))
    const b = new pg.Client(config({ replication: 'database' } as pg.ClientConfig))
    await a.connect()
    await b.connect()
    const c = new pg.Client(config({ replication: 'database' } as pg.ClientConfig))
    const third = c.connect()
    try {
      await until('the third waits for a permit', async () =>
        (await show('CLIENTS')).some((r) => r.state === 'waiting' || r.state === 'idle'),
      )
      assert.equal(await walsenders(), 2, 'pool_size 2 holds')
      await a.end()
      await third
      assert.equal((await c.query('IDENTIFY_SYSTEM')).rows.length, 1)
    } finally {
      await Promise.allSettled([b.end(), c.end()])
    }
    await until('no walsender left', async () => (await walsenders()) === 0)
  })

  test('pg_basebackup through the pooler', {
    skip:
      PG_BASEBACKUP === null
        ? 'pg_basebackup not installed (apt-get install -y postgresql-client)'
        : false,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgbc-basebackup-'))
    try {
      await run(
        PG_BASEBACKUP!,
        [
          '--dbname',
          `host=${p.host} port=${p.port} user=postgres dbname=app`,
          '--checkpoint=fast',
          '--pgdata',
          join(dir, 'copy'),
        ],
        { timeout: 60_000 },
      )
      assert.ok(readdirSync(join(dir, 'copy')).includes('PG_VERSION'))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    await until('no walsender left', async () => (await walsenders()) === 0)
  })
})
