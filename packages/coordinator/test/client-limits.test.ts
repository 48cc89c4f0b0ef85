import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, writeIni } from './support.ts'

// max_db_client_connections and max_user_client_connections (PgBouncer 1.24):
// client connections per database and per user, counted over every worker.
const TEST_TIMEOUT = 30_000
const db = usePostgres({ roles: [{ name: 'alice' }, { name: 'bob' }], databases: ['one', 'two'] })

async function connect(pooler: Pooler, database: string, user = 'postgres'): Promise<pg.Client> {
  const c = pooler.client({ database, user })
  c.on('error', () => {})
  await c.connect()
  return c
}

async function refusal(pooler: Pooler, database: string, user = 'postgres') {
  const c = pooler.client({ database, user })
  c.on('error', () => {})
  const err = await c.connect().then(
    () => null,
    (e: unknown) => e as Error & { code?: string },
  )
  if (err === null) {
    await c.end()
    assert.fail(`a client of ${database} as ${user} was let in`)
  }
  return err
}

function workerOf(c: pg.Client): number {
  return ((c as unknown as { processID: number }).processID >>> 24) - 1
}

/** Reconnects the last client until the set sits on both workers: the limit is then cluster-wide. */
async function spread(pooler: Pooler, clients: pg.Client[], database: string, user?: string) {
  for (let i = 0; i < 40 && new Set(clients.map(workerOf)).size < 2; i++) {
    await clients.pop()!.end()
    clients.push(await connect(pooler, database, user))
  }
  assert.equal(new Set(clients.map(workerOf)).size, 2, 'could not spread clients over workers')
}

describe('max_db_client_connections', () => {
  let pooler: Pooler
  before(async () => {
    const target = `host=127.0.0.1 port=${db.server.port}`
    pooler = await startPooler(
      writeIni({
        databases: {
          one: `${target} dbname=one`,
          // The per-database key overrides the global one.
          two: `${target} dbname=two max_db_client_connections=1`,
        },
        pgbouncer: { pool_mode: 'transaction', max_db_client_connections: 2 },
      }),
      { workers: 2 },
    )
  })
  after(() => pooler.stop())

  test('the third client of a database anywhere in the cluster is refused; others are not', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const clients: pg.Client[] = []
    try {
      clients.push(await connect(pooler, 'one'), await connect(pooler, 'one'))
      await spread(pooler, clients, 'one')
      for (let i = 0; i < 4; i++) {
        const err = await refusal(pooler, 'one')
        assert.equal(err.message, 'client connections exceeded (max_db_client_connections)')
        assert.equal(err.code, '08P01')
      }
      // Another database has its own count (and its own limit of 1).
      const other = await connect(pooler, 'two')
      clients.push(other)
      assert.equal((await other.query('SELECT 1 AS x')).rows[0].x, 1)
      assert.equal(
        (await refusal(pooler, 'two')).message,
        'client connections exceeded (max_db_client_connections)',
      )
      // A client that leaves gives its place back.
      await clients.shift()!.end()
      const newcomer = await connect(pooler, 'one')
      clients.push(newcomer)
      assert.equal((await newcomer.query('SELECT 2 AS x')).rows[0].x, 2)
      await refusal(pooler, 'one')
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  })
})

describe('max_user_client_connections', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(
      writeIni({
        databases: {
          one: `host=127.0.0.1 port=${db.server.port} dbname=one`,
          two: `host=127.0.0.1 port=${db.server.port} dbname=two`,
        },
        users: { bob: 'max_user_client_connections=1' },
        pgbouncer: { pool_mode: 'transaction', max_user_client_connections: 2 },
      }),
      { workers: 2 },
    )
  })
  after(() => pooler.stop())

  test('a user is counted over databases and workers; [users] overrides the global limit', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const clients: pg.Client[] = []
    try {
      clients.push(await connect(pooler, 'one', 'alice'), await connect(pooler, 'two', 'alice'))
      await spread(pooler, clients, 'two', 'alice')
      for (const database of ['one', 'two']) {
        const err = await refusal(pooler, database, 'alice')
        assert.equal(err.message, 'client connections exceeded (max_user_client_connections)')
        assert.equal(err.code, '08P01')
      }
      clients.push(await connect(pooler, 'one', 'bob'))
      assert.equal(
        (await refusal(pooler, 'two', 'bob')).message,
        'client connections exceeded (max_user_client_connections)',
      )
      // The limits are per user: postgres is not held back by alice's.
      const admin = await connect(pooler, 'one')
      clients.push(admin)
      assert.equal((await admin.query('SELECT current_user AS u')).rows[0].u, 'postgres')
      await clients.shift()!.end()
      clients.push(await connect(pooler, 'one', 'alice'))
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  })
})

// PgBouncer 1.24+ counts the console as database `pgbouncer` too; admin_users
// get in over the limits and are still counted. (PgBouncer 1.18 has no client limits.)
describe('client limits on the console', () => {
  let pooler: Pooler

  before(async () => {
    pooler = await startPooler(
      writeIni({
        databases: { one: `host=127.0.0.1 port=${db.server.port} dbname=one` },
        pgbouncer: {
          max_db_client_connections: 2,
          admin_users: 'postgres',
          stats_users: 'alice,bob',
        },
      }),
      { workers: 2 },
    )
  })
  after(async () => {
    await pooler.stop()
  })

  test('stats users are refused over max_db_client_connections; admin users are let in and counted', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler, 'pgbouncer', 'alice')
    const b = await connect(pooler, 'pgbouncer', 'bob')
    const err = await refusal(pooler, 'pgbouncer', 'alice')
    assert.equal(err.message, 'client connections exceeded (max_db_client_connections)')
    const admin = await connect(pooler, 'pgbouncer', 'postgres')
    const { rows } = await admin.query('SHOW DATABASES')
    const row = rows.find((r) => r.name === 'pgbouncer')
    assert.equal(row.current_client_connections, 3)
    assert.equal(row.max_client_connections, 2)
    const users = (await admin.query('SHOW USERS')).rows
    assert.equal(users.find((r) => r.name === 'alice').current_client_connections, 1)
    await Promise.all([a.end(), b.end()])
    const again = await connect(pooler, 'pgbouncer', 'alice')
    await Promise.all([again.end(), admin.end()])
  })
})
