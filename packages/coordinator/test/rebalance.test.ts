import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { metricsBase, type Pooler, scrapeMetrics, startPooler, writeIni } from './support.ts'

// Invariant 3: a client never waits for a server while another worker keeps one
// idle for the same pool.
//
// Making it deterministic: the kernel, not the test, picks the worker of each
// connection (SO_REUSEPORT hashes the 4-tuple). But the pooler tells which one
// it picked: the BackendKeyData pid it hands out carries the worker's id in its
// top byte ((id + 1) << 24), so that any worker can route a CancelRequest. The
// test opens connections until it holds two on one worker ("holder") and one
// on the other ("waiter"), and closes the rest. Then:
//   1. both holder clients run a transaction at the same time: the holder's
//      worker now has pool_size (2) servers, i.e. every permit of the pool;
//   2. they commit: both servers sit idle in the holder's worker, nobody busy;
//   3. the waiter runs a query. Its worker has no server and no permit left,
//      so it can only be served if the holder's worker gives a permit back.
// Without rebalancing the waiter would wait for query_wait_timeout (10 s here;
// server_idle_timeout is 600 s); with it, within ~a janitor tick plus a connect.
const POOL_SIZE = 2
const QUERY_WAIT_TIMEOUT = 10
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: ['app'] })

/** The worker a client landed on, read from the pooler's BackendKeyData. */
function workerOf(c: pg.Client): number {
  return ((c as unknown as { processID: number }).processID >>> 24) - 1
}

async function serverCount(): Promise<number> {
  const { rows } = await db.server.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend'",
  )
  return rows[0].n
}

describe('rebalance between two workers (transaction mode, pool_size 2)', () => {
  let pooler: Pooler
  const clients: pg.Client[] = []
  let holders: pg.Client[] = []
  /** A third client on the holder's worker: with it the holders' own queue is never empty. */
  let third: pg.Client
  let waiter: pg.Client

  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: POOL_SIZE,
        query_wait_timeout: QUERY_WAIT_TIMEOUT,
      },
    })
    pooler = await startPooler(ini, { workers: 2, args: ['--metrics', '127.0.0.1:0'] })
    const byWorker = new Map<number, pg.Client[]>()
    // Connect one at a time: each login may need a server for its welcome, and
    // sequential logins never make one wait on another.
    for (let i = 0; i < 40; i++) {
      const c = pooler.client({ database: 'app' })
      // A failure must fail the test, not crash the process as an unhandled 'error'.
      c.on('error', () => {})
      await c.connect()
      clients.push(c)
      const w = workerOf(c)
      byWorker.set(w, [...(byWorker.get(w) ?? []), c])
      const three = [...byWorker.entries()].find(([, list]) => list.length >= 3)
      const other = three && [...byWorker.entries()].find(([id]) => id !== three[0])
      if (three && other) {
        holders = three[1].slice(0, 2)
        third = three[1][2]
        waiter = other[1][0]
        break
      }
    }
    assert.ok(holders.length === 2 && waiter, 'the kernel put 40 connections on one worker')
    assert.ok(byWorker.size === 2, `expected worker ids 0 and 1, got ${[...byWorker.keys()]}`)
    // Only the four chosen clients stay.
    for (const c of clients) if (!holders.includes(c) && c !== third && c !== waiter) await c.end()
  })
  after(async () => {
    for (const c of clients) await c.end().catch(() => {})
    await pooler.stop()
  })

  test("a client waiting on one worker gets a server within 2 s while the other worker's servers idle", {
    timeout: TEST_TIMEOUT,
  }, async () => {
    for (let round = 0; round < 3; round++) {
      // 1. The holder's worker takes every permit of the pool.
      await Promise.all(holders.map((c) => c.query('BEGIN')))
      const pids = await Promise.all(
        holders.map(async (c) => Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)),
      )
      assert.equal(new Set(pids).size, POOL_SIZE, 'the two holders share a server')
      // 2. Both servers go idle in the holder's worker; nobody is busy now.
      await Promise.all(holders.map((c) => c.query('COMMIT')))
      assert.ok((await serverCount()) <= POOL_SIZE)
      // 3. The waiter needs a server the other worker keeps idle.
      const started = Date.now()
      const { rows } = await waiter.query('SELECT pg_backend_pid() AS p, $1::int AS round', [round])
      const waited = Date.now() - started
      assert.equal(rows[0].round, round)
      assert.ok(
        waited < 2000,
        `round ${round}: the waiter waited ${waited} ms for a server idling on another worker`,
      )
      // The permit moved; it was not conjured up (invariant 1 still holds).
      assert.ok((await serverCount()) <= POOL_SIZE)
    }
  })

  test('many rounds of alternating load between the workers: never more than pool_size servers, nobody waits long', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    let peak = 0
    let slowest = 0
    for (let round = 0; round < 10; round++) {
      const group = round % 2 === 0 ? holders : [waiter]
      const started = Date.now()
      await Promise.all(
        group.map(async (c) => {
          await c.query('BEGIN')
          await c.query('SELECT pg_sleep(0.01)')
          await c.query('COMMIT')
        }),
      )
      slowest = Math.max(slowest, Date.now() - started)
      peak = Math.max(peak, await serverCount())
    }
    assert.ok(peak <= POOL_SIZE, `saw ${peak} servers for a pool of ${POOL_SIZE}`)
    assert.ok(slowest < 2000, `a round took ${slowest} ms`)
  })

  test('a worker whose own clients keep every server busy still hands one to a client starving on the other', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    // Three clients on the holder's worker loop transactions on its two
    // servers: a server freed there always has a client of its own waiting.
    // The hand-over closes one; its permit must reach the waiter's worker, not
    // be taken straight back by the holder's queue. Starved, the waiter would
    // fail at query_wait_timeout (10 s).
    const base = metricsBase(pooler)
    const handovers = async () =>
      (await scrapeMetrics(base)).get(
        'pgbouncer_cluster_pool_handovers_total{database="app",user="postgres"}',
      )!
    let running = true
    const busy = [...holders, third].map(async (c) => {
      while (running) {
        await c.query('BEGIN')
        await c.query('SELECT pg_sleep(0.005)')
        await c.query('COMMIT')
      }
    })
    try {
      // Long enough for the holder's worker to take both permits.
      await new Promise((r) => setTimeout(r, 300))
      const before = await handovers()
      for (let round = 0; round < 3; round++) {
        const { rows } = await waiter.query('SELECT $1::int AS round', [round])
        assert.equal(rows[0].round, round)
      }
      // A round needs one hand-over each way at most. A permit taken straight
      // back costs a hand-over (and a PostgreSQL fork) per try instead.
      const spent = (await handovers()) - before
      assert.ok(spent <= 6, `${spent} hand-overs for three queries`)
    } finally {
      running = false
      await Promise.all(busy)
    }
    assert.ok((await serverCount()) <= POOL_SIZE)
  })

  test('/metrics: the waiting worker shows as a permit waiter, and the hand-over is counted', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const base = metricsBase(pooler)
    const pool = (name: string) => `pgbouncer_cluster_${name}{database="app",user="postgres"}`
    const before = await scrapeMetrics(base)
    // The holders keep both permits in open transactions; the waiter's worker
    // has none and parks on the shared semaphore.
    await Promise.all(holders.map((c) => c.query('BEGIN')))
    await Promise.all(holders.map((c) => c.query('SELECT 1')))
    const waited = waiter.query('SELECT 1 AS ok')
    let during = await scrapeMetrics(base)
    for (let i = 0; i < 100 && during.get(pool('pool_permit_waiters')) !== 1; i++) {
      await new Promise((r) => setTimeout(r, 50))
      during = await scrapeMetrics(base)
    }
    assert.equal(during.get(pool('pool_permit_waiters')), 1, 'one worker waits for a permit')
    assert.equal(during.get(pool('pool_permits_in_use')), POOL_SIZE)
    assert.equal(
      during.get('pgbouncer_pools_client_waiting_connections{database="app",user="postgres"}'),
      1,
    )
    // The holders commit; their worker hands a permit over to the waiter's.
    await Promise.all(holders.map((c) => c.query('COMMIT')))
    assert.equal((await waited).rows[0].ok, 1)
    const after = await scrapeMetrics(base)
    assert.ok(
      after.get(pool('pool_handovers_total'))! >= before.get(pool('pool_handovers_total'))! + 1,
      `hand-overs ${before.get(pool('pool_handovers_total'))} → ${after.get(pool('pool_handovers_total'))}`,
    )
    assert.equal(after.get(pool('pool_permit_waiters')), 0)
    assert.ok(after.get(pool('pool_permits_in_use'))! <= POOL_SIZE)
  })
})

