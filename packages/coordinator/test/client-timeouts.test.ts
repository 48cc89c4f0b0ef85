import assert from 'node:assert/strict'
import net from 'node:net'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { sendCancel } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// PgBouncer's client-side timeouts (janitor.ts): query_timeout,
// idle_transaction_timeout, transaction_timeout, client_idle_timeout, their
// [users] overrides, query_wait_notify and the per-database and per-user
// query_wait_timeout. Where PgBouncer 1.18 has the setting, the same test runs
// against /usr/sbin/pgbouncer and expects the same outcome. Lower bounds on
// timing only: under load things are late, never early.

const DATABASES = [
  'qt',
  'itx',
  'xact',
  'cidle',
  'users',
  'qwait',
  'notify',
  'reserve',
  'cancelwait',
] as const
type Db = (typeof DATABASES)[number]
const TEST_TIMEOUT = 30_000
const db = usePostgres({ databases: [...DATABASES] })

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 1 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(
  database: Db,
  settings: Record<string, string | number>,
  extra: Partial<IniSpec> = {},
): IniSpec {
  return {
    databases: { [database]: `host=127.0.0.1 port=${db.server.port} dbname=${database}` },
    pgbouncer: { pool_mode: 'transaction', default_pool_size: 2, ...settings },
    ...extra,
  }
}

type PgError = Error & { code?: string; severity?: string }

/** A connected client whose asynchronous FATAL is kept, not thrown. */
async function connected(
  pooler: Pooler,
  database: Db,
): Promise<{ c: pg.Client; fatal: () => PgError | null }> {
  const c = pooler.client({ database })
  let fatal: PgError | null = null
  c.on('error', (e: PgError) => {
    fatal ??= e
  })
  await c.connect()
  return { c, fatal: () => fatal }
}

