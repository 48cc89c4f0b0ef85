import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { errorFields, extended, RawConnection } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import {
  type IniSpec,
  metricsBase,
  type Pooler,
  scrapeMetrics,
  startPooler,
  until,
  writeIni,
} from './support.ts'

// Issue 29, session state that cannot follow a client in transaction mode
// (advisory locks, temp tables, cursors WITH HOLD, LISTEN, LOAD, SQL PREPARE):
// session_state_policy decides, and every pool counts what its clients leave
// (SHOW SESSION_STATE, /metrics). Every pooler here has one worker and
// pool_size 1, so two clients share one server.

const db = usePostgres({ databases: ['app'] })
const PSQL = findPgTool('psql')
const PGBENCH = findPgTool('pgbench')
const run = promisify(execFile)
const TEST_TIMEOUT = 30_000

function spec(pgbouncer: Record<string, string | number>, extra: Partial<IniSpec> = {}): IniSpec {
  return {
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: {
      pool_mode: 'transaction',
      default_pool_size: 1,
      admin_users: 'admin',
      ...pgbouncer,
    },
    userlist: { postgres: '', admin: '' },
    ...extra,
  }
}

async function start(s: IniSpec, metrics = false): Promise<Pooler> {
  return startPooler(writeIni(s), {
    workers: 1,
    args: metrics ? ['--metrics', '127.0.0.1:0'] : [],
  })
}

async function connect(pooler: Pooler, user = 'postgres', database = 'app'): Promise<pg.Client> {
  const c = pooler.client({ database, user })
  c.on('error', () => {})
  await c.connect()
  return c
}

const ADVISORY_HELD =
  "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
const backendPid = async (c: pg.Client) =>
  Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)

/** SHOW SESSION_STATE as kind → count for one pool. */
async function sessionState(pooler: Pooler, user = 'postgres'): Promise<Record<string, number>> {
  const admin = await connect(pooler, 'admin', 'pgbouncer')
  try {
    const { rows, fields } = await admin.query('SHOW SESSION_STATE')
    assert.deepEqual(
      fields.map((f) => f.name),
      ['database', 'user', 'kind', 'count'],
    )
    const out: Record<string, number> = {}
    for (const r of rows) if (r.database === 'app' && r.user === user) out[r.kind] = Number(r.count)
    return out
  } finally {
    await admin.end()
  }
}

describe('session_state_policy = allow (the default): the state leaks as in PgBouncer', () => {
  const targets = [
    { name: 'pgbouncer-cluster', start: () => start(spec({})), skip: false as string | false },
    { name: 'PgBouncer 1.18', start: () => startPgBouncer(spec({})), skip: NO_PGBOUNCER },
  ]
  for (const target of targets) {
    test(`an advisory lock taken by client A is held by client B's server (${target.name})`, {
      skip: target.skip,
      timeout: TEST_TIMEOUT,
    }, async () => {
      const pooler = await target.start()
      try {
        const a = await connect(pooler)
        const pidA = await backendPid(a)
        await a.query('SELECT pg_advisory_lock(4242)')
        const b = await connect(pooler)
        assert.equal(await backendPid(b), pidA, 'pool_size 1: the same server')
        assert.equal((await b.query(ADVISORY_HELD)).rows[0].n, 1)
        await Promise.all([a.end(), b.end()])
      } finally {
        await pooler.stop()
      }
    })
  }
})

