import assert from 'node:assert/strict'
import { after, before, describe, type TestContext, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// A server closed while its statement runs (query_timeout, transaction_timeout,
// a client gone mid-query, KILL_CLIENT): pgbouncer-cluster asks PostgreSQL to
// cancel the statement before it sends Terminate, so the backend stops at once
// and the pool's one permit comes back when the backend has really gone.
// PgBouncer 1.18 frees its pool at once but leaves the statement running; the
// same bodies run against it and say so. Each test logs, as a diagnostic, the
// time from the end of the first client to the next client's answer.

const db = usePostgres({ databases: ['runaway'] })
const TEST_TIMEOUT = 60_000
const SLEEP = 'SELECT pg_sleep(30) AS runaway'

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false; cancels: boolean }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 1 }),
    skip: false,
    cancels: true,
  },
  {
    name: 'PgBouncer',
    start: (spec) => startPgBouncer(spec),
    skip: NO_PGBOUNCER,
    cancels: false,
  },
]

function spec(settings: Record<string, string | number> = {}): IniSpec {
  return {
    databases: { runaway: `host=127.0.0.1 port=${db.server.port} dbname=runaway` },
    pgbouncer: {
      pool_mode: 'transaction',
      default_pool_size: 1,
      admin_users: 'postgres',
      ...settings,
    },
  }
}

type PgError = Error & { code?: string }

async function connected(pooler: Pooler): Promise<pg.Client> {
  const c = pooler.client({ database: 'runaway' })
  // The connection's end after a FATAL is expected here.
  c.on('error', () => {})
  await c.connect()
  return c
}

/** The backend running the sleep, once PostgreSQL runs it. */
async function runawayPid(sql: string): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.server.query(
      "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
      [sql],
    )
    if (rows.length > 0) return Number(rows[0].pid)
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error('the statement never ran')
}

async function running(pid: number): Promise<boolean> {
  const { rows } = await db.server.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])
  return rows.length > 0
}

/** Client backends of the database, sampled until stopped: the most seen at once. */
function sampleBackends(): { stop: () => Promise<number> } {
  let most = 0
  let on = true
  const loop = (async () => {
    while (on) {
      const { rows } = await db.server.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'runaway' AND backend_type = 'client backend'",
      )
      most = Math.max(most, rows[0].n)
      await new Promise((r) => setTimeout(r, 10))
    }
  })()
  return {
    stop: async () => {
      on = false
      await loop
      return most
    },
  }
}

interface Outcome {
  /** From the end of the first client to the second client's answer. */
  servedAfterMs: number
  /** The first client's backend, a second after its end. */
  stillRunning: boolean
  /** Client backends of the database at once, at most (pool_size is 1). */
  mostBackends: number
}

let scenarios = 0

/**
 * The first client's statement runs until `end` ends it (resolving when it
 * did, given the first client's outcome); a second client asks meanwhile.
 */
async function scenario(
  pooler: Pooler,
  end: (first: pg.Client, outcome: Promise<PgError | null>) => Promise<number>,
): Promise<Outcome> {
  const first = await connected(pooler)
  const second = await connected(pooler)
  const sampler = sampleBackends()
  const sql = `${SLEEP}_${++scenarios}`
  let pid = 0
  try {
    const outcome = first.query(sql).then(
      () => null,
      (e: PgError) => e,
    )
    pid = await runawayPid(sql)
    // Half a second in: the second client's own query_timeout is that much further off.
    await new Promise((r) => setTimeout(r, 500))
    let served = 0
    const answer = second.query('SELECT 2 AS n').then((r) => {
      served = Date.now()
      return r
    })
    const ended = await end(first, outcome)
    assert.equal((await answer).rows[0].n, 2)
    await new Promise((r) => setTimeout(r, Math.max(0, ended + 1000 - Date.now())))
    const stillRunning = await running(pid)
    return { servedAfterMs: served - ended, stillRunning, mostBackends: await sampler.stop() }
  } finally {
    await sampler.stop()
    await first.end().catch(() => {})
    await second.end().catch(() => {})
    // What PgBouncer leaves running would count against the next scenario.
    if (pid !== 0) await db.server.query('SELECT pg_terminate_backend($1)', [pid])
  }
}

/** The first client's statement ends with this error, in the pooler's own words. */
function endsWith(message: string) {
  return async (_first: pg.Client, outcome: Promise<PgError | null>) => {
    const err = await outcome
    assert.ok(err !== null, 'the statement was not stopped')
    assert.equal(err.message, message)
    return Date.now()
  }
}

async function leave(first: pg.Client): Promise<number> {
  ;(first as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy()
  return Date.now()
}

function kill(pooler: Pooler) {
  return async () => {
    await withClient(
      { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
      async (admin) => {
        const { rows } = await admin.query('SHOW CLIENTS')
        const row = rows.find((x) => x.database === 'runaway' && x.link !== '')
        assert.ok(row, 'no linked client in SHOW CLIENTS')
        await admin.query(`KILL_CLIENT ${row.id}`)
      },
    )
    return Date.now()
  }
}

function check(t: TestContext, target: string, what: string, r: Outcome, cancels: boolean): void {
  t.diagnostic(
    `${target}, ${what}: next client served ${r.servedAfterMs} ms after; backend still running 1 s later: ${r.stillRunning}; most backends at once: ${r.mostBackends}`,
  )
  assert.ok(r.servedAfterMs < 5000, `next client served ${r.servedAfterMs} ms after`)
  if (cancels) {
    assert.equal(r.stillRunning, false, 'the statement still runs')
    assert.equal(r.mostBackends, 1, 'more backends than pool_size at once')
  } else {
    assert.equal(r.stillRunning, true)
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: a statement still running when its server is closed`, {
    skip: target.skip,
  }, () => {
    const cases = [
      {
        what: 'query_timeout',
        settings: { query_timeout: 1 },
        end: () => endsWith('query timeout'),
      },
      {
        what: 'a client gone mid-query',
        settings: {} as Record<string, number>,
        end: () => leave,
      },
    ]
    for (const c of cases) {
      describe(c.what, () => {
        let pooler: Pooler
        before(async () => {
          pooler = await target.start(spec(c.settings))
        })
        after(() => pooler?.stop())

        test(target.cancels
          ? 'pg_sleep(30) is cancelled: the next client is served within moments and the backend is gone'
          : 'the pool is free at once, but pg_sleep(30) runs on', {
          timeout: TEST_TIMEOUT,
        }, async (t) => {
          check(t, target.name, c.what, await scenario(pooler, c.end()), target.cancels)
        })
      })
    }
  })
}

// PgBouncer 1.18 has neither (transaction_timeout is 1.25's, KILL_CLIENT 1.24's).
describe('pgbouncer-cluster: transaction_timeout and KILL_CLIENT cancel the statement too', () => {
  test('transaction_timeout', { timeout: TEST_TIMEOUT }, async (t) => {
    const pooler = await startPooler(writeIni(spec({ transaction_timeout: 1 })), { workers: 1 })
    try {
      const r = await scenario(pooler, endsWith('transaction timeout'))
      check(t, 'pgbouncer-cluster', 'transaction_timeout', r, true)
    } finally {
      await pooler.stop()
    }
  })

  test('KILL_CLIENT', { timeout: TEST_TIMEOUT }, async (t) => {
    const pooler = await startPooler(writeIni(spec()), { workers: 1 })
    try {
      check(t, 'pgbouncer-cluster', 'KILL_CLIENT', await scenario(pooler, kill(pooler)), true)
    } finally {
      await pooler.stop()
    }
  })
})
