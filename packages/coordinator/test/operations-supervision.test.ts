import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import pino from 'pino'
import { Cluster } from '../src/cluster.ts'
import { loadConfig } from '../src/config/config.ts'
import { cancelRequestPacket, RawConnection } from './raw-protocol.ts'
import { type CancelRelay, cancelRelay, until, writeIni } from './support.ts'

const POOL_SIZE = 4
const APP_BACKENDS =
  "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"

// A worker thread dies under load: the cluster stays up, replaces it, and loses no permit.
// In-process, so that the test holds the thread to kill; the same code runs behind the CLI.
describe('worker supervision', { timeout: 50_000 }, () => {
  const db = usePostgres({ databases: ['app'], maxConnections: 60 })
  let cluster: Cluster
  const logLines: Record<string, unknown>[] = []
  const url = () => `postgres://postgres@127.0.0.1:${cluster.port}/app`

  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: POOL_SIZE,
        max_client_conn: 500,
        query_wait_timeout: 20,
      },
    })
    const log = pino(
      { level: 'info' },
      { write: (line: string) => void logLines.push(JSON.parse(line)) },
    )
    cluster = new Cluster({
      config: loadConfig(ini),
      workers: 2,
      logLevel: 'error',
      log,
    })
    await cluster.start()
  })
  /** Loads still running: a failed test leaves its own, stopped here before the cluster. */
  const loads = new Set<{ stop(): Promise<unknown> }>()
  after(async () => {
    await Promise.all([...loads].map((l) => l.stop()))
    await cluster.stop('immediate')
  })

  /** Clients looping short transactions until stopped; a lost connection is counted and replaced. */
  function load(clients: number) {
    let running = true
    let transactions = 0
    let lost = 0
    const loops = Array.from({ length: clients }, async () => {
      while (running) {
        const c = new pg.Client(url())
        c.on('error', () => {})
        try {
          await c.connect()
          while (running) {
            await c.query('BEGIN')
            await c.query('SELECT pg_sleep(0.005)')
            await c.query('COMMIT')
            transactions++
          }
        } catch {
          lost++
          // Not a tight loop of refused connections while the port is down.
          await new Promise((r) => setTimeout(r, 10))
        } finally {
          await c.end().catch(() => {})
        }
      }
    })
    const handle = {
      get transactions() {
        return transactions
      },
      async stop() {
        running = false
        loads.delete(handle)
        await Promise.all(loops)
        return { transactions, lost }
      },
    }
    loads.add(handle)
    return handle
  }

  async function waitFor(what: string, check: () => boolean, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await new Promise((r) => setTimeout(r, 10))
    }
  }

  test('terminating a worker mid-load: new clients connect, it is replaced, its permits return', async () => {
    const running = load(16)
    const pool = cluster.shared.pool(0) // the first and only pool: slot 0
    await waitFor('worker 0 to hold servers', () => pool.held(0) > 0)
    const victim = cluster.workerThread(0)!
    const heldByVictim = pool.held(0)
    await victim.terminate()

    // Meanwhile the other worker keeps accepting on the port.
    for (let i = 0; i < 5; i++) {
      const c = new pg.Client(url())
      await c.connect()
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
      await c.end()
    }
    await cluster.workerReady(0)
    const replacement = cluster.workerThread(0)
    assert.ok(replacement !== null && replacement !== victim, 'worker 0 was not replaced')
    const before = running.transactions
    await waitFor('transactions after the restart', () => running.transactions > before + 50)
    const { lost } = await running.stop()
    assert.ok(lost >= 1, "the dead worker's clients did not notice")

    const exit = logLines.find((l) => l.msg === 'worker exited; restarting it')
    assert.ok(exit, 'the crash was not logged')
    assert.equal(exit.thread, 0)
    assert.ok(Number(exit.reclaimed_permits) >= heldByVictim)
    assert.equal(pool.held(0) <= POOL_SIZE, true)
  })

  test('afterwards pool_size is never exceeded (sampled from pg_stat_activity)', async () => {
    const monitor = new pg.Client(db.server.url({ database: 'app' }))
    await monitor.connect()
    let peak = 0
    let samples = 0
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await monitor.query(APP_BACKENDS)
        peak = Math.max(peak, rows[0].n)
        samples++
        await new Promise((r) => setTimeout(r, 5))
      }
    })()
    const running = load(24)
    await waitFor('load', () => running.transactions > 400, 20_000)
    const { lost } = await running.stop()
    sampling = false
    await sampler
    await monitor.end()
    assert.equal(lost, 0, 'clients lost their connection with every worker alive')
    assert.ok(samples > 10, `only ${samples} samples`)
    assert.ok(peak <= POOL_SIZE, `${peak} servers for a pool of ${POOL_SIZE}`)
    assert.ok(peak > 0)
  })

  test('afterwards pool_size transactions run at once: no permit leaked', async () => {
    const clients = await Promise.all(
      Array.from({ length: POOL_SIZE }, async () => {
        const c = new pg.Client(url())
        await c.connect()
        return c
      }),
    )
    try {
      // A leaked permit would leave one client waiting for query_wait_timeout.
      const timeout = AbortSignal.timeout(5000)
      const pids = await Promise.race([
        Promise.all(
          clients.map(async (c) => {
            await c.query('BEGIN')
            return Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
          }),
        ),
        new Promise<never>((_, reject) =>
          timeout.addEventListener('abort', () =>
            reject(new Error('the pool is short of permits')),
          ),
        ),
      ])
      assert.equal(new Set(pids).size, POOL_SIZE)
      await Promise.all(clients.map((c) => c.query('COMMIT')))
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
    // The shared count is exactly the servers that exist.
    const pool = cluster.shared.pool(0)
    const deadline = Date.now() + 5000
    let backends = -1
    while (backends !== pool.used() && Date.now() < deadline) {
      backends = (await db.server.query(APP_BACKENDS)).rows[0].n
      if (backends !== pool.used()) await new Promise((r) => setTimeout(r, 50))
    }
    assert.equal(pool.used(), backends, 'permits held without a server')
    assert.ok(pool.used() <= POOL_SIZE)
  })

  test('a worker that keeps dying is restarted with backoff, and logged', async () => {
    const restarts = () =>
      logLines.filter((l) => l.msg === 'worker exited; restarting it' && l.thread === 1)
    await cluster.workerThread(1)!.terminate()
    await waitFor('first restart', () => restarts().length === 1)
    await cluster.workerReady(1)
    // Dies again soon after its start: no longer at once.
    await cluster.workerThread(1)!.terminate()
    await waitFor('second restart', () => restarts().length === 2)
    const [first, second] = restarts()
    // (The first may already wait if worker 1 itself started less than 5 s before.)
    assert.ok(Number(second.delay_ms) >= 100, `restarted after ${second.delay_ms} ms`)
    assert.ok(Number(second.delay_ms) > Number(first.delay_ms), 'the delay did not grow')
    assert.ok(Number(second.restarts) > Number(first.restarts))
    await cluster.workerReady(1)
    const c = new pg.Client(url())
    await c.connect()
    assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    await c.end()
  })
})

