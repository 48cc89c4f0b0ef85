import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// max_db_connections and max_user_connections: server connections of a
// database, or of a user, over all its pools. A client whose pool is at such a
// limit waits; when another pool's transaction ends, the server it leaves idle
// is closed so the waiting pool can open one (PgBouncer's eviction). Waiting
// must cost nothing: the worker keeps serving its other clients and its
// console meanwhile. Each case runs against PgBouncer 1.18 too.

const TEST_TIMEOUT = 30_000
const db = usePostgres({ roles: [{ name: 'alice' }, { name: 'bob' }], databases: ['one', 'two'] })

type Start = (spec: IniSpec, workers: number) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec, workers) => startPooler(writeIni(spec), { workers }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(settings: Record<string, string | number>): IniSpec {
  const target = `host=127.0.0.1 port=${db.server.port}`
  return {
    databases: { one: `${target} dbname=one`, two: `${target} dbname=two` },
    pgbouncer: { pool_mode: 'transaction', admin_users: 'postgres', ...settings },
    userlist: { postgres: '', alice: '', bob: '' },
  }
}

async function connect(pooler: Pooler, database: string, user: string): Promise<pg.Client> {
  const c = pooler.client({ database, user })
  c.on('error', () => {})
  await c.connect()
  return c
}

function workerOf(c: pg.Client): number {
  return ((c as unknown as { processID: number }).processID >>> 24) - 1
}

/** CPU seconds the process has used (utime + stime), from /proc. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

interface Case {
  name: string
  settings: Record<string, string | number>
  a: { database: string; user: string }
  b: { database: string; user: string }
}

const CASES: Case[] = [
  {
    name: 'max_user_connections = 1, a second client of the same pool',
    settings: { max_user_connections: 1 },
    a: { database: 'one', user: 'alice' },
    b: { database: 'one', user: 'alice' },
  },
  {
    name: 'max_db_connections = 1, two users of one database',
    settings: { max_db_connections: 1 },
    a: { database: 'one', user: 'alice' },
    b: { database: 'one', user: 'bob' },
  },
  {
    name: 'max_user_connections = 1, one user over two databases',
    settings: { max_user_connections: 1 },
    a: { database: 'one', user: 'alice' },
    b: { database: 'two', user: 'alice' },
  },
]

for (const target of TARGETS) {
  for (const c of CASES) {
    describe(`${target.name}: ${c.name}`, { skip: target.skip }, () => {
      let pooler: Pooler
      before(async () => {
        pooler = await target.start(spec(c.settings), 1)
      })
      after(() => pooler.stop())

      test('the second client waits for the first one’s server, and the worker keeps serving meanwhile', {
        timeout: TEST_TIMEOUT,
      }, async () => {
        const a = await connect(pooler, c.a.database, c.a.user)
        const b = await connect(pooler, c.b.database, c.b.user)
        try {
          const sleeping = a.query('select pg_sleep(2)')
          await new Promise((r) => setTimeout(r, 500))
          const cpuBefore = target.skip === false ? cpuSeconds(pooler.child.pid!) : 0
          const started = Date.now()
          const answered = b.query('select 7 as n').then((r) => {
            return { n: r.rows[0].n as number, at: Date.now() - started }
          })
          // While b waits, the console of the same worker answers at once.
          await new Promise((r) => setTimeout(r, 300))
          const admin = await connect(pooler, 'pgbouncer', 'postgres')
          const pools = await admin.query('SHOW POOLS')
          await admin.end()
          const waitingPool = pools.rows.find(
            (r) => r.database === c.b.database && r.user === c.b.user,
          )
          assert.ok(waitingPool, 'SHOW POOLS lists the waiting client’s pool')
          assert.equal(Number(waitingPool.cl_waiting), 1, 'the second client waits')
          await sleeping
          const { n, at } = await answered
          assert.equal(n, 7)
          // pg_sleep(2) began 0.5 s before b asked: b is served once a's transaction is over.
          assert.ok(at >= 1000, `b was served after ${at} ms, while a's only server was busy`)
          assert.ok(at < 6000, `b was served only after ${at} ms`)
          if (target.skip === false) {
            // A worker that spins while b waits burns a core: about as much CPU as wall time.
            const cpu = cpuSeconds(pooler.child.pid!) - cpuBefore
            const wall = (Date.now() - started) / 1000
            assert.ok(cpu < wall / 2, `the pooler used ${cpu} s of CPU in ${wall} s of waiting`)
          }
          // Both keep working afterwards, the limit still held.
          assert.equal((await a.query('select 1 as n')).rows[0].n, 1)
          assert.equal((await b.query('select 2 as n')).rows[0].n, 2)
          const { rows } = await db.server.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname IN ('one', 'two') AND usename IN ('alice', 'bob')",
          )
          assert.ok(rows[0].n <= 1, `${rows[0].n} server connections, above the limit of 1`)
        } finally {
          await a.end().catch(() => {})
          await b.end().catch(() => {})
        }
      })
    })
  }
}

describe('pgbouncer-cluster: max_db_connections = 1 with the two clients on different workers', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(writeIni(spec({ max_db_connections: 1 })), { workers: 2 })
  })
  after(() => pooler.stop())

  test('the idle server of the other worker’s pool is closed for the waiting client', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler, 'one', 'alice')
    let b = await connect(pooler, 'one', 'bob')
    for (let i = 0; i < 40 && workerOf(b) === workerOf(a); i++) {
      await b.end()
      b = await connect(pooler, 'one', 'bob')
    }
    try {
      assert.notEqual(workerOf(a), workerOf(b), 'could not put the clients on two workers')
      // a's server stays idle in a's pool on a's worker once its query is over.
      assert.equal((await a.query('select 1 as n')).rows[0].n, 1)
      const started = Date.now()
      assert.equal((await b.query('select 2 as n')).rows[0].n, 2)
      assert.ok(Date.now() - started < 5000, 'b waited for the idle server for too long')
      assert.equal((await a.query('select 3 as n')).rows[0].n, 3)
    } finally {
      await a.end().catch(() => {})
      await b.end().catch(() => {})
    }
  })
})
