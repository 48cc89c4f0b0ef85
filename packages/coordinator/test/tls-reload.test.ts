import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// A server_tls_* setting changed by RELOAD: servers opened with the old
// settings are closed (idle ones at once, linked ones when released), so
// every server from then on is made with the new ones, as PgBouncer marks
// them close_needed. Against PgBouncer 1.18 too.
const db = usePostgres({ tls: true })

const sslOfBackend =
  'SELECT ssl, pg_backend_pid() AS pid FROM pg_stat_ssl WHERE pid = pg_backend_pid()'

type Started = { pooler: Pooler; ini: string }
async function ours(spec: IniSpec): Promise<Started> {
  const ini = writeIni(spec)
  return { pooler: await startPooler(ini, { workers: 1, timeoutMs: 60_000 }), ini }
}
async function reference(spec: IniSpec): Promise<Started> {
  const pooler = await startPgBouncer(spec)
  return { pooler, ini: pooler.ini }
}

for (const target of [
  { name: 'pgbouncer-cluster', start: ours, skip: false as string | false },
  { name: 'PgBouncer', start: reference, skip: NO_PGBOUNCER },
]) {
  describe(`${target.name}: server_tls_sslmode changed by RELOAD`, {
    skip: target.skip,
    timeout: 90_000,
  }, () => {
    let started: Started
    before(async () => {
      started = await target.start({
        databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
        pgbouncer: {
          pool_mode: 'session',
          default_pool_size: 2,
          server_tls_sslmode: 'disable',
          admin_users: 'postgres',
        },
      })
    })
    after(() => started.pooler.stop())

    test('the old servers go, idle at once and linked when released; new ones use TLS', async () => {
      const p = started.pooler
      const config = { host: p.host, port: p.port, user: 'postgres', database: 'postgres' }
      const idleFirst = await withClient(config, async (c) => (await c.query(sslOfBackend)).rows[0])
      assert.equal(idleFirst.ssl, false)
      // A session that holds its server through the reload.
      const held = new pg.Client(config)
      await held.connect()
      try {
        const before = (await held.query(sslOfBackend)).rows[0]
        assert.equal(before.ssl, false)
        writeFileSync(
          started.ini,
          readFileSync(started.ini, 'utf8').replace(
            'server_tls_sslmode = disable',
            'server_tls_sslmode = require',
          ),
        )
        await withClient({ ...config, database: 'pgbouncer' }, (c) => c.query('RELOAD'))
        // Its session goes on, on the same server.
        assert.equal((await held.query(sslOfBackend)).rows[0].pid, before.pid)
        const fresh = await withClient(config, async (c) => (await c.query(sslOfBackend)).rows[0])
        assert.equal(fresh.ssl, true, 'a new client gets a server made with TLS')
        assert.notEqual(fresh.pid, idleFirst.pid)
        await held.end()
        // Released: closed, not handed to the next client.
        for (let i = 0; i < 3; i++) {
          const next = await withClient(config, async (c) => (await c.query(sslOfBackend)).rows[0])
          assert.equal(next.ssl, true)
          assert.notEqual(next.pid, before.pid)
        }
      } finally {
        await held.end().catch(() => {})
      }
    })
  })
}
