import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { cancelRequestPacket, RawConnection, sendCancel } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import {
  type CancelRelay,
  cancelRelay,
  type IniSpec,
  type Pooler,
  startPooler,
  until,
  withClient,
  writeIni,
} from './support.ts'

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
async function waitUntilRunning(sql: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
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
          await sendCancel(pooler.host, pooler.port, pid, secret)
          // pg_sleep(10) ends in 57014 only if the cancel reached its backend
          const err = await running
          assert.ok(err !== null, `round ${round}: the query was not cancelled`)
          assert.equal(sqlstateOf(err), '57014')
          assert.match((err as Error).message, /canceling statement due to user request/)
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

// A cancel key must not be guessable from another: PgBouncer's is 64 random
// bits; ours keeps the worker in the pid's top byte (routing) and draws every
// other bit from the CSPRNG. Over 64 logins each such bit takes both values
// (a fair bit stays fixed with probability 2^-63), where a counter in the pid
// or a secret with its sign bit cleared would not.
const KEY_TARGETS: {
  name: string
  start: (spec: IniSpec) => Promise<Pooler>
  /** Bits of the pid that route the cancel, not random. */
  routing: number
  skip: string | false
}[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 2 }),
    routing: 0xff000000,
    skip: false,
  },
  { name: 'PgBouncer', start: startPgBouncer, routing: 0, skip: NO_PGBOUNCER },
]
for (const target of KEY_TARGETS) {
  describe(`${target.name}: cancel keys`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', default_pool_size: 2 },
      })
    })
    after(() => pooler.stop())

    test('every bit of the key that does not route it is random', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const keys: { pid: number; secret: number }[] = []
      for (let i = 0; i < 64; i++) {
        const conn = await RawConnection.connect(pooler.host, pooler.port)
        try {
          const key = (await conn.login({ user: 'postgres', database: 'app' })).find(
            (m) => m.type === 'K',
          )
          assert.ok(key, 'no BackendKeyData')
          keys.push({ pid: key.body.readInt32BE(0), secret: key.body.readInt32BE(4) })
        } finally {
          conn.destroy()
        }
      }
      assert.equal(new Set(keys.map((k) => `${k.pid}/${k.secret}`)).size, keys.length)
      const fixed: string[] = []
      for (let bit = 0; bit < 32; bit++) {
        const mask = (1 << bit) >>> 0
        const pidOnes = keys.filter((k) => (k.pid >>> 0) & mask).length
        if ((target.routing & mask) === 0 && (pidOnes === 0 || pidOnes === keys.length))
          fixed.push(`pid bit ${bit}`)
        const secretOnes = keys.filter((k) => (k.secret >>> 0) & mask).length
        if (secretOnes === 0 || secretOnes === keys.length) fixed.push(`secret bit ${bit}`)
      }
      assert.deepEqual(fixed, [], 'bits that never changed over 64 logins')
      if (target.routing !== 0) {
        // The routing byte names one of the two workers, with the sign bit clear.
        for (const k of keys) assert.ok([1, 2].includes(k.pid >>> 24), `pid ${k.pid}`)
      }
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
    skip: skipWithout('psql', PSQL),
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
        child.kill('SIGINT')
        const code = await exited
        assert.equal(code, 1, stderr)
        assert.match(stderr, /canceling statement due to user request/)
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL')
      }
    }
  })
})

