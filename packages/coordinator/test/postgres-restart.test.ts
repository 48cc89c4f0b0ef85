import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// PostgreSQL restarting under the pooler. While it answers a login with 57P03
// ("the database system is shutting down", "... starting up"), and while it
// refuses connections in the gap between the old postmaster and the new one,
// clients that need a server wait for it, within query_wait_timeout, and the
// pooler tries again after 100 ms, 200, 400 ... up to server_login_retry. The
// first refusal since the database last took a login gets the same grace (5 s,
// at most server_login_retry); refusals that outlast it make the database down,
// and its clients get the error (at once from then on: operations-breaker.test.ts).
const db = usePostgres({ databases: ['app'] })

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 2 })
const TARGETS: {
  name: string
  start: Start
  skip: string | false
  /** How long after PostgreSQL is back every waiting client must have been served. */
  servedWithinMs: number
}[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false, servedWithinMs: 5000 },
  // PgBouncer 1.18 keeps the clients waiting too, but tries a failed login
  // again only after server_login_retry (15 s): it has no quicker retry.
  {
    name: 'PgBouncer',
    start: (spec) => startPgBouncer(spec),
    skip: NO_PGBOUNCER,
    servedWithinMs: 30_000,
  },
]

function spec(settings: Record<string, string | number> = {}): IniSpec {
  return {
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: {
      pool_mode: 'transaction',
      default_pool_size: 4,
      admin_users: 'postgres',
      ...settings,
    },
  }
}

type PgError = Error & { code?: string }

async function connected(pooler: Pooler, count: number): Promise<pg.Client[]> {
  const clients: pg.Client[] = []
  for (let i = 0; i < count; i++) {
    const c = pooler.client({ database: 'app' })
    c.on('error', () => {})
    await c.connect()
    // The pool has had servers: its welcome is known, as in any pool in use.
    await c.query('SELECT 1')
    clients.push(c)
  }
  return clients
}

/**
 * PostgreSQL starts a smart shutdown: new logins get 57P03 while `session`
 * stays open; the pooler's servers are ended, so the next query of every
 * client needs a new login. Returns the direct session that holds the
 * shutdown open.
 */
async function holdShutdown(): Promise<pg.Client> {
  const session = new pg.Client(db.server.url({ database: 'app' }))
  await session.connect()
  await db.server.beginShutdown()
  await session.query(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
  )
  // A login now is refused with 57P03.
  const probe = new pg.Client(db.server.url({ database: 'app' }))
  await assert.rejects(probe.connect(), (err: PgError) => err.code === '57P03')
  return session
}

/**
 * Until the pooler has seen its idle servers ended: a query sent before it
 * reads a server's FATAL would be linked to that dead server, and fail, with
 * either pooler.
 */
