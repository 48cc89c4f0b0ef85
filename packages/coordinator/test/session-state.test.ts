import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { RawConnection } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Invariant 5: server-side session state never leaks to the next client. Every
// pooler here has one worker and pool_size 1, so consecutive clients are
// forced onto the same server connection (checked with pg_backend_pid()).
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: ['app'] })

function poolerIni(extra: Record<string, string | number>): string {
  return writeIni({
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: { default_pool_size: 1, ...extra },
  })
}

async function backendPid(c: pg.Client): Promise<number> {
  return Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)
}

/** What a session can leave behind on its server. */
async function leftovers(c: pg.Client) {
  const { rows } = await c.query(`
    SELECT current_setting('work_mem') AS work_mem,
           (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,
           (SELECT count(*)::int FROM pg_class WHERE relname = 'leak' AND relpersistence = 't') AS temp_tables,
           (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
           (SELECT count(*)::int FROM pg_listening_channels()) AS listening`)
  return rows[0]
}

const CLEAN = { work_mem: '4MB', prepared: 0, temp_tables: 0, advisory_locks: 0, listening: 0 }

/** Leaves every kind of session state on the client's server. */
async function dirty(c: pg.Client): Promise<void> {
  await c.query("SET work_mem = '7MB'")
  await c.query('CREATE TEMP TABLE leak (x int)')
  await c.query('PREPARE leak_stmt AS SELECT 1')
  await c.query('SELECT pg_advisory_lock(42)')
  await c.query('LISTEN leak_channel')
  assert.deepEqual(await leftovers(c), {
    work_mem: '7MB',
    prepared: 1,
    temp_tables: 1,
    advisory_locks: 1,
    listening: 1,
  })
}

describe('session mode: server_reset_query between clients', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(poolerIni({ pool_mode: 'session' }), { workers: 1 })
  })
  after(() => pooler.stop())

  test('SET, temp table, prepared statement, advisory lock and LISTEN are gone for the next client of the same server', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const url = pooler.url({ database: 'app' })
    const first = await withClient({ connectionString: url }, async (c) => {
      await dirty(c)
      return backendPid(c)
    })
    await withClient({ connectionString: url }, async (c) => {
      assert.equal(await backendPid(c), first, 'pool_size 1 must reuse the server')
      assert.deepEqual(await leftovers(c), CLEAN)
    })
  })

  test('a client that vanishes without Terminate leaves nothing behind either', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const url = pooler.url({ database: 'app' })
    const c = new pg.Client({ connectionString: url })
    c.on('error', () => {})
    await c.connect()
    await dirty(c)
    ;(c as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy()
    await withClient({ connectionString: url }, async (next) => {
      assert.deepEqual(await leftovers(next), CLEAN)
    })
  })
})