// A CancelRequest that lands on another worker than the one owning the key is
// routed to the owner, and its connection stays open until the owner says
// PostgreSQL has taken the cancel. If the owner dies first, the coordinator
// answers for it: the connection closes then, not at client_login_timeout.
describe('a worker dies while CancelRequests routed to it wait for PostgreSQL', {
  timeout: 60_000,
}, () => {
  const db = usePostgres({ databases: ['app'] })
  let relay: CancelRelay
  let cluster: Cluster
  before(async () => {
    relay = await cancelRelay(db.server.port)
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${relay.port} dbname=app` },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: 4,
        // Neither may close the cancel connections during the test.
        client_login_timeout: 120,
        cancel_wait_timeout: 0,
      },
    })
    cluster = new Cluster({
      config: loadConfig(ini),
      workers: 2,
      logLevel: 'error',
      log: pino({ level: 'silent' }),
    })
    await cluster.start()
  })
  after(async () => {
    relay.release()
    await cluster.stop('immediate')
    relay.close()
  })

  test('every cancel connection closes once the owner is gone', async () => {
    const a = new pg.Client(`postgres://postgres@127.0.0.1:${cluster.port}/app`)
    a.on('error', () => {})
    await a.connect()
    const sql = 'SELECT pg_sleep(30) /* cancelled by nobody */'
    const running = a.query(sql).catch(() => null)
    await until('the query to run', async () => {
      const { rows } = await db.server.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
        [sql],
      )
      return rows[0].n > 0
    })
    const { processID: pid, secretKey: secret } = a as unknown as {
      processID: number
      secretKey: number
    }
    const owner = (pid >>> 24) - 1
    // Eight cancel connections: the kernel spreads them over both workers, so
    // some are routed to the owner (all eight on the owner: 1 in 256).
    relay.hold = true
    const cancels = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const conn = await RawConnection.connect('127.0.0.1', cluster.port)
        conn.send(cancelRequestPacket(pid, secret))
        return conn
      }),
    )
    // Every one of them has reached the owner, which waits for PostgreSQL.
    await until('the owner to forward all eight', async () => relay.held === 8)
    await cluster.workerThread(owner)!.terminate()
    for (const conn of cancels) {
      await conn.drain(20_000)
      const open = !conn.closed
      conn.destroy()
      assert.ok(!open, 'a cancel connection stayed open after its owner died')
    }
    await running
    await a.end().catch(() => {})
  })
})
