import assert from 'node:assert/strict'
import net from 'node:net'
import { before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// Shutdown as PgBouncer 1.23+ does it: SIGTERM waits for the clients to leave
// (SHUTDOWN WAIT_FOR_CLIENTS), SIGINT for the servers to be released
// (SHUTDOWN WAIT_FOR_SERVERS), SIGQUIT and a second signal stop at once
// (SHUTDOWN). PgBouncer 1.18 shares SIGINT and SHUTDOWN; its SIGTERM stopped
// at once, so that one is not compared.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function connectRaw(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    socket.on('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.on('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message))
  })
}

async function connected(pooler: Pooler, database = 'app'): Promise<pg.Client> {
  const c = pooler.client({ database })
  c.on('error', () => {})
  await c.connect()
  return c
}

/** Still running after a while: what waiting for clients or servers looks like from outside. */
async function assertRunning(pooler: Pooler, what: string): Promise<void> {
  await sleep(400)
  assert.equal(pooler.child.exitCode, null, what)
}

describe('shutdown', { timeout: 120_000 }, () => {
  const db = usePostgres({ databases: ['app'] })

  before(async () => {
    const c = new pg.Client(db.server.url({ database: 'app' }))
    await c.connect()
    await c.query('CREATE TABLE shutdown_log (signal text PRIMARY KEY)')
    await c.end()
  })

  const spec = (mode: string, extra: Record<string, string | number> = {}): IniSpec => ({
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: { pool_mode: mode, admin_users: 'postgres', ...extra },
  })

  async function logged(tag: string): Promise<number> {
    const check = new pg.Client(db.server.url({ database: 'app' }))
    await check.connect()
    const { rows } = await check.query(
      'SELECT count(*)::int AS n FROM shutdown_log WHERE signal = $1',
      [tag],
    )
    await check.end()
    return rows[0].n
  }

  for (const mode of ['transaction', 'session'] as const) {
    test(`SIGTERM in ${mode} mode: clients keep working until they leave, new ones are refused, then exit 0`, async () => {
      const pooler = await startPooler(writeIni(spec(mode)), { workers: 2 })
      const a = await connected(pooler)
      const b = await connected(pooler)
      await b.query('BEGIN')
      pooler.child.kill('SIGTERM')
      await assertRunning(pooler, 'exited with clients connected')
      assert.equal(await connectRaw(pooler.port), 'ECONNREFUSED')
      // No time limit: both clients go on with whole transactions.
      for (let i = 0; i < 3; i++) {
        await a.query('BEGIN')
        assert.equal((await a.query('SELECT 6 * 7 AS n')).rows[0].n, 42)
        await a.query('COMMIT')
      }
      await b.query('INSERT INTO shutdown_log VALUES ($1)', [`SIGTERM ${mode}`])
      await b.query('COMMIT')
      await a.end()
      await assertRunning(pooler, 'exited with a client still connected')
      assert.equal((await b.query('SELECT 1 AS one')).rows[0].one, 1)
      await b.end()
      assert.equal(await pooler.exited, 0)
      assert.equal(await logged(`SIGTERM ${mode}`), 1)
      assert.match(
        pooler.output(),
        /got SIGTERM, shutting down, waiting for all clients disconnect/,
      )
      assert.match(pooler.output(), /client connections dropped, exiting/)
    })
  }

  // The body runs against pgbouncer-cluster and PgBouncer 1.18, which agree on SIGINT.
  async function sigintInTransactionMode(
    pooler: Pooler,
    tag: string,
    listening: 'ECONNREFUSED' | 'connected',
  ): Promise<void> {
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    await inFlight.query('INSERT INTO shutdown_log VALUES ($1)', [tag])
    // An idle client is not waited for.
    const idle = await connected(pooler)
    await idle.query('SELECT 1')
    pooler.child.kill('SIGINT')
    await assertRunning(pooler, 'exited with a transaction in flight')
    assert.equal(await connectRaw(pooler.port), listening)
    await inFlight.query('COMMIT')
    assert.equal(await pooler.exited, 0)
    assert.equal(await logged(tag), 1, 'the transaction in flight was lost')
    await assert.rejects(idle.query('SELECT 1'))
    await inFlight.end().catch(() => {})
    await idle.end().catch(() => {})
  }

  test('SIGINT in transaction mode: the open transaction commits, new connections are refused, exit 0', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
    await sigintInTransactionMode(pooler, 'SIGINT transaction', 'ECONNREFUSED')
    assert.match(
      pooler.output(),
      /got SIGINT, shutting down, waiting for all servers connections to be released/,
    )
    assert.match(pooler.output(), /server connections dropped, exiting/)
  })

  // 1.18 kept its listening socket open during a SIGINT shutdown (new clients wait); 1.23+ closes it.
  test('SIGINT in transaction mode, PgBouncer 1.18: the same, but its listener stays open', {
    skip: NO_PGBOUNCER,
  }, async () => {
    const pooler = await startPgBouncer(spec('transaction'))
    await sigintInTransactionMode(pooler, 'SIGINT reference', 'connected')
  })

  test('SIGINT: a client that wants a server after the signal gets none and is told why', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 1 })
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    const late = await connected(pooler)
    pooler.child.kill('SIGINT')
    await assertRunning(pooler, 'exited with a transaction in flight')
    await assert.rejects(late.query('SELECT 1'), /pooler is shutting down/)
    await inFlight.query('COMMIT')
    assert.equal(await pooler.exited, 0)
  })

  test('SIGINT in session mode: the session keeps its server until it leaves, then exit 0', async () => {
    const pooler = await startPooler(writeIni(spec('session')), { workers: 2 })
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    await inFlight.query("INSERT INTO shutdown_log VALUES ('SIGINT session')")
    pooler.child.kill('SIGINT')
    await assertRunning(pooler, 'exited with a transaction in flight')
    await inFlight.query('COMMIT')
    // As PgBouncer 1.23+: a session's server is released when its client leaves.
    await assertRunning(pooler, 'exited while a session held its server')
    assert.equal((await inFlight.query('SELECT 1 AS one')).rows[0].one, 1)
    await inFlight.end()
    assert.equal(await pooler.exited, 0)
    assert.equal(await logged('SIGINT session'), 1)
  })

  for (const [first, second] of [
    ['SIGTERM', 'SIGTERM'],
    ['SIGINT', 'SIGINT'],
    ['SIGTERM', 'SIGQUIT'],
  ] as const) {
    test(`${first} then ${second} does not wait: the open transaction is rolled back, exit 0`, async () => {
      const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
      const tag = `${first} ${second}`
      const inFlight = await connected(pooler)
      await inFlight.query('BEGIN')
      await inFlight.query('INSERT INTO shutdown_log VALUES ($1)', [tag])
      pooler.child.kill(first)
      await assertRunning(pooler, 'exited with a transaction in flight')
      pooler.child.kill(second)
      assert.equal(await pooler.exited, 0)
      await assert.rejects(inFlight.query('COMMIT'))
      assert.equal(await logged(tag), 0)
      assert.match(pooler.output(), /fast exit/)
    })
  }

  test('SIGQUIT stops at once: the open transaction is rolled back, exit 0', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    await inFlight.query("INSERT INTO shutdown_log VALUES ('SIGQUIT')")
    pooler.child.kill('SIGQUIT')
    assert.equal(await pooler.exited, 0)
    await assert.rejects(inFlight.query('COMMIT'))
    assert.equal(await logged('SIGQUIT'), 0)
    assert.match(pooler.output(), /got SIGQUIT, fast exit/)
  })

  test('console SHUTDOWN WAIT_FOR_CLIENTS: answered, then exit once the last client (the console too) left', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
    const app = await connected(pooler)
    const admin = await connected(pooler, 'pgbouncer')
    const result = await admin.query('SHUTDOWN WAIT_FOR_CLIENTS')
    assert.equal(result.command, 'SHUTDOWN')
    await assertRunning(pooler, 'exited with clients connected')
    assert.equal(await connectRaw(pooler.port), 'ECONNREFUSED')
    assert.equal((await app.query('SELECT 2 AS two')).rows[0].two, 2)
    await app.end()
    await assertRunning(pooler, 'exited with the console connected')
    await admin.end()
    assert.equal(await pooler.exited, 0)
    assert.match(pooler.output(), /SHUTDOWN WAIT_FOR_CLIENTS command issued/)
  })

  test('console SHUTDOWN WAIT_FOR_SERVERS: answered, the open transaction commits, then exit 0', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    await inFlight.query("INSERT INTO shutdown_log VALUES ('WAIT_FOR_SERVERS')")
    const admin = await connected(pooler, 'pgbouncer')
    assert.equal((await admin.query('shutdown wait_for_servers;')).command, 'SHUTDOWN')
    await assertRunning(pooler, 'exited with a transaction in flight')
    assert.equal(await connectRaw(pooler.port), 'ECONNREFUSED')
    await assert.rejects(admin.query('RESUME'), /pooler is shutting down/)
    // SHOW STATE counts this shutdown as a pause, as PgBouncer 1.23+ does.
    const state = await admin.query('SHOW STATE')
    assert.deepEqual(
      state.rows.map((r) => [r.key, r.value]),
      [
        ['active', 'no'],
        ['paused', 'yes'],
        ['suspended', 'no'],
      ],
    )
    await inFlight.query('COMMIT')
    assert.equal(await pooler.exited, 0)
    assert.equal(await logged('WAIT_FOR_SERVERS'), 1)
    assert.match(pooler.output(), /SHUTDOWN WAIT_FOR_SERVERS command issued/)
  })

  test('console SHUTDOWN with another argument is a syntax error and stops nothing', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 1 })
    const admin = await connected(pooler, 'pgbouncer')
    await assert.rejects(
      admin.query('SHUTDOWN WAIT_FOR_NOBODY'),
      /invalid command 'SHUTDOWN WAIT_FOR_NOBODY', use SHOW HELP;/,
    )
    assert.equal((await connected(pooler)).constructor, pg.Client)
    await admin.end()
    await pooler.stop()
  })

  // The body runs against pgbouncer-cluster and PgBouncer 1.18: SHUTDOWN stops at once.
  async function consoleShutdown(pooler: Pooler, tag: string): Promise<void> {
    const inFlight = await connected(pooler)
    await inFlight.query('BEGIN')
    await inFlight.query('INSERT INTO shutdown_log VALUES ($1)', [tag])
    const admin = await connected(pooler, 'pgbouncer')
    // No answer: the connection ends with the process.
    await assert.rejects(admin.query('SHUTDOWN'))
    assert.equal(await pooler.exited, 0)
    await assert.rejects(inFlight.query('COMMIT'))
    assert.equal(await logged(tag), 0)
  }

  test('console SHUTDOWN stops at once, exit 0', async () => {
    const pooler = await startPooler(writeIni(spec('transaction')), { workers: 2 })
    await consoleShutdown(pooler, 'SHUTDOWN')
    assert.match(pooler.output(), /SHUTDOWN command issued/)
  })

  test('console SHUTDOWN, PgBouncer 1.18: the same', { skip: NO_PGBOUNCER }, async () => {
    await consoleShutdown(await startPgBouncer(spec('transaction')), 'SHUTDOWN reference')
  })
})
