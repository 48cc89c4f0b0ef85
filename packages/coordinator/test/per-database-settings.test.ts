import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type Pooler, startPooler, until, withClient, writeIni } from './support.ts'

// Settings a [databases] entry gives its own pools. server_lifetime there
// (PgBouncer 1.23+; 1.18 has no such key) wins over the global value when
// above 0. min_pool_size with a forced user opens servers before any client,
// also for an entry a RELOAD adds.
const db = usePostgres({ databases: ['short', 'long', 'warm'] })

describe('per-database server_lifetime', { timeout: 60_000 }, () => {
  let p: Pooler
  before(async () => {
    p = await startPooler(
      writeIni({
        databases: {
          short: `host=127.0.0.1 port=${db.server.port} dbname=short server_lifetime=1`,
          long: `host=127.0.0.1 port=${db.server.port} dbname=long`,
        },
        pgbouncer: {
          pool_mode: 'transaction',
          default_pool_size: 1,
          server_lifetime: 3600,
          admin_users: 'postgres',
        },
      }),
      { workers: 1 },
    )
  })
  after(() => p.stop())

  const backend = (database: string) =>
    withClient({ host: p.host, port: p.port, user: 'postgres', database }, async (c) =>
      Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid),
    )

  test("a database's own server_lifetime retires its servers; the global one keeps the others", async () => {
    const longFirst = await backend('long')
    const shortFirst = await backend('short')
    await until('a new server for the database with server_lifetime=1', async () => {
      return (await backend('short')) !== shortFirst
    })
    assert.equal(await backend('long'), longFirst, 'the global 3600 s still holds')
    const { rows } = await withClient(
      { host: p.host, port: p.port, user: 'postgres', database: 'pgbouncer' },
      (c) => c.query('SHOW DATABASES'),
    )
    const lifetime = (name: string) => rows.find((r) => r.name === name)?.server_lifetime
    assert.equal(String(lifetime('short')), '1')
    assert.equal(String(lifetime('long')), '3600')
  })
})

describe('min_pool_size of a database with a forced user', { timeout: 60_000 }, () => {
  let p: Pooler
  let ini: string
  const backends = async (datname: string) => {
    const { rows } = await db.server.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
      [datname],
    )
    return rows[0].n as number
  }
  before(async () => {
    ini = writeIni({
      databases: { short: `host=127.0.0.1 port=${db.server.port} dbname=short` },
      pgbouncer: { pool_mode: 'transaction', admin_users: 'postgres' },
    })
    p = await startPooler(ini, { workers: 2, timeoutMs: 60_000 })
  })
  after(() => p.stop())

  test('an entry RELOAD adds gets its min_pool_size servers with no client, and no more', async () => {
    const line = `warm = host=127.0.0.1 port=${db.server.port} dbname=warm user=postgres min_pool_size=3\n`
    writeFileSync(ini, readFileSync(ini, 'utf8').replace('[databases]\n', `[databases]\n${line}`))
    await withClient({ host: p.host, port: p.port, user: 'postgres', database: 'pgbouncer' }, (c) =>
      c.query('RELOAD'),
    )
    await until('3 servers for the new database', async () => (await backends('warm')) === 3)
    assert.equal(await backends('short'), 0, 'a database without min_pool_size opens none')
  })
})