async function failure(p: Promise<unknown>): Promise<PgError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as PgError,
  )
  assert.ok(err !== null, 'the statement was not stopped')
  return err
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000) {
  const started = Date.now()
  while (!(await check())) {
    if (Date.now() - started > ms) assert.fail(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return Date.now() - started
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function backendPids(database: Db): Promise<number[]> {
  const { rows } = await db.server.query(
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
    [database],
  )
  return rows.map((r) => Number(r.pid))
}

async function backendPid(c: pg.Client): Promise<number> {
  return Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)
}

function assertFatal(err: PgError | null, message: string): void {
  assert.ok(err !== null, `no error; expected FATAL ${message}`)
  assert.equal(err.message, message)
  assert.equal(err.code, '08P01')
  assert.equal(err.severity, 'FATAL')
}

// ---- the scenarios, each run with the setting global or per user ------------

/** A query running longer than query_timeout: FATAL, and its server is never reused. */
async function queryTimeoutScenario(pooler: Pooler, database: Db): Promise<void> {
  const a = await connected(pooler, database)
  try {
    await a.c.query('BEGIN')
    const killed = await backendPid(a.c)
    const started = Date.now()
    const err = await failure(a.c.query('SELECT pg_sleep(4)'))
    const after = Date.now() - started
    assertFatal(err, 'query timeout')
    assert.ok(after >= 800, `stopped after ${after} ms, before query_timeout`)
    assert.ok(after < 3900, `stopped after ${after} ms: the query ran to its end`)
    // The next client gets another backend, never the one that timed out.
    const b = await connected(pooler, database)
    try {
      assert.notEqual(await backendPid(b.c), killed)
    } finally {
      await b.c.end()
    }
    await until(
      'the timed-out backend gone',
      async () => !(await backendPids(database)).includes(killed),
    )
  } finally {
    await a.c.end().catch(() => {})
  }
}

/** A transaction left idle longer than idle_transaction_timeout; a slow query inside one is not idle. */
async function idleTransactionScenario(pooler: Pooler, database: Db): Promise<void> {
  const busy = await connected(pooler, database)
  try {
    await busy.c.query('BEGIN')
    await busy.c.query('SELECT pg_sleep(2)')
    await busy.c.query('COMMIT')
    assert.equal(busy.fatal(), null)
  } finally {
    await busy.c.end()
  }
  const idle = await connected(pooler, database)
  try {
    await idle.c.query('BEGIN')
    const waited = await until('FATAL for the idle transaction', () => idle.fatal() !== null)
    assertFatal(idle.fatal(), 'idle transaction timeout')
    assert.ok(waited >= 800, `ended after ${waited} ms, before the timeout`)
  } finally {
    await idle.c.end().catch(() => {})
  }
}

/** A transaction kept busy with short queries, past transaction_timeout. */
async function transactionScenario(pooler: Pooler, database: Db): Promise<void> {
  const a = await connected(pooler, database)
  try {
    await a.c.query('BEGIN')
    const started = Date.now()
    while (a.fatal() === null && Date.now() - started < 10_000) {
      await a.c.query('SELECT 1').catch(() => {})
      await sleep(200)
    }
    assertFatal(a.fatal(), 'transaction timeout')
    assert.ok(Date.now() - started >= 800)
  } finally {
    await a.c.end().catch(() => {})
  }
}

/** A client with no server, silent longer than client_idle_timeout. */
async function clientIdleScenario(pooler: Pooler, database: Db): Promise<void> {
  const a = await connected(pooler, database)
  try {
    await a.c.query('SELECT 1')
    const waited = await until('FATAL for the idle client', () => a.fatal() !== null)
    assertFatal(a.fatal(), 'client_idle_timeout')
    assert.ok(waited >= 800, `ended after ${waited} ms, before the timeout`)
  } finally {
    await a.c.end().catch(() => {})
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: query_timeout`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec('qt', { query_timeout: 1 }))
    })
    after(() => pooler.stop())

    test(
      'a query running longer gets FATAL "query timeout" (08P01); its server is closed, not reused',
      {
        timeout: TEST_TIMEOUT,
      },
      () => queryTimeoutScenario(pooler, 'qt'),
    )

    test('as in PgBouncer, a transaction left open that long is ended the same way', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const a = await connected(pooler, 'qt')
      try {
        await a.c.query('BEGIN')
        await until('FATAL for the open transaction', () => a.fatal() !== null)
        assertFatal(a.fatal(), 'query timeout')
      } finally {
        await a.c.end().catch(() => {})
      }
    })

    test('quick queries and idle clients are left alone', { timeout: TEST_TIMEOUT }, async () => {
      const a = await connected(pooler, 'qt')
      try {
        await a.c.query('SELECT pg_sleep(0.3)')
        await sleep(1500)
        assert.equal((await a.c.query('SELECT 2 AS n')).rows[0].n, 2)
        assert.equal(a.fatal(), null)
      } finally {
        await a.c.end()
      }
    })
  })

  describe(`${target.name}: idle_transaction_timeout`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec('itx', { idle_transaction_timeout: 1 }))
    })
    after(() => pooler.stop())

    test(
      'an idle transaction gets FATAL "idle transaction timeout"; a slow query in one does not',
      {
        timeout: TEST_TIMEOUT,
      },
      () => idleTransactionScenario(pooler, 'itx'),
    )
  })

  describe(`${target.name}: client_idle_timeout`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec('cidle', { client_idle_timeout: 1 }))
    })
    after(() => pooler.stop())

    test(
      'a client silent that long gets FATAL "client_idle_timeout"',
      {
        timeout: TEST_TIMEOUT,
      },
      () => clientIdleScenario(pooler, 'cidle'),
    )

    test('a client that keeps talking stays', { timeout: TEST_TIMEOUT }, async () => {
      const a = await connected(pooler, 'cidle')
      try {
        for (let i = 0; i < 6; i++) {
          await a.c.query('SELECT 1')
          await sleep(400)
        }
        assert.equal(a.fatal(), null)
      } finally {
        await a.c.end()
      }
    })
  })
}

// ---- newer than PgBouncer 1.18: this pooler only ----------------------------

describe('transaction_timeout (PgBouncer 1.25)', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(spec('xact', { transaction_timeout: 1 }))
  })
  after(() => pooler.stop())

  test(
    'a transaction open longer gets FATAL "transaction timeout", however busy',
    {
      timeout: TEST_TIMEOUT,
    },
    () => transactionScenario(pooler, 'xact'),
  )

  test('autocommit statements are not transactions that last', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connected(pooler, 'xact')
    try {
      for (let i = 0; i < 8; i++) {
        await a.c.query('SELECT pg_sleep(0.2)')
      }
      assert.equal(a.fatal(), null)
    } finally {
      await a.c.end()
    }
  })
})

describe('[users] overrides of the timeouts (PgBouncer 1.24/1.25)', () => {
  const withUser = (user: string) =>
    ours(spec('users', { query_wait_timeout: 20 }, { users: { postgres: user } }))

  for (const [key, scenario] of [
    ['query_timeout', queryTimeoutScenario],
    ['idle_transaction_timeout', idleTransactionScenario],
    ['transaction_timeout', transactionScenario],
    ['client_idle_timeout', clientIdleScenario],
  ] as const) {
    test(`${key}=1 for the user applies where the global value is 0`, {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const pooler = await withUser(`${key}=1`)
      try {
        await scenario(pooler, 'users')
      } finally {
        await pooler.stop()
      }
    })
  }
})

describe('query_wait_timeout per database and per user (PgBouncer 1.24)', () => {
  async function waitsFor(pooler: Pooler): Promise<{ err: PgError; waited: number }> {
    const holder = await connected(pooler, 'qwait')
    const waiter = await connected(pooler, 'qwait')
    try {
      await holder.c.query('BEGIN')
      const started = Date.now()
      const err = await failure(waiter.c.query('SELECT 1'))
      return { err, waited: Date.now() - started }
    } finally {
      await holder.c.end()
      await waiter.c.end().catch(() => {})
    }
  }
  const base = (db_extra: string, users?: Record<string, string>) => ({
    databases: {
      qwait: `host=127.0.0.1 port=${db.server.port} dbname=qwait ${db_extra}`.trim(),
    },
    pgbouncer: { pool_mode: 'transaction', default_pool_size: 1, query_wait_timeout: 60 },
    users,
  })

  test('the database entry wins over the global value', { timeout: TEST_TIMEOUT }, async () => {
    const pooler = await ours(base('query_wait_timeout=1'))
    try {
      const { err, waited } = await waitsFor(pooler)
      assertFatal(err, 'query_wait_timeout')
      assert.ok(waited >= 800 && waited < 20_000, `after ${waited} ms`)
    } finally {
      await pooler.stop()
    }
  })

  test("the user's value wins over the database's", { timeout: TEST_TIMEOUT }, async () => {
    const pooler = await ours(base('query_wait_timeout=30', { postgres: 'query_wait_timeout=1' }))
    try {
      const { err, waited } = await waitsFor(pooler)
      assertFatal(err, 'query_wait_timeout')
      assert.ok(waited >= 800 && waited < 20_000, `after ${waited} ms`)
    } finally {
      await pooler.stop()
    }
  })
})

describe('query_wait_notify (PgBouncer 1.25)', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(spec('notify', { default_pool_size: 1, query_wait_notify: 1 }))
  })
  after(() => pooler.stop())

  test('a client queued longer gets one NOTICE per wait, then its result', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const holder = await connected(pooler, 'notify')
    const waiter = await connected(pooler, 'notify')
    const notices: { message?: string; severity?: string; code?: string }[] = []
    waiter.c.on('notice', (n) => notices.push(n))
    try {
      await holder.c.query('BEGIN')
      const started = Date.now()
      const result = waiter.c.query('SELECT 7 AS n')
      await until('the NOTICE', () => notices.length > 0)
      const waited = Date.now() - started
      assert.ok(waited >= 1800, `noticed after ${waited} ms: PgBouncer waits more than 1 s`)
      await sleep(1500)
      await holder.c.query('COMMIT')
      assert.equal((await result).rows[0].n, 7)
      assert.equal(notices.length, 1)
      assert.equal(
        notices[0].message,
        'No server connection available in postgres backend, client being queued',
      )
      assert.equal(notices[0].severity, 'NOTICE')
      assert.equal(notices[0].code, '00000')
      // A second wait of the same client is told again (1.25 resets it with the wait).
      await holder.c.query('BEGIN')
      const second = waiter.c.query('SELECT 8 AS n')
      await until('the second NOTICE', () => notices.length > 1)
      await holder.c.query('COMMIT')
      assert.equal((await second).rows[0].n, 8)
      assert.equal(notices.length, 2)
    } finally {
      await holder.c.end()
      await waiter.c.end()
    }
  })
})

describe('reserve_pool_size per user (PgBouncer 1.24)', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await ours(
      spec(
        'reserve',
        { default_pool_size: 1, reserve_pool_size: 0, reserve_pool_timeout: 0.5 },
        { users: { postgres: 'reserve_pool_size=1' } },
      ),
    )
  })
  after(() => pooler.stop())

  test("the user's reserve opens a second server for a waiting client", {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connected(pooler, 'reserve')
    const b = await connected(pooler, 'reserve')
    try {
      await a.c.query('BEGIN')
      const pidA = await backendPid(a.c)
      const pidB = await backendPid(b.c)
      assert.notEqual(pidB, pidA)
    } finally {
      await a.c.end()
      await b.c.end()
    }
  })
})

/**
 * A TCP relay in front of the real PostgreSQL. Once told to hold, it accepts
 * new connections and never answers them: a server that cannot take a
 * CancelRequest, as one behind a broken network.
 */
async function relay(port: number): Promise<{ port: number; hold: () => void; close: () => void }> {
  let holding = false
  const sockets = new Set<net.Socket>()
  const server = net.createServer((inbound) => {
    sockets.add(inbound)
    inbound.on('error', () => {})
    if (holding) return
    const outbound = net.connect({ host: '127.0.0.1', port })
    sockets.add(outbound)
    outbound.on('error', () => inbound.destroy())
    inbound.on('close', () => outbound.destroy())
    outbound.on('close', () => inbound.destroy())
    inbound.pipe(outbound).pipe(inbound)
  })
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok))
  return {
    port: (server.address() as net.AddressInfo).port,
    hold: () => {
      holding = true
    },
    close: () => {
      server.close()
      for (const s of sockets) s.destroy()
    },
  }
}

describe('cancel_wait_timeout', () => {
  test('a cancel PostgreSQL never takes is dropped after cancel_wait_timeout: its server serves again (without it, the server stays out of the pool)', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const front = await relay(db.server.port)
    const pooler = await ours({
      databases: { cancelwait: `host=127.0.0.1 port=${front.port} dbname=cancelwait` },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: 1,
        cancel_wait_timeout: 1,
        query_wait_timeout: 4,
      },
    })
    try {
      const a = await connected(pooler, 'cancelwait')
      const b = await connected(pooler, 'cancelwait')
      try {
        const running = a.c.query('SELECT pg_sleep(1.5) AS slept')
        await sleep(300)
        front.hold()
        const key = a.c as unknown as { processID: number; secretKey: number }
        await sendCancel(pooler.host, pooler.port, key.processID, key.secretKey)
        // The cancel never arrived: the query ends normally.
        assert.equal((await running).rows.length, 1)
        assert.equal((await b.c.query('SELECT 2 AS n')).rows[0].n, 2)
      } finally {
        await a.c.end().catch(() => {})
        await b.c.end().catch(() => {})
      }
    } finally {
      await pooler.stop()
      front.close()
    }
  })
})
