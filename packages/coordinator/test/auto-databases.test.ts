import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import {
  type IniSpec,
  metricsBase,
  type Pooler,
  scrapeMetrics,
  startPooler,
  until,
  withClient,
  writeIni,
} from './support.ts'

// Automatic databases (the '*' entry) come and go: one unused for
// autodb_idle_timeout is freed, as in PgBouncer (the same body runs against
// PgBouncer 1.18), and here its slots in shared memory are given to the next
// database. With small tables (PGBOUNCER_CLUSTER_SLOTS) the tests reach their
// ceiling: unused databases are freed at once for a new one, a freed slot
// carries nothing of its old database (breaker, histograms, permits), and
// with every slot in use a login is refused at once with a clear error.

const db = usePostgres({ databases: ['t_a', 't_b', 't_c', 't_d'] })
const TEST_TIMEOUT = 60_000

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 2 }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

type PgError = Error & { code?: string }

function admin<T>(pooler: Pooler, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  return withClient(
    { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
    fn,
  )
}

async function databases(pooler: Pooler): Promise<string[]> {
  return admin(pooler, async (c) => (await c.query('SHOW DATABASES')).rows.map((r) => r.name))
}

/** Logs in to `database`, runs the statements, and leaves. */
async function visit(pooler: Pooler, database: string, ...sql: string[]): Promise<unknown[]> {
  return withClient(
    { host: pooler.host, port: pooler.port, user: 'postgres', database },
    async (c) => {
      const out: unknown[] = []
      for (const s of sql) out.push((await c.query(s)).rows[0])
      return out
    },
  )
}

/** Until no server of the database holds a permit any more (one closing included). */
async function unused(pooler: Pooler, database: string): Promise<void> {
  const key = `pgbouncer_cluster_pool_permits_in_use{database="${database}",user="postgres"}`
  await until(`${database} unused`, async () => {
    const metrics = await scrapeMetrics(metricsBase(pooler))
    return (metrics.get(key) ?? 0) === 0
  })
}

async function refusal(p: Promise<unknown>): Promise<PgError> {
  const err = await p.then(
    () => null,
    (e: PgError) => e,
  )
  assert.ok(err !== null, 'the login succeeded')
  return err
}

for (const target of TARGETS) {
  describe(`${target.name}: autodb_idle_timeout`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        databases: { '*': `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
        pgbouncer: {
          pool_mode: 'transaction',
          admin_users: 'postgres',
          autodb_idle_timeout: 1,
          server_idle_timeout: 1,
        },
      })
    })
    after(() => pooler?.stop())

    test('an automatic database unused that long is dropped, and made again at the next login', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await visit(pooler, 'tenant_1', 'SELECT 1')
      assert.ok((await databases(pooler)).includes('tenant_1'))
      await until('tenant_1 dropped', async () => !(await databases(pooler)).includes('tenant_1'))
      assert.deepEqual(await visit(pooler, 'tenant_1', 'SELECT current_database() AS db'), [
        { db: 'postgres' },
      ])
      assert.ok((await databases(pooler)).includes('tenant_1'))
    })

    test('one with a client connected stays', { timeout: TEST_TIMEOUT }, async () => {
      const c = pooler.client({ database: 'tenant_2' })
      await c.connect()
      try {
        await c.query('SELECT 1')
        // Past both timeouts: its server has gone, its client has not.
        await new Promise((r) => setTimeout(r, 4000))
        assert.ok((await databases(pooler)).includes('tenant_2'))
        assert.equal((await c.query('SELECT 2 AS n')).rows[0].n, 2)
      } finally {
        await c.end()
      }
      await until('tenant_2 dropped', async () => !(await databases(pooler)).includes('tenant_2'))
    })
  })
}

describe('pgbouncer-cluster: the pool-slot tables full', () => {
  let pooler: Pooler
  before(async () => {
    // Two database slots; the '*' entry names no dbname: each name is its own database.
    process.env.PGBOUNCER_CLUSTER_SLOTS = 'databases=2,users=4,pools=4'
    try {
      pooler = await startPooler(
        writeIni({
          databases: { '*': `host=127.0.0.1 port=${db.server.port}` },
          pgbouncer: {
            pool_mode: 'transaction',
            admin_users: 'postgres',
            // Never by time: only the full tables free a database here.
            autodb_idle_timeout: 3600,
            server_idle_timeout: 1,
          },
        }),
        { workers: 2, args: ['--metrics', '127.0.0.1:0'] },
      )
    } finally {
      delete process.env.PGBOUNCER_CLUSTER_SLOTS
    }
  })
  after(() => pooler?.stop())

  test('an unused database is freed at once for a new one; its slot carries nothing of it', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const holder = pooler.client({ database: 't_a' })
    await holder.connect()
    try {
      // A database PostgreSQL does not have: its logins fail until its breaker opens.
      for (let i = 0; i < 4; i++) {
        const err = await refusal(visit(pooler, 'nosuch', 'SELECT 1'))
        assert.equal(err.code, '3D000')
      }
      // Two slots, t_a held and nosuch unused: nosuch goes for t_b, whose
      // clients would otherwise get its open breaker's error.
      assert.deepEqual(await visit(pooler, 't_b', 'SELECT current_database() AS db'), [
        { db: 't_b' },
      ])
      const names = await databases(pooler)
      assert.ok(!names.includes('nosuch') && names.includes('t_b'), names.join(','))
      // t_b's queries go in its histogram; once its server is gone, t_c takes its slot.
      await visit(pooler, 't_b', 'SELECT 1', 'SELECT 2', 'SELECT 3', 'SELECT 4')
      await unused(pooler, 't_b')
      await visit(pooler, 't_c', 'SELECT 1')
      const metrics = await scrapeMetrics(metricsBase(pooler))
      assert.equal(
        metrics.get('pgbouncer_cluster_query_duration_seconds_count{database="t_c"}'),
        1,
        "t_c's histogram counts t_b's queries",
      )
      assert.equal(
        metrics.has('pgbouncer_cluster_query_duration_seconds_count{database="t_b"}'),
        false,
      )
      assert.equal(metrics.get('pgbouncer_cluster_slots_in_use{table="databases"}'), 2)
      assert.equal(metrics.get('pgbouncer_cluster_slots{table="databases"}'), 2)
      assert.equal(metrics.get('pgbouncer_cluster_auto_databases_freed_total'), 2)
    } finally {
      await holder.end()
    }
  })

  test('with every slot in use, a login to another database is refused at once', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const holders = ['t_a', 't_c'].map((database) => pooler.client({ database }))
    try {
      for (const c of holders) await c.connect()
      const started = Date.now()
      const err = await refusal(visit(pooler, 't_d', 'SELECT 1'))
      assert.equal(err.message, 'no more databases allowed: all 2 database slots are in use')
      assert.equal(err.code, '53400')
      assert.ok(Date.now() - started < 5000, `refused after ${Date.now() - started} ms`)
      assert.match(pooler.output(), /no more databases allowed: all 2 database slots are in use/)
    } finally {
      for (const c of holders) await c.end()
    }
    // They leave, and their servers close (server_idle_timeout): the next login gets a slot.
    await unused(pooler, 't_a')
    assert.deepEqual(await visit(pooler, 't_d', 'SELECT current_database() AS db'), [{ db: 't_d' }])
  })
})

describe('PGBOUNCER_CLUSTER_SLOTS', () => {
  test('a value that is not databases=N,users=N,pools=N stops the start with one line', async () => {
    const bin = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname
    const child = spawn(process.execPath, [bin, '--workers', '1'], {
      env: { ...process.env, PGBOUNCER_CLUSTER_SLOTS: 'databases=lots' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout!.on('data', (d) => {
      out += d
    })
    child.stderr!.on('data', (d) => {
      out += d
    })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    assert.notEqual(code, 0)
    assert.match(out, /PGBOUNCER_CLUSTER_SLOTS: expected databases=N,users=N,pools=N/)
  })
})