// A cancel is aimed at a client, but PostgreSQL carries it out on a backend:
// the one that client's server connection has. In transaction mode that server
// passes to other clients between transactions, so a cancel for A must reach
// PostgreSQL only while A is linked, and the server must not pass on while a
// cancel for it is on its way (PgBouncer 1.18 keeps such a server aside, "being
// canceled", until PostgreSQL closed the cancel connection).
//
// Pool of one, one worker: A and B share one backend, which pg_backend_pid()
// names. B waits on an advisory lock the test holds, so B's query runs exactly
// as long as the test wants: a cancel reaching that backend meanwhile cancels B
// (57014), and nothing depends on how fast the host is. A relay in front of
// PostgreSQL can hold the pooler's cancel connections, so that the test decides
// when PostgreSQL acts on one.
describe('cancel never hits a client it was not aimed at (transaction mode, one shared server)', () => {
  const LOCK = 4201
  let pooler: Pooler
  let relay: CancelRelay
  let admin: pg.Client
  let locker: pg.Client
  before(async () => {
    relay = await cancelRelay(db.server.port)
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${relay.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 1, admin_users: 'postgres' },
    })
    pooler = await startPooler(ini, { workers: 1 })
    admin = new pg.Client({ connectionString: pooler.url({ database: 'pgbouncer' }) })
    await admin.connect()
    // Straight to PostgreSQL, not through the pooler: it holds the lock B waits on.
    locker = new pg.Client({ connectionString: db.server.url({ database: 'app' }) })
    await locker.connect()
  })
  after(async () => {
    await admin?.end().catch(() => {})
    await locker?.end().catch(() => {})
    await pooler?.stop()
    relay?.close()
  })

  const url = () => pooler.url({ database: 'app' })
  const pidOf = async (c: pg.Client): Promise<number> =>
    (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid

  /** The backend running `sql`, once it waits on LOCK; bounded. */
  async function blockedOnLock(sql: string, done = () => false): Promise<number> {
    let pid = 0
    await until(`${sql} waiting on the lock`, async () => {
      if (done()) return true
      const { rows } = await db.server.query(
        "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active' AND wait_event_type = 'Lock'",
        [sql],
      )
      pid = rows[0]?.pid ?? 0
      return pid !== 0
    })
    return pid
  }

  /** B's query: waits for LOCK, then says which backend ran it. */
  function runB(b: pg.Client, tag: string) {
    const sql = `SELECT pg_advisory_xact_lock(${LOCK})::text AS locked, pg_backend_pid() AS pid /* ${tag} */`
    let settled = false
    const result = b.query(sql).then(
      (r) => ({ pid: r.rows[0].pid as number, err: null }),
      (err: unknown) => ({ pid: 0, err }),
    )
    void result.then(() => {
      settled = true
    })
    return { sql, result, done: () => settled }
  }

  async function poolRow(): Promise<Record<string, unknown>> {
    const { rows } = await admin.query('SHOW POOLS')
    const row = rows.find((r) => r.database === 'app' && r.user === 'postgres')
    assert.ok(row, 'no pool row for app')
    return row
  }

  test('a cancel for A while A runs a query on the server cancels that query (57014)', {
    timeout: 60_000,
  }, async () => {
    await withClient({ connectionString: url() }, async (a) => {
      const pidA = await pidOf(a)
      const sql = 'SELECT pg_sleep(30) /* A runs */'
      const running = a.query(sql).then(
        () => null,
        (err: unknown) => err,
      )
      await waitUntilRunning(sql, 20_000)
      const taken = relay.taken
      const { pid, secret } = keyOf(a)
      const cancel = await openCancel(pooler, pid, secret)
      const err = await running
      assert.ok(err !== null, 'the query was not cancelled: it slept its 30 s')
      assert.equal(sqlstateOf(err), '57014')
      assert.match((err as Error).message, /canceling statement due to user request/)
      await cancel.closed()
      await until('PostgreSQL took the cancel', async () => relay.taken === taken + 1)
      // Same server, same backend: A goes on.
      assert.equal(await pidOf(a), pidA)
    })
  })

  test('a cancel for A while A is idle does not cancel B, which runs on the backend A used', {
    timeout: 60_000,
  }, async () => {
    await withClient({ connectionString: url() }, async (a) => {
      await withClient({ connectionString: url() }, async (b) => {
        const pidA = await pidOf(a)
        await locker.query('SELECT pg_advisory_lock($1)', [LOCK])
        let locked = true
        try {
          const run = runB(b, 'B while A idle')
          assert.equal(await blockedOnLock(run.sql), pidA, 'B does not run on the backend A used')
          const forwarded = relay.forwarded
          const { pid, secret } = keyOf(a)
          for (let i = 0; i < 3; i++) await (await openCancel(pooler, pid, secret)).closed()
          // A is linked to no server: there is nothing to cancel, and no
          // cancel went to PostgreSQL (PgBouncer: "cancel request for idle client").
          await relay.settled()
          assert.equal(relay.forwarded, forwarded, 'a cancel for an idle client went to PostgreSQL')
          await locker.query('SELECT pg_advisory_unlock($1)', [LOCK])
          locked = false
          const { pid: ran, err } = await run.result
          assert.equal(err, null, `B, never targeted, failed: ${String(err)}`)
          assert.equal(ran, pidA)
        } finally {
          if (locked) await locker.query('SELECT pg_advisory_unlock($1)', [LOCK])
        }
      })
    })
  })

  test('a cancel for A that PostgreSQL takes after A committed does not cancel B: the server waits as being_canceled', {
    timeout: 60_000,
  }, async () => {
    await withClient({ connectionString: url() }, async (a) => {
      await withClient({ connectionString: url() }, async (b) => {
        // A holds the only server for its transaction.
        await a.query('BEGIN')
        const pidA = await pidOf(a)
        await locker.query('SELECT pg_advisory_lock($1)', [LOCK])
        let locked = true
        relay.hold = true
        try {
          const { pid, secret } = keyOf(a)
          const cancel = await openCancel(pooler, pid, secret)
          // The pooler sent it on while A was linked; the relay keeps it from PostgreSQL.
          await until('the cancel at the relay', async () => relay.held === 1)
          // B queues for the server; A's transaction ends.
          const run = runB(b, 'B after A committed')
          await until(
            'B waiting for a server',
            async () => Number((await poolRow()).cl_waiting) === 1,
          )
          await a.query('COMMIT')
          // With the guard the server waits for the cancel and B keeps waiting;
          // without it B now runs on that server and waits on the lock.
          await until('the server set aside, or B on it', async () => {
            if (Number((await poolRow()).sv_being_canceled) === 1) return true
            const { rows } = await db.server.query(
              "SELECT 1 FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
              [run.sql],
            )
            return rows.length > 0
          })
          const aside = await poolRow()
          // PostgreSQL takes the cancel now, aimed at A's old backend.
          relay.hold = false
          relay.release()
          await until('PostgreSQL took the cancel', async () => relay.taken === relay.forwarded)
          await cancel.closed()
          // The server goes to B; B gets the lock once the test lets go of it
          // (B may have failed already: then nothing waits on the lock).
          await blockedOnLock(run.sql, run.done)
          await locker.query('SELECT pg_advisory_unlock($1)', [LOCK])
          locked = false
          const { pid: ran, err } = await run.result
          assert.equal(err, null, `B, never targeted, failed: ${String(err)}`)
          assert.equal(ran, pidA, 'B ran on another backend')
          assert.equal(
            Number(aside.sv_being_canceled),
            1,
            'the server passed on with a cancel in flight',
          )
          assert.equal(Number(aside.cl_waiting), 1)
          assert.equal(Number((await poolRow()).sv_being_canceled), 0)
          // A was idle when the cancel arrived: nothing of A's was cancelled either.
          assert.equal(await pidOf(a), pidA)
        } finally {
          relay.hold = false
          relay.release()
          if (locked) await locker.query('SELECT pg_advisory_unlock($1)', [LOCK])
        }
      })
    })
  })

  test("the cancel connection stays open until PostgreSQL has taken the cancel, so the client's next command is never hit", {
    timeout: 60_000,
  }, async () => {
    await withClient({ connectionString: url() }, async (a) => {
      await a.query('BEGIN')
      const pidA = await pidOf(a)
      relay.hold = true
      try {
        const { pid, secret } = keyOf(a)
        const conn = await RawConnection.connect(pooler.host, pooler.port)
        conn.send(cancelRequestPacket(pid, secret))
        await until('the cancel at the relay', async () => relay.held === 1)
        // A round trip through the pooler: a close it sent before has arrived by now.
        await poolRow()
        assert.equal(
          conn.closed,
          false,
          'the pooler let the client go before PostgreSQL took the cancel',
        )
        relay.hold = false
        relay.release()
        await conn.drain(20_000)
        assert.equal(conn.closed, true)
        // PostgreSQL closed first: libpq may send the next command now.
        assert.equal(relay.taken, relay.forwarded)
        conn.destroy()
        assert.equal(await pidOf(a), pidA)
        await a.query('COMMIT')
      } finally {
        relay.hold = false
        relay.release()
      }
    })
  })

  test('cancels for A fired while A and B alternate on the one server never cancel B', {
    timeout: 90_000,
  }, async () => {
    // Each cancel reaches PostgreSQL a random 0-30 ms late (the relay), so
    // many arrive after A's short query ended: the moment the server would
    // pass to B. Bounded in count and time.
    relay.jitterMs = 30
    try {
      await withClient({ connectionString: url() }, async (a) => {
        await withClient({ connectionString: url() }, async (b) => {
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
            loop(a, 'a', 'SELECT pg_sleep(0.005)'),
            loop(b, 'b', 'SELECT pg_sleep(0.02)'),
          ]
          const until = Date.now() + 15_000
          for (let i = 0; i < 200 && Date.now() < until; i++) {
            await (await openCancel(pooler, pid, secret)).closed()
          }
          stop = true
          await Promise.all(loops)
          await relay.settled()
          assert.equal(
            cancelled.b,
            0,
            `B, never targeted, had ${cancelled.b} queries cancelled (A: ${cancelled.a})`,
          )
        })
      })
    } finally {
      relay.jitterMs = 0
    }
  })
})

/** A CancelRequest on its own connection, as libpq sends it; closed() waits for the pooler to hang up. */
async function openCancel(
  to: Pooler,
  pid: number,
  secret: number,
): Promise<{ closed: () => Promise<void> }> {
  const conn = await RawConnection.connect(to.host, to.port)
  conn.send(cancelRequestPacket(pid, secret))
  return {
    async closed() {
      await conn.drain(20_000)
      const open = !conn.closed
      conn.destroy()
      assert.ok(!open, 'the pooler kept the cancel connection open for 20 s')
    },
  }
}