describe('session_state_policy = error', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await start(spec({ session_state_policy: 'error' }))
  })
  after(() => pooler.stop())

  test('refuses with 0A000 naming the statement and the setting; nothing is left for the next client', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler)
    for (const [sql, name] of [
      ['SELECT pg_advisory_lock(4242)', 'pg_advisory_lock'],
      ['CREATE TEMP TABLE leak (x int)', 'CREATE TEMP TABLE'],
      ["LOAD 'auto_explain'", 'LOAD'],
      ['PREPARE leak AS SELECT 1', 'PREPARE'],
    ] as const) {
      await assert.rejects(a.query(sql), (err: pg.DatabaseError) => {
        assert.equal(err.code, '0A000', sql)
        assert.match(err.message, /session_state_policy = error/)
        assert.ok(err.message.startsWith(name), err.message)
        assert.match(err.message, /transaction mode/)
        return true
      })
    }
    // Through the extended protocol (a Parse), with a parameter the Bind still fits.
    await assert.rejects(a.query('SELECT pg_try_advisory_lock($1)', [7]), { code: '0A000' })
    // Transaction-scoped state passes, and the client goes on.
    assert.equal((await a.query('SELECT pg_try_advisory_xact_lock(1) AS ok')).rows[0].ok, true)
    await a.query("SET statement_timeout = '5s'")
    const b = await connect(pooler)
    assert.equal((await b.query(ADVISORY_HELD)).rows[0].n, 0)
    assert.equal(
      (await b.query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'leak'")).rows[0].n,
      0,
    )
    await Promise.all([a.end(), b.end()])
  })

  test('inside a transaction it aborts the transaction, as a failed statement does', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler)
    await a.query('BEGIN')
    await a.query('SELECT 1')
    await assert.rejects(a.query('SELECT pg_advisory_lock(1)'), { code: '0A000' })
    await assert.rejects(a.query('SELECT 1'), { code: '25P02' })
    await a.query('ROLLBACK')
    assert.equal((await a.query('SELECT 2 AS n')).rows[0].n, 2)
    await a.end()
  })

  test('several statements in one Query: refused whole, with the error in order', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler)
    await assert.rejects(a.query("SET application_name = 'x'; LISTEN chan; SELECT 1"), {
      code: '0A000',
    })
    assert.equal(
      (await a.query('SELECT count(*)::int AS n FROM pg_listening_channels()')).rows[0].n,
      0,
    )
    await a.end()
  })

  test('a pipeline keeps its order: what comes before runs, the rest is skipped to Sync', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const raw = await RawConnection.connect(pooler.host, pooler.port)
    try {
      await raw.login({ user: 'postgres', database: 'app' })
      raw.send(
        Buffer.concat([
          extended.parse('', 'SELECT 1'),
          extended.bind(''),
          extended.execute(),
          extended.parse('', 'SELECT pg_advisory_lock(99)'),
          extended.bind(''),
          extended.execute(),
          extended.parse('', 'SELECT 3'),
          extended.bind(''),
          extended.execute(),
          extended.sync(),
        ]),
      )
      const seen = await raw.until('Z', 10_000)
      assert.equal(seen.map((m) => m.type).join(''), '12DC12EZ')
      const err = errorFields(seen.find((m) => m.type === 'E')!.body)
      assert.equal(err.code, '0A000')
      assert.match(err.message, /^pg_advisory_lock .*session_state_policy = error/)
      // The connection goes on.
      assert.deepEqual(await raw.query('SELECT 4'), [['4']])
    } finally {
      raw.destroy()
    }
  })

  test('psql: the refusal reaches the terminal, the next command runs', {
    skip: skipWithout('psql', PSQL),
    timeout: TEST_TIMEOUT,
  }, async () => {
    const args = ['-X', '-h', pooler.host, '-p', String(pooler.port), '-U', 'postgres', '-d', 'app']
    const out = await run(
      PSQL!,
      [...args, '-c', 'SELECT pg_advisory_lock(5)', '-c', 'SELECT 41 + 1'],
      {
        encoding: 'utf8',
      },
    ).catch((e: { stdout: string; stderr: string }) => e)
    assert.match(
      out.stderr,
      /pg_advisory_lock leaves session state .* session_state_policy = error/,
    )
    assert.match(out.stdout, /42/)
  })
})

describe('session_state_policy = pin', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await start(spec({ session_state_policy: 'pin' }), true)
  })
  after(() => pooler.stop())

  test('the client keeps its server until it leaves; the next client gets it reset', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler)
    await a.query('SELECT pg_advisory_lock(4242)')
    const pidA = await backendPid(a)
    const admin = await connect(pooler, 'admin', 'pgbouncer')
    const { rows } = await admin.query('SHOW CLIENTS')
    assert.deepEqual(
      rows.filter((r) => r.database === 'app').map((r) => r.session_state_pin),
      ['advisory_lock'],
    )
    const samples = await scrapeMetrics(metricsBase(pooler))
    assert.equal(
      samples.get('pgbouncer_cluster_session_state_pinned_clients{database="app",user="postgres"}'),
      1,
    )
    // B waits: the only server stays with A between A's transactions.
    const b = await connect(pooler)
    let bDone = false
    const bQuery = b.query(ADVISORY_HELD).then((r) => {
      bDone = true
      return r
    })
    await a.query('SELECT 1')
    assert.equal(await backendPid(a), pidA)
    assert.equal(bDone, false, 'B got a server while A was pinned to the only one')
    await a.end()
    assert.equal((await bQuery).rows[0].n, 0, 'the lock went with the reset')
    assert.equal(await backendPid(b), pidA)
    await until(
      'the pin to go with its client',
      async () => {
        const { rows } = await admin.query('SHOW CLIENTS')
        return rows.filter((r) => r.database === 'app').every((r) => r.session_state_pin === '')
      },
      5000,
    )
    await Promise.all([b.end(), admin.end()])
  })
})