// Tracked parameters (PgBouncer's varcache): each client keeps its own
// application_name, TimeZone, DateStyle and client_encoding although all share
// one server, because the pooler SETs them on every link. Client A speaks the
// protocol by hand to send client_encoding as a startup parameter, as libpq
// does (PostgreSQL ignores it inside `options`); B uses node-postgres with
// `options`; C states no preference and must see the server's defaults.
describe('transaction mode: startup parameters follow each client across a shared server', () => {
  let pooler: Pooler
  let defaults: { app: string; tz: string; ds: string; ce: string }
  before(async () => {
    pooler = await startPooler(poolerIni({ pool_mode: 'transaction' }), { workers: 1 })
    const { rows } = await db.server.query<{ tz: string; ds: string; ce: string }>(
      "SELECT current_setting('TimeZone') AS tz, current_setting('DateStyle') AS ds, current_setting('client_encoding') AS ce",
    )
    defaults = { app: '', ...rows[0]! }
  })
  after(() => pooler.stop())

  const SETTINGS_SQL = `SELECT current_setting('application_name'), current_setting('TimeZone'),
    current_setting('DateStyle'), current_setting('client_encoding'), pg_backend_pid()`

  async function settings(c: pg.Client | RawConnection) {
    const row =
      c instanceof RawConnection
        ? (await c.query(SETTINGS_SQL))[0]!
        : (await c.query({ text: SETTINGS_SQL, rowMode: 'array' })).rows[0]
    const [app, tz, ds, ce, pid] = row.map(String)
    return { app, tz, ds, ce, pid: Number(pid) }
  }

  test('clients with different startup values alternate on one server and each always sees its own', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await RawConnection.connect(pooler.host, pooler.port)
    const welcome = await a.login({
      user: 'postgres',
      database: 'app',
      application_name: 'alpha',
      client_encoding: 'LATIN1',
      TimeZone: 'America/New_York',
      DateStyle: 'SQL, DMY',
    })
    const reported = new Map(
      welcome
        .filter((m) => m.type === 'S')
        .map((m) => {
          const [name, value] = m.body.toString('utf8').split('\0')
          return [name, value] as const
        }),
    )
    // The welcome already reports the client's own values, as PgBouncer's does.
    assert.equal(reported.get('client_encoding'), 'LATIN1')
    assert.equal(reported.get('TimeZone'), 'America/New_York')
    assert.equal(reported.get('application_name'), 'alpha')
    const b = pooler.client({
      database: 'app',
      application_name: 'beta',
      options: '-c TimeZone=Asia/Tokyo -c DateStyle=German',
    })
    const c = pooler.client({ database: 'app' })
    await b.connect()
    await c.connect()
    try {
      const wantA = { app: 'alpha', tz: 'America/New_York', ds: 'SQL, DMY', ce: 'LATIN1' }
      // B did not ask for an encoding: it keeps the server's, whatever A set.
      const wantB = { app: 'beta', tz: 'Asia/Tokyo', ds: 'German, DMY', ce: defaults.ce }
      const pids = new Set<number>()
      for (let round = 0; round < 4; round++) {
        for (const [client, want] of [
          [a, wantA],
          [b, wantB],
          [c, defaults],
        ] as const) {
          const { pid, ...got } = await settings(client)
          pids.add(pid)
          assert.deepEqual(got, want, `round ${round}`)
        }
      }
      assert.equal(pids.size, 1, 'the clients did not share one server')
      const pid = [...pids][0]

      // A's own SET outlives its transaction and survives B using the server.
      await a.query("SET TimeZone = 'Europe/Paris'")
      await a.query("SET application_name = 'alpha2'")
      assert.deepEqual(await settings(b), { ...wantB, pid })
      assert.deepEqual(await settings(c), { ...defaults, pid })
      assert.deepEqual(await settings(a), { ...wantA, tz: 'Europe/Paris', app: 'alpha2', pid })

      // SET LOCAL ends with its transaction; A's session value comes back.
      await a.query('BEGIN')
      await a.query("SET LOCAL TimeZone = 'Australia/Sydney'")
      assert.equal((await settings(a)).tz, 'Australia/Sydney')
      await a.query('COMMIT')
      assert.equal((await settings(b)).tz, 'Asia/Tokyo')
      assert.equal((await settings(a)).tz, 'Europe/Paris')
    } finally {
      a.destroy()
      await Promise.all([b.end(), c.end()])
    }
  })
})

// PgBouncer runs server_reset_query whenever a server is released in session
// mode, and in every mode with server_reset_query_always: in transaction mode
// that is after each transaction.
describe('transaction mode: server_reset_query_always', () => {
  let always: Pooler
  let never: Pooler
  before(async () => {
    always = await startPooler(
      poolerIni({ pool_mode: 'transaction', server_reset_query_always: 1 }),
      { workers: 1 },
    )
    never = await startPooler(poolerIni({ pool_mode: 'transaction' }), { workers: 1 })
  })
  after(async () => {
    await always.stop()
    await never.stop()
  })

  async function workMemSeenByNext(pooler: Pooler): Promise<string> {
    return withClient({ connectionString: pooler.url({ database: 'app' }) }, async (a) =>
      withClient({ connectionString: pooler.url({ database: 'app' }) }, async (b) => {
        await a.query("SET work_mem = '7MB'")
        const pidA = await backendPid(a)
        const { rows } = await b.query(
          "SELECT current_setting('work_mem') AS w, pg_backend_pid() AS p",
        )
        assert.equal(Number(rows[0].p), pidA, 'pool_size 1 must share the server')
        return rows[0].w as string
      }),
    )
  }

  test('without it, a SET in transaction mode is seen by the next client (PgBouncer does the same)', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    assert.equal(await workMemSeenByNext(never), '7MB')
  })

  test('with it, the next client of the server finds it reset', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    assert.equal(await workMemSeenByNext(always), '4MB')
  })

  test('with it, a client that disconnects leaves its server reset', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const url = always.url({ database: 'app' })
    await withClient({ connectionString: url }, (c) => c.query("SET work_mem = '7MB'"))
    await withClient({ connectionString: url }, async (c) => {
      assert.equal((await c.query('SHOW work_mem')).rows[0].work_mem, '4MB')
    })
  })
})