// In a busy pool some server is idle at almost any instant, between two
// transactions. Handing that one over whenever the other worker's clients
// queue closes and reopens servers many times a second (a PostgreSQL fork
// each) without serving anyone sooner: a worker gives a server back only if
// one stayed idle the whole give-back delay.
describe('two workers whose clients all queue (transaction mode, pool_size 4)', () => {
  const PER_WORKER = 4
  let pooler: Pooler
  const clients: pg.Client[] = []

  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 4 },
    })
    pooler = await startPooler(ini, { workers: 2, args: ['--metrics', '127.0.0.1:0'] })
    const byWorker = new Map<number, pg.Client[]>([
      [0, []],
      [1, []],
    ])
    for (let i = 0; i < 60 && [...byWorker.values()].some((l) => l.length < PER_WORKER); i++) {
      const c = pooler.client({ database: 'app' })
      c.on('error', () => {})
      await c.connect()
      const list = byWorker.get(workerOf(c))!
      if (list.length < PER_WORKER) list.push(c)
      else await c.end()
    }
    for (const list of byWorker.values()) clients.push(...list)
    assert.equal(clients.length, 2 * PER_WORKER, 'the kernel put 60 connections on one worker')
  })
  after(async () => {
    for (const c of clients) await c.end().catch(() => {})
    await pooler.stop()
  })

  test('a balanced, saturated pool keeps its servers: few hand-overs, no reconnect churn', {
    timeout: TEST_TIMEOUT,
  }, async (t) => {
    const base = metricsBase(pooler)
    const handovers = async () =>
      (await scrapeMetrics(base)).get(
        'pgbouncer_cluster_pool_handovers_total{database="app",user="postgres"}',
      )!
    let running = true
    let queries = 0
    const pids = new Set<number>()
    const busy = clients.map(async (c) => {
      while (running) {
        const { rows } = await c.query('SELECT pg_backend_pid() AS p')
        pids.add(rows[0].p)
        queries++
      }
    })
    try {
      // The first second settles how the pool's four servers split between the workers.
      await new Promise((r) => setTimeout(r, 1000))
      const before = await handovers()
      const pidsBefore = pids.size
      await new Promise((r) => setTimeout(r, 2000))
      const spent = (await handovers()) - before
      const opened = pids.size - pidsBefore
      t.diagnostic(
        `${queries} queries in 3 s; ${spent} hand-overs and ${opened} new servers in the last 2`,
      )
      assert.ok(queries > 1000, `only ${queries} queries ran`)
      assert.ok(spent <= 3, `${spent} hand-overs in 2 s while every client of both workers queued`)
      assert.ok(opened <= 3, `${opened} new server connections in 2 s`)
    } finally {
      running = false
      await Promise.all(busy)
    }
    assert.ok((await serverCount()) <= 4)
  })
})
