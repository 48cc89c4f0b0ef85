import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type ErrorFields, errorFields, queryMessage, RawConnection } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// Clients that stop in the middle of a message. A message whose header has not
// all arrived, or a small one whose body has not, is held back and takes no
// server, so clients stopped there cannot starve a pool; a message that does
// reach a server counts as a query from its first byte for query_timeout; and
// a client silent in the middle of a message is closed after
// client_login_timeout (PgBouncer has no such bound after the login).
const db = usePostgres({ databases: ['app'] })

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 2 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(settings: Record<string, string | number> = {}): IniSpec {
  return {
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: { pool_mode: 'transaction', default_pool_size: 4, ...settings },
  }
}

async function loggedIn(pooler: Pooler): Promise<RawConnection> {
  const conn = await RawConnection.connect(pooler.host, pooler.port)
  await conn.login({ user: 'postgres', database: 'app' })
  return conn
}

/** The FATAL the pooler closed `conn` with, and when it closed; bounded. */
async function closedWith(conn: RawConnection, ms: number): Promise<ErrorFields | null> {
  const seen = await conn.drain(ms)
  assert.ok(conn.closed, `still open after ${ms} ms`)
  const err = seen.find((m) => m.type === 'E')
  return err === undefined ? null : errorFields(err.body)
}

const QUERY = queryMessage(`SELECT 'the rest arrived' /* ${'x'.repeat(60)} */`)
const STOPS = [
  { name: '3 bytes of its header', at: 3 },
  { name: '10 of its 100 bytes', at: 10 },
]

for (const target of TARGETS) {
  describe(`${target.name}: clients stopped halfway through a message`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec())
    })
    after(() => pooler.stop())

    for (const stop of STOPS) {
      // PgBouncer 1.18 links a server once a packet's header is in and forwards
      // the body as it comes, so four clients stopped 10 bytes into a Query keep
      // the four servers, and the fifth client is not served (measured: not
      // within 20 s, with the default settings).
      const skip = target.name === 'PgBouncer' && stop.at >= 5 && 'PgBouncer 1.18 holds the servers'
      test(`four clients stopped after ${stop.name} leave a pool of four to the fifth`, {
        skip,
        timeout: 30_000,
      }, async () => {
        const stopped: RawConnection[] = []
        try {
          for (let i = 0; i < 4; i++) {
            const conn = await loggedIn(pooler)
            conn.send(QUERY.subarray(0, stop.at))
            stopped.push(conn)
          }
          await new Promise((r) => setTimeout(r, 300))
          const fifth = pooler.client({ database: 'app' })
          try {
            await fifth.connect()
            const started = Date.now()
            const { rows } = await fifth.query('SELECT 5 AS n')
            assert.equal(rows[0].n, 5)
            // Generous: a server that frees itself only on some timeout would take far longer.
            assert.ok(Date.now() - started < 5000, `served after ${Date.now() - started} ms`)
          } finally {
            await fifth.end().catch(() => {})
          }
          // The four are still there, and their messages were kept whole: the rest completes them.
          for (const conn of stopped) {
            assert.equal(conn.closed, false)
            conn.send(QUERY.subarray(stop.at))
          }
          for (const conn of stopped) {
            const answer = await conn.until('Z', 10_000)
            const row = answer.find((m) => m.type === 'D')
            assert.ok(row, `no row: ${answer.map((m) => m.type).join('')}`)
            assert.match(row.body.toString('latin1'), /the rest arrived/)
          }
        } finally {
          for (const conn of stopped) conn.destroy()
        }
      })
    }
  })

  describe(`${target.name}: query_timeout counts a half-sent query from its first byte`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec({ query_timeout: 2 }))
    })
    after(() => pooler.stop())

    test('a client trickling a query inside a transaction is stopped at query_timeout', {
      timeout: 30_000,
    }, async () => {
      const conn = await loggedIn(pooler)
      try {
        // BEGIN links a server for the whole transaction.
        await conn.query('BEGIN')
        const started = Date.now()
        conn.send(QUERY.subarray(0, 10))
        // A byte every 300 ms: each read is news, but the query began with its first byte.
        for (let at = 10; at < QUERY.length - 1 && !conn.closed; at++) {
          await new Promise((r) => setTimeout(r, 300))
          if (Date.now() - started > 8000) break
          conn.send(QUERY.subarray(at, at + 1))
        }
        const err = await closedWith(conn, 5000)
        const after = Date.now() - started
        assert.equal(err?.message, 'query timeout')
        assert.ok(after >= 1800, `stopped after ${after} ms, before query_timeout`)
        assert.ok(after < 7000, `stopped after ${after} ms: the trickle kept it alive`)
      } finally {
        conn.destroy()
      }
    })
  })
}

// PgBouncer has no bound on a client that stops in the middle of a message
// once it has logged in: with a server linked, the server is held for ever.
describe('pgbouncer-cluster: a client silent in the middle of a message', {
  timeout: 60_000,
}, () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(spec({ client_login_timeout: 2, default_pool_size: 1 }))
  })
  after(() => pooler.stop())

  test('is closed after client_login_timeout, with the server it held', {
    timeout: 30_000,
  }, async () => {
    // 200 kB: too large to hold back, so it goes to a server as it comes.
    const big = queryMessage(`SELECT 1 /* ${'y'.repeat(200_000)} */`)
    const conn = await loggedIn(pooler)
    const started = Date.now()
    try {
      conn.send(big.subarray(0, 100_000))
      const err = await closedWith(conn, 10_000)
      const after = Date.now() - started
      assert.deepEqual(err, {
        severity: 'FATAL',
        code: '08P01',
        message: 'incomplete message from client',
      })
      assert.ok(after >= 1800, `closed after ${after} ms`)
    } finally {
      conn.destroy()
    }
    // The pool of one serves again, on a server that never saw half a query.
    const next = pooler.client({ database: 'app' })
    try {
      await next.connect()
      assert.equal((await next.query('SELECT 2 AS n')).rows[0].n, 2)
    } finally {
      await next.end().catch(() => {})
    }
  })
})
