import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { sendCancel } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Cancel through the pooler: the client holds the pooler's BackendKeyData, never
// the server's. With several workers the CancelRequest arrives on whichever
// worker the kernel picks, so it must be routed to the worker owning the key.
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: ['app'] })
const PSQL = findPgTool('psql')

/** BackendKeyData as node-postgres keeps it (not in its type definitions). */
function keyOf(c: pg.Client): { pid: number; secret: number } {
  const k = c as unknown as { processID: number; secretKey: number }
  return { pid: k.processID, secret: k.secretKey }
}

function sqlstateOf(err: unknown): string | undefined {
  return (err as { code?: string }).code
}

/** Resolves once pg_stat_activity shows `sql` running; bounded. */
async function waitUntilRunning(sql: string): Promise<void> {
  const deadline = Date.now() + 5000
  while (Date.now() < deadline) {
    const { rows } = await db.server.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
      [sql],
    )
    if (rows[0].n > 0) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`${sql} never started`)
}

for (const mode of ['transaction', 'session'] as const) {
  describe(`cancel in ${mode} mode on 3 workers`, () => {
    let pooler: Pooler
    before(async () => {
      const ini = writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: mode, default_pool_size: 4 },
      })
      pooler = await startPooler(ini, { workers: 3 })
    })
    after(() => pooler.stop())

    test('a CancelRequest with the key the pooler gave cancels the running query (57014), whichever worker receives it', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      // Six rounds, each a new client and a new cancel connection: the kernel
      // spreads both over 3 workers, so routing to another worker is all but
      // certainly exercised (all six on the owner: (1/3)^6).
      for (let round = 0; round < 6; round++) {
        await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
          const sql = `SELECT pg_sleep(10) /* round ${round} */`
          const running = c.query(sql).then(
            () => null,
            (err: unknown) => err,
          )
          await waitUntilRunning(sql)
          const { pid, secret } = keyOf(c)
          const sent = Date.now()
          await sendCancel(pooler.host, pooler.port, pid, secret)
          const err = await running
          const elapsed = Date.now() - sent
          assert.ok(err !== null, `round ${round}: the query was not cancelled`)
          assert.equal(sqlstateOf(err), '57014')
          assert.match((err as Error).message, /canceling statement due to user request/)
          assert.ok(elapsed < 2000, `round ${round}: cancel took ${elapsed} ms`)
          // The connection survives its cancelled query.
          const { rows } = await c.query('SELECT $1::int AS n', [round])
          assert.equal(rows[0].n, round)
        })
      }
    })

    test('a CancelRequest with a wrong secret cancels nothing', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
        const sql = 'SELECT pg_sleep(1.2) /* wrong secret */'
        const running = c.query(sql)
        await waitUntilRunning(sql)
        const { pid, secret } = keyOf(c)
        // Every worker may receive it: send a few.
        for (let i = 0; i < 4; i++) await sendCancel(pooler.host, pooler.port, pid, secret ^ 1)
        const result = await running
        assert.equal(result.rowCount, 1)
      })
    })

    test('cancelling one client leaves another client running the same query alone', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (victim) => {
        await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (other) => {
          const victimSql = 'SELECT pg_sleep(10) /* victim */'
          const otherSql = 'SELECT pg_sleep(1.5) /* bystander */'
          const victimRun = victim.query(victimSql).then(
            () => null,
            (err: unknown) => err,
          )
          const otherRun = other.query(otherSql)
          await waitUntilRunning(victimSql)
          await waitUntilRunning(otherSql)
          const { pid, secret } = keyOf(victim)
          await sendCancel(pooler.host, pooler.port, pid, secret)
          assert.equal(sqlstateOf(await victimRun), '57014')
          assert.equal((await otherRun).rowCount, 1)
        })
      })
    })
  })
}

describe('psql interrupted with SIGINT', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 2 },
    })
    pooler = await startPooler(ini, { workers: 2 })
  })
  after(() => pooler.stop())

  test('psql sends a CancelRequest through the pooler and reports the cancelled statement', {
    timeout: TEST_TIMEOUT,
    skip: PSQL === null && 'psql not installed',
  }, async () => {
    for (let round = 0; round < 3; round++) {
      const sql = `SELECT pg_sleep(10) /* psql ${round} */`
      const child = spawn(PSQL!, ['-X', '-c', sql, pooler.url({ database: 'app' })], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let stderr = ''
      child.stderr.setEncoding('utf8').on('data', (s: string) => {
        stderr += s
      })
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
      try {
        await waitUntilRunning(sql)
        const sent = Date.now()
        child.kill('SIGINT')
        const code = await exited
        const elapsed = Date.now() - sent
        assert.equal(code, 1, stderr)
        assert.match(stderr, /canceling statement due to user request/)
        assert.ok(elapsed < 3000, `psql took ${elapsed} ms to stop`)
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL')
      }
    }
  })
})

// A cancel is aimed at a client, but carried out on whichever server that
// client is linked to when the pooler acts on it. In transaction mode that
// server may pass to another client before PostgreSQL receives the cancel, so
// the server must not be handed on while a cancel for it is in flight
// (PgBouncer keeps such servers aside until the cancel completed).
describe('cancel never hits a client it was not aimed at (transaction mode, one shared server)', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 1 },
    })
    pooler = await startPooler(ini, { workers: 1 })
  })
  after(() => pooler.stop())

  // Skipped: on this host no cancel reaches A in this race at all, also on the code before
  // this change (a130649), so the test cannot tell the guard working from cancels missing.
  // Its scenario needs a deterministic rewrite.
  test('cancels sent for A while A and B alternate on one server cancel only A', {
    timeout: TEST_TIMEOUT,
    skip: 'timing-dependent on this host: no cancel reaches A even before the guard; needs a deterministic rewrite',
  }, async () => {
    const url = pooler.url({ database: 'app' })
    await withClient({ connectionString: url }, async (a) => {
      await withClient({ connectionString: url }, async (b) => {
        const { pid, secret } = keyOf(a)
        const cancelled = { a: 0, b: 0 }
        let stop = false
        const loop = async (c: pg.Client, who: 'a' | 'b', sql: string) => {
          while (!stop) {
            await c.query(sql).catch((err: unknown) => {
              if (sqlstateOf(err) !== '57014') throw err
              cancelled[who]++
            })
          }
        }
        const loops = [
          loop(a, 'a', 'SELECT pg_sleep(0.002)'),
          loop(b, 'b', 'SELECT pg_sleep(0.02)'),
        ]
        const until = Date.now() + 2000
        while (Date.now() < until) await sendCancel(pooler.host, pooler.port, pid, secret)
        stop = true
        await Promise.all(loops)
        assert.ok(cancelled.a > 0, 'no cancel reached A at all')
        assert.equal(cancelled.b, 0, `B, never targeted, had ${cancelled.b} queries cancelled`)
      })
    })
  })
})