async function serversGone(pooler: Pooler): Promise<void> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const admin = pooler.client({ database: 'pgbouncer' })
    await admin.connect()
    const { rows } = await admin.query('SHOW SERVERS')
    await admin.end()
    if (rows.length === 0) return
    if (Date.now() > deadline) assert.fail(`the pooler still lists ${rows.length} servers`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: PostgreSQL shutting down and starting again`, {
    skip: target.skip,
    timeout: 90_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec())
    })
    after(() => pooler.stop())

    test('clients that need a server meanwhile wait for it, and none gets an error', {
      timeout: 75_000,
    }, async () => {
      const clients = await connected(pooler, 8)
      const session = await holdShutdown()
      await serversGone(pooler)
      const answers = clients.map((c, i) =>
        c.query(`SELECT ${i} AS n`).then(
          (r) => ({ ok: Number(r.rows[0].n) === i, at: Date.now(), error: '' }),
          (err: PgError) => ({ ok: false, at: Date.now(), error: `${err.code} ${err.message}` }),
        ),
      )
      // PostgreSQL refuses logins with "the database system is shutting down" for 1.5 s.
      await new Promise((r) => setTimeout(r, 1500))
      await session.end()
      await db.server.restart()
      const back = Date.now()
      const results = await Promise.all(answers)
      for (const [i, r] of results.entries()) {
        assert.equal(r.error, '', `client ${i} got an error`)
        assert.ok(r.ok, `client ${i}: a wrong answer`)
        assert.ok(
          r.at - back < target.servedWithinMs,
          `client ${i} served ${r.at - back} ms after PostgreSQL was back`,
        )
      }
      for (const c of clients) await c.end().catch(() => {})
    })
  })
}

describe('pgbouncer-cluster: pg_ctl restart -m fast under looping clients', {
  timeout: 90_000,
}, () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(spec({ default_pool_size: 20 }))
  })
  after(() => pooler.stop())

  // PgBouncer 1.18 has clients reconnecting meanwhile refused ("server login has
  // been failing, try again later (server_login_retry)") and serves again only
  // after server_login_retry: measured in the note, not tested here.
  test('only queries cut short by the shutdown fail, and every client is served again soon', {
    timeout: 75_000,
  }, async () => {
    const COUNT = 16
    let stop = false
    const errors: string[][] = []
    const lastOk: number[] = []
    const loops = Array.from({ length: COUNT }, async (_, i) => {
      errors[i] = []
      lastOk[i] = 0
      let client: pg.Client | null = null
      while (!stop) {
        try {
          if (client === null) {
            client = pooler.client({ database: 'app' })
            client.on('error', () => {})
            await client.connect()
          }
          await client.query('SELECT 1')
          lastOk[i] = Date.now()
        } catch (err) {
          errors[i]!.push((err as Error).message)
          const dead = client
          client = null
          await dead?.end().catch(() => {})
          await new Promise((r) => setTimeout(r, 20))
        }
      }
      await client?.end().catch(() => {})
    })
    try {
      await new Promise((r) => setTimeout(r, 1000))
      await db.server.bounce()
      const back = Date.now()
      // Every client served after PostgreSQL was back, within a generous bound.
      while (lastOk.some((t) => t < back) && Date.now() - back < 10_000)
        await new Promise((r) => setTimeout(r, 50))
      const late = lastOk.filter((t) => t < back).length
      assert.equal(late, 0, `${late} clients not served within 10 s of the restart`)
    } finally {
      stop = true
      await Promise.all(loops)
    }
    // A query running when its backend was told to stop fails; a login never does.
    const allowed =
      /terminating connection due to administrator command|server conn crashed|Connection terminated unexpectedly/
    for (const [i, list] of errors.entries()) {
      for (const message of list) assert.match(message, allowed, `client ${i}`)
      assert.ok(list.length <= 2, `client ${i} failed ${list.length} times: ${list.join('; ')}`)
    }
  })
})

// After the restart's errors, refusals count as a restart's gap only for a
// grace (here server_login_retry, 2 s): then the database is down, and its
// clients get the error. PgBouncer 1.18 has no such bound: its clients wait
// for query_wait_timeout.
describe('pgbouncer-cluster: PostgreSQL that shuts down and stays down', {
  timeout: 60_000,
}, () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(spec({ server_login_retry: 2 }))
  })
  after(async () => {
    await pooler.stop()
  })

  test('waiting clients get the connection error once the grace is over', {
    timeout: 45_000,
  }, async () => {
    const [client] = await connected(pooler, 1)
    const session = await holdShutdown()
    try {
      const answer = client!.query('SELECT 1').then(
        () => null,
        (err: PgError) => err,
      )
      await new Promise((r) => setTimeout(r, 500))
      await session.end()
      await db.server.halt()
      const down = Date.now()
      const err = await answer
      const after = Date.now() - down
      assert.ok(err !== null, 'the query ran with PostgreSQL down')
      assert.match(err.message, /cannot connect to server at .*: connection refused/)
      assert.ok(after < 15_000, `the error came ${after} ms after PostgreSQL stopped`)
      // A new client now gets the error at once, as from any database that is down.
      const started = Date.now()
      const late = pooler.client({ database: 'app' })
      late.on('error', () => {})
      await assert.rejects(
        late.connect().then(() => late.query('SELECT 1')),
        /connection refused/,
      )
      assert.ok(Date.now() - started < 2000)
      await late.end().catch(() => {})
    } finally {
      await client!.end().catch(() => {})
      await db.server.restart()
    }
  })
})

// PgBouncer's test_server_login_retry: PostgreSQL is down when a client first
// needs it and comes back a moment later. PgBouncer keeps the client waiting
// and tries again after server_login_retry; the pooler keeps it waiting too,
// within the grace a restart gets (here server_login_retry, 3 s), trying again
// sooner, and serves it once PostgreSQL is back.
for (const target of TARGETS) {
  describe(`${target.name}: PostgreSQL down at a client's first query, back 1 s later`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    test('the client waits and is served', { timeout: 45_000 }, async () => {
      await db.server.halt()
      let pooler: Pooler | null = null
      try {
        pooler = await target.start(spec({ server_login_retry: 3, query_timeout: 10 }))
        const client = pooler.client({ database: 'app' })
        client.on('error', () => {})
        const served = client
          .connect()
          .then(() => client.query('SELECT 1 AS one'))
          .then(
            (r) => r.rows[0].one as number,
            (err: PgError) => err,
          )
        await new Promise((r) => setTimeout(r, 1000))
        await db.server.restart()
        const answer = await served
        assert.equal(answer, 1, `the client got ${String(answer)}`)
        await client.end().catch(() => {})
      } finally {
        await pooler?.stop()
        // Whatever failed above, the next test needs its server.
        await db.server.restart().catch(() => {})
      }
    })
  })
}
