import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// PgBouncer's pool limits and timers, each against its own database so that
// pg_stat_activity, read directly, shows exactly one pooler's servers.
const DATABASES = ['qwait', 'maxconn', 'idle', 'lifetime', 'minpool', 'reserve'] as const
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: [...DATABASES] })

type Db = (typeof DATABASES)[number]

function ini(database: Db, settings: Record<string, string | number>): string {
  return writeIni({
    databases: { [database]: `host=127.0.0.1 port=${db.server.port} dbname=${database}` },
    pgbouncer: { pool_mode: 'transaction', ...settings },
  })
}

async function serverPids(database: Db): Promise<number[]> {
  const { rows } = await db.server.query(
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid",
    [database],
  )
  return rows.map((r) => Number(r.pid))
}

/** Polls until `check` holds (returns how long that took) or fails after `timeoutMs`. */
async function eventually(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 5000,
): Promise<number> {
  const started = Date.now()
  for (;;) {
    if (await check()) return Date.now() - started
    if (Date.now() - started > timeoutMs) assert.fail(`${what}: not within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function connected(pooler: Pooler, database: Db): Promise<pg.Client> {
  const c = pooler.client({ database })
  // A FATAL from the pooler must fail the test, not crash the process.
  c.on('error', () => {})
  await c.connect()
  return c
}

/** The worker a client landed on: the pooler's BackendKeyData carries it in the top byte. */
function workerOf(c: pg.Client): number {
  return ((c as unknown as { processID: number }).processID >>> 24) - 1
}

async function backendPid(c: pg.Client): Promise<number> {
  return Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)
}

describe('query_wait_timeout', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(ini('qwait', { default_pool_size: 1, query_wait_timeout: 1 }), {
      workers: 1,
    })
  })
  after(() => pooler.stop())

  test('a client waiting longer than query_wait_timeout gets FATAL query_wait_timeout (08P01)', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const holder = await connected(pooler, 'qwait')
    const waiter = await connected(pooler, 'qwait')
    try {
      await holder.query('BEGIN')
      await holder.query('SELECT 1')
      const started = Date.now()
      const err = await waiter.query('SELECT 1').then(
        () => null,
        (e: unknown) => e as Error & { code?: string; severity?: string },
      )
      const waited = Date.now() - started
      assert.ok(err !== null, 'the waiting query was served although the only server was busy')
      assert.equal(err.message, 'query_wait_timeout')
      assert.equal(err.code, '08P01')
      assert.equal(err.severity, 'FATAL')
      assert.ok(waited >= 900 && waited < 3500, `failed after ${waited} ms`)
      // The holder lost nothing.
      await holder.query('COMMIT')
      assert.equal((await holder.query('SELECT 3 AS n')).rows[0].n, 3)
    } finally {
      await holder.end()
      await waiter.end().catch(() => {})
    }
  })
})

describe('max_client_conn across the cluster', () => {
  const MAX = 5
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(ini('maxconn', { max_client_conn: MAX }), { workers: 2 })
  })
  after(() => pooler.stop())

  async function refused(): Promise<Error & { code?: string }> {
    const c = pooler.client({ database: 'maxconn' })
    c.on('error', () => {})
    const err = await c.connect().then(
      () => null,
      (e: unknown) => e as Error & { code?: string },
    )
    if (err === null) {
      await c.end()
      assert.fail(`connection ${MAX + 1} was let in`)
    }
    return err
  }

  test('the 6th client anywhere in the cluster is refused; after one leaves, a new one gets in', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const clients: pg.Client[] = []
    try {
      for (let i = 0; i < MAX; i++) clients.push(await connected(pooler, 'maxconn'))
      // The limit is only cluster-wide if the admitted clients sit on both
      // workers: swap clients until they do (the kernel picks, not us).
      for (let i = 0; i < 30 && new Set(clients.map(workerOf)).size < 2; i++) {
        await clients.shift()!.end()
        clients.push(await connected(pooler, 'maxconn'))
      }
      assert.equal(new Set(clients.map(workerOf)).size, 2, 'could not spread clients over workers')
      // Several attempts, so that both workers get to refuse.
      for (let i = 0; i < 4; i++) {
        const err = await refused()
        assert.equal(err.message, 'no more connections allowed (max_client_conn)')
        assert.ok(['08P01', '53300'].includes(err.code ?? ''), `SQLSTATE ${err.code}`)
      }
      await clients.shift()!.end()
      const newcomer = await connected(pooler, 'maxconn')
      clients.push(newcomer)
      assert.equal((await newcomer.query('SELECT 1 AS one')).rows[0].one, 1)
      await refused()
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  })
})

describe('server_idle_timeout', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(ini('idle', { default_pool_size: 3, server_idle_timeout: 1 }), {
      workers: 1,
    })
  })
  after(() => pooler.stop())

  test('servers idle longer than server_idle_timeout are closed', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    // Three transactions at once: three servers.
    const clients = await Promise.all([1, 2, 3].map(() => connected(pooler, 'idle')))
    try {
      await Promise.all(clients.map((c) => c.query('BEGIN')))
      await Promise.all(clients.map((c) => c.query('SELECT 1')))
      await Promise.all(clients.map((c) => c.query('COMMIT')))
      const idleSince = Date.now()
      assert.equal((await serverPids('idle')).length, 3)
      await eventually('idle servers closed', async () => (await serverPids('idle')).length === 0)
      const closedAfter = Date.now() - idleSince
      assert.ok(closedAfter >= 900, `closed after ${closedAfter} ms, before the timeout`)
      // The clients stay and get a fresh server when they need one.
      assert.equal((await clients[0].query('SELECT 1 AS one')).rows[0].one, 1)
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
  })
})

describe('server_lifetime', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(ini('lifetime', { default_pool_size: 1, server_lifetime: 1 }), {
      workers: 1,
    })
  })
  after(() => pooler.stop())

  test('a server past server_lifetime is replaced between transactions, never inside one', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    await withClient({ connectionString: pooler.url({ database: 'lifetime' }) }, async (c) => {
      await c.query('BEGIN')
      const first = await backendPid(c)
      await c.query('SELECT pg_sleep(1.3)')
      assert.equal(await backendPid(c), first, 'the server was swapped inside a transaction')
      await c.query('COMMIT')
      const second = await backendPid(c)
      assert.notEqual(second, first, 'a server past its lifetime was reused')
      await eventually('the old server closed', async () => {
        return !(await serverPids('lifetime')).includes(first)
      })
      // Young enough: reused.
      assert.equal(await backendPid(c), second)
    })
  })
})

describe('min_pool_size', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(
      ini('minpool', { default_pool_size: 5, min_pool_size: 2, server_idle_timeout: 1 }),
      { workers: 2 },
    )
  })
  after(() => pooler.stop())

  test('once clients used the pool, min_pool_size servers open and stay, cluster-wide, past server_idle_timeout', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    // Clients on both workers, so that a per-worker minimum would show as 4.
    const clients: pg.Client[] = []
    try {
      for (let i = 0; i < 30 && new Set(clients.map(workerOf)).size < 2; i++) {
        const c = await connected(pooler, 'minpool')
        await c.query('SELECT 1')
        clients.push(c)
      }
      assert.equal(new Set(clients.map(workerOf)).size, 2, 'could not spread clients over workers')
      await eventually('min_pool_size servers open', async () => {
        return (await serverPids('minpool')).length === 2
      })
      await new Promise((r) => setTimeout(r, 1000))
      assert.equal((await serverPids('minpool')).length, 2, 'min_pool_size applied per worker')
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
    // Idle for twice server_idle_timeout with no client left: still min_pool_size.
    await new Promise((r) => setTimeout(r, 2000))
    assert.equal((await serverPids('minpool')).length, 2)
  })
})

describe('reserve_pool_size and reserve_pool_timeout', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(
      ini('reserve', { default_pool_size: 1, reserve_pool_size: 1, reserve_pool_timeout: 0.5 }),
      { workers: 1 },
    )
  })
  after(() => pooler.stop())

  test('a client waiting reserve_pool_timeout gets a reserve server; beyond the reserve, clients wait', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => connected(pooler, 'reserve')))
    try {
      await a.query('BEGIN')
      const pidA = await backendPid(a)
      const started = Date.now()
      await b.query('BEGIN')
      const waited = Date.now() - started
      const pidB = await backendPid(b)
      assert.notEqual(pidB, pidA)
      assert.ok(waited >= 400, `the reserve was used after ${waited} ms, before its timeout`)
      assert.ok(waited < 2000, `the reserve came after ${waited} ms`)
      assert.deepEqual(
        await serverPids('reserve'),
        [pidA, pidB].sort((x, y) => x - y),
      )
      // Pool and reserve are used up: the third client waits, past the reserve timeout too.
      let cDone = false
      const cRun = c.query('SELECT 3 AS n').then((r) => {
        cDone = true
        return r
      })
      await new Promise((r) => setTimeout(r, 1200))
      assert.equal(cDone, false, 'a third server was opened beyond pool_size + reserve_pool_size')
      assert.equal((await serverPids('reserve')).length, 2)
      await a.query('COMMIT')
      assert.equal((await cRun).rows[0].n, 3)
      await b.query('COMMIT')
    } finally {
      await Promise.all([a, b, c].map((x) => x.end().catch(() => {})))
    }
  })
})