describe('session_state_policy = warn', () => {
  test('the statement runs and the log says so once per client', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const pooler = await start(spec({ session_state_policy: 'warn' }))
    try {
      const a = await connect(pooler)
      await a.query('SELECT pg_advisory_lock(1)')
      await a.query('SELECT pg_advisory_lock(2)')
      assert.equal((await a.query(ADVISORY_HELD)).rows[0].n, 2)
      await a.end()
      await until(
        'the warning',
        async () => /session_state_policy = warn/.test(pooler.output()),
        5000,
      )
      const lines = pooler
        .output()
        .split('\n')
        .filter((l) => l.includes('session_state_policy = warn'))
      assert.equal(lines.length, 1, lines.join('\n'))
      assert.match(
        lines[0]!,
        /pg_advisory_lock: session state that cannot follow the client in transaction mode/,
      )
    } finally {
      await pooler.stop()
    }
  })
})

describe('session_state_policy where it is set', () => {
  test('a database entry and [users] override the global value; console SET changes it', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const pooler = await start(
      spec(
        {},
        {
          databases: {
            app: `host=127.0.0.1 port=${db.server.port} dbname=app session_state_policy=error`,
            other: `host=127.0.0.1 port=${db.server.port} dbname=app`,
            forced: `host=127.0.0.1 port=${db.server.port} dbname=app user=postgres session_state_policy=error`,
          },
          users: { admin: 'session_state_policy=allow' },
        },
      ),
    )
    try {
      const a = await connect(pooler)
      await assert.rejects(a.query('SELECT pg_advisory_lock(1)'), { code: '0A000' })
      await a.end()
      // The user's wins over the database's.
      const u = await connect(pooler, 'admin', 'forced')
      await u.query('SELECT pg_advisory_lock(1)')
      await u.end()
      // Unset on the entry: the global value, which the console changes.
      const o = await connect(pooler, 'postgres', 'other')
      await o.query('SELECT pg_advisory_lock(2)')
      const admin = await connect(pooler, 'admin', 'pgbouncer')
      await admin.query('SET session_state_policy = error')
      const { rows } = await admin.query('SHOW CONFIG')
      assert.equal(rows.find((r) => r.key === 'session_state_policy')?.value, 'error')
      await assert.rejects(admin.query('SET session_state_policy = maybe'))
      await assert.rejects(o.query('SELECT pg_advisory_lock(3)'), { code: '0A000' })
      await Promise.all([o.end(), admin.end()])
    } finally {
      await pooler.stop()
    }
  })

  test('session mode: no policy applies, the state is counted', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const pooler = await start(spec({ pool_mode: 'session', session_state_policy: 'error' }))
    try {
      const a = await connect(pooler)
      await a.query('SELECT pg_advisory_lock(1)')
      await a.query('CREATE TEMP TABLE t (x int)')
      await a.query('DECLARE c CURSOR WITH HOLD FOR SELECT 1')
      await a.query('LISTEN chan')
      await a.end()
      assert.deepEqual(await sessionState(pooler), {
        set: 0,
        prepare: 0,
        advisory_lock: 1,
        temp_table: 1,
        cursor_with_hold: 1,
        listen: 1,
        load: 0,
      })
    } finally {
      await pooler.stop()
    }
  })
})

describe('SHOW SESSION_STATE and /metrics: what an application leaves', () => {
  test('pgbench -i, then a Django-like session: counts per kind, in the console and /metrics', {
    timeout: 120_000,
  }, async (t) => {
    const pooler = await start(spec({}), true)
    try {
      if (PGBENCH !== null) {
        await run(PGBENCH, [
          '-i',
          '-s',
          '1',
          '-h',
          pooler.host,
          '-p',
          String(pooler.port),
          '-U',
          'postgres',
          'app',
        ])
      }
      const c = await connect(pooler)
      await c.query('SET search_path = public')
      await c.query("SET TIME ZONE 'UTC'")
      await c.query("SELECT set_config('application_name', 'django', false)")
      await c.query('SELECT pg_advisory_lock(1)')
      await c.query('PREPARE q (int) AS SELECT $1')
      await c.query('EXECUTE q(1)')
      await c.query('DEALLOCATE q')
      await c.query('SELECT pg_advisory_unlock(1)')
      await c.query("SET LOCAL work_mem = '8MB'")
      await c.end()
      const counts = await sessionState(pooler)
      t.diagnostic(`SHOW SESSION_STATE for app/postgres: ${JSON.stringify(counts)}`)
      assert.equal(counts.set, 3)
      assert.equal(counts.prepare, 3)
      assert.equal(counts.advisory_lock, 1)
      assert.equal(counts.cursor_with_hold, 0)
      const samples = await scrapeMetrics(metricsBase(pooler))
      assert.equal(
        samples.get(
          'pgbouncer_cluster_session_state_total{database="app",user="postgres",kind="set"}',
        ),
        3,
      )
      assert.equal(
        samples.get(
          'pgbouncer_cluster_session_state_total{database="app",user="postgres",kind="advisory_lock"}',
        ),
        1,
      )
    } finally {
      await pooler.stop()
    }
  })
})
