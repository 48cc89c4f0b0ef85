import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import {
  errorFields,
  queryMessage,
  RawConnection,
  sendCancel,
  startupPacket,
} from './raw-protocol.ts'
import { type Pooler, startPooler, until, withClient, writeIni } from './support.ts'

// What clients put in their StartupMessage, and what the [databases] entry
// puts in the pooler's own StartupMessage to PostgreSQL.
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: ['app'] })

describe('ignore_startup_parameters', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', ignore_startup_parameters: 'extra_float_digits' },
    })
    pooler = await startPooler(ini, { workers: 1 })
  })
  after(() => pooler.stop())

  test('a listed parameter (extra_float_digits, as JDBC sends it) is accepted and the session works', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const conn = await RawConnection.connect(pooler.host, pooler.port)
    try {
      await conn.login({ user: 'postgres', database: 'app', extra_float_digits: '2' })
      assert.deepEqual(await conn.query('SELECT 6 * 7'), [['42']])
    } finally {
      conn.destroy()
    }
  })

  test("an unlisted parameter is refused with PgBouncer's error", {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const conn = await RawConnection.connect(pooler.host, pooler.port)
    try {
      conn.send(startupPacket({ user: 'postgres', database: 'app', search_path: 'elsewhere' }))
      const messages = await conn.drain(3000)
      assert.ok(conn.closed)
      const e = messages.find((m) => m.type === 'E')
      assert.ok(e !== undefined, 'no ErrorResponse')
      assert.deepEqual(errorFields(e.body), {
        severity: 'FATAL',
        code: '08P01',
        message: 'unsupported startup parameter: search_path',
      })
    } finally {
      conn.destroy()
    }
  })
})

describe('application_name and timezone from the [databases] entry', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: {
        app: `host=127.0.0.1 port=${db.server.port} dbname=app application_name=from_ini timezone=Pacific/Auckland`,
      },
      // One server, shared by every client in turn.
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 1 },
    })
    pooler = await startPooler(ini, { workers: 1 })
  })
  after(() => pooler.stop())

  async function seen(applicationName?: string) {
    return withClient(
      {
        connectionString: pooler.url({ database: 'app' }),
        ...(applicationName === undefined ? {} : { application_name: applicationName }),
      },
      async (c) => {
        const { rows } = await c.query(
          "SELECT current_setting('application_name') AS app, current_setting('TimeZone') AS tz, pg_backend_pid() AS pid",
        )
        return { app: rows[0].app as string, tz: rows[0].tz as string, pid: Number(rows[0].pid) }
      },
    )
  }

  test("a client that names no application gets the entry's application_name and timezone; one that does keeps its own", {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const plain = await seen()
    assert.deepEqual({ app: plain.app, tz: plain.tz }, { app: 'from_ini', tz: 'Pacific/Auckland' })
    const { rows } = await db.server.query(
      'SELECT application_name FROM pg_stat_activity WHERE pid = $1',
      [plain.pid],
    )
    assert.equal(rows[0]?.application_name, 'from_ini', 'the server itself does not carry it')

    const named = await seen('mine')
    assert.equal(named.pid, plain.pid)
    assert.deepEqual({ app: named.app, tz: named.tz }, { app: 'mine', tz: 'Pacific/Auckland' })

    // The shared server goes back to the entry's name for the next anonymous client.
    const again = await seen()
    assert.equal(again.pid, plain.pid)
    assert.equal(again.app, 'from_ini')
  })
})

describe('clients that send the same startup packet', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 2 },
    })
    pooler = await startPooler(ini, { workers: 1 })
  })
  after(() => pooler.stop())

  /** The welcome's BackendKeyData and ParameterStatus messages. */
  function welcome(messages: { type: string; body: Buffer }[]) {
    const k = messages.find((m) => m.type === 'K')
    assert.ok(k !== undefined, 'no BackendKeyData')
    const status = new Map<string, string>()
    for (const m of messages.filter((m) => m.type === 'S')) {
      const [name, value] = m.body.toString('utf8').split('\0')
      status.set(name!, value!)
    }
    return { pid: k.body.readInt32BE(0), secret: k.body.readInt32BE(4), status }
  }

  test('each gets its own key and the parameters its packet asks for; a cancel finds the right one', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const twin = {
      user: 'postgres',
      database: 'app',
      application_name: 'twin',
      DateStyle: 'SQL, DMY',
    }
    const conns: RawConnection[] = []
    try {
      const logins = []
      for (const params of [twin, twin, { ...twin, application_name: 'other' }, twin]) {
        const conn = await RawConnection.connect(pooler.host, pooler.port)
        conns.push(conn)
        logins.push(welcome(await conn.login(params)))
      }
      assert.equal(
        new Set(logins.map((w) => `${w.pid}/${w.secret}`)).size,
        4,
        'a key was given twice',
      )
      assert.deepEqual(
        logins.map((w) => [w.status.get('application_name'), w.status.get('DateStyle')]),
        [
          ['twin', 'SQL, DMY'],
          ['twin', 'SQL, DMY'],
          ['other', 'SQL, DMY'],
          ['twin', 'SQL, DMY'],
        ],
      )
      for (const [i, conn] of conns.entries()) {
        assert.deepEqual(
          await conn.query(
            "SELECT current_setting('application_name'), current_setting('DateStyle')",
          ),
          [[i === 2 ? 'other' : 'twin', 'SQL, DMY']],
        )
      }
      // The second client's key cancels the second client's query, and no other.
      const second = conns[1]!
      const sleep = 'SELECT pg_sleep(10) /* the second twin */'
      second.send(queryMessage(sleep))
      await until("the second client's query to run", async () => {
        const { rows } = await db.server.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
          [sleep],
        )
        return rows[0].n > 0
      })
      await sendCancel(pooler.host, pooler.port, logins[1]!.pid, logins[1]!.secret)
      const answer = await second.until('Z', 5000)
      const error = answer.find((m) => m.type === 'E')
      assert.ok(error !== undefined, 'the query was not cancelled')
      assert.equal(errorFields(error.body).code, '57014')
      assert.deepEqual(await conns[3]!.query('SELECT 1'), [['1']])
    } finally {
      for (const conn of conns) conn.destroy()
    }
  })
})
