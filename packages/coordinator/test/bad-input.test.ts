import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import {
  type BackendMessage,
  errorFields,
  queryMessage,
  RawConnection,
  startupPacket,
} from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Invariant 6: bad input (garbage, lying length fields, slow clients) costs the
// sender its connection with a clear error and costs nobody else anything.
// Every test runs a well-behaved node-postgres client on the same pooler at the
// same time, and its queries must all succeed.
// Bounded: a hung pooler fails its test instead of stalling the whole run.
const TEST_TIMEOUT = 20_000
const db = usePostgres({ databases: ['app'] })

const LOGIN = { user: 'postgres', database: 'app' }
const LOGIN_TIMEOUT_S = 1
// Small on purpose: a slot leaked by a rejected connection would soon lock everyone out.
const MAX_CLIENT_CONN = 8

let pooler: Pooler

function int32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}

function typed(type: string, length: number, body: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Buffer.from(type, 'latin1'), int32(length), body])
}

/** Runs `fn` while another client queries the same pooler; every one of its queries must succeed. */
async function whileBystanderQueries(fn: () => Promise<void>): Promise<void> {
  await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
    let stop = false
    let n = 0
    const loop = (async () => {
      while (!stop) {
        const { rows } = await c.query('SELECT $1::int AS n', [n])
        assert.equal(rows[0].n, n)
        n++
      }
    })()
    try {
      await fn()
    } finally {
      stop = true
      await loop
    }
    assert.ok(n > 0, 'the bystander never got to run a query')
  })
}

function firstError(messages: BackendMessage[]) {
  const e = messages.find((m) => m.type === 'E')
  return e === undefined ? null : errorFields(e.body)
}

/** The FATAL that ended the connection (PostgreSQL may send an ERROR first). */
function fatalError(messages: BackendMessage[]) {
  const errors = messages.filter((m) => m.type === 'E').map((m) => errorFields(m.body))
  return errors.find((e) => e.severity === 'FATAL') ?? null
}

/**
 * Sends `bytes` (after logging in when `login`), then expects a FATAL 08P01
 * and the connection closed well before client_login_timeout could explain it.
 */
async function expectRejected(bytes: Buffer, opts: { login?: boolean } = {}) {
  const conn = await RawConnection.connect(pooler.host, pooler.port)
  try {
    if (opts.login) await conn.login(LOGIN)
    conn.send(bytes)
    const messages = await conn.drain(4000)
    assert.ok(conn.closed, 'the pooler kept the connection open')
    const error = fatalError(messages)
    assert.ok(error !== null, `closed without a FATAL (got ${messages.map((m) => m.type)})`)
    assert.equal(error.code, '08P01')
    assert.doesNotMatch(error.message, /client_login_timeout/)
    return error
  } finally {
    conn.destroy()
  }
}

describe('bad input before and after login', () => {
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: 2,
        client_login_timeout: LOGIN_TIMEOUT_S,
        max_client_conn: MAX_CLIENT_CONN,
      },
    })
    pooler = await startPooler(ini, { workers: 2 })
  })
  after(() => pooler.stop())

  test('garbage instead of a startup packet', { timeout: TEST_TIMEOUT }, async () => {
    await whileBystanderQueries(async () => {
      await expectRejected(Buffer.from('GET / HTTP/1.1\r\nHost: pooler\r\n\r\n'))
      await expectRejected(Buffer.alloc(64, 0xff))
    })
  })

  test('startup packets with lying length fields', { timeout: TEST_TIMEOUT }, async () => {
    await whileBystanderQueries(async () => {
      const good = startupPacket(LOGIN)
      // Huge: nothing may be allocated or waited for on its word.
      const huge = await expectRejected(Buffer.concat([int32(0x7fffffff), good.subarray(4)]))
      assert.match(huge.message, /length/)
      // Too small to hold even a protocol version.
      await expectRejected(Buffer.concat([int32(4), good.subarray(4)]))
      // Shorter than what follows: the packet ends inside a parameter.
      await expectRejected(Buffer.concat([int32(16), good.subarray(4)]))
      // Negative.
      await expectRejected(Buffer.concat([int32(0x80000000), good.subarray(4)]))
    })
  })

  test('malformed startup packets: unknown protocol, no user, no terminator', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    await whileBystanderQueries(async () => {
      const badVersion = startupPacket(LOGIN)
      badVersion.writeInt32BE(0x00090009, 4)
      await expectRejected(badVersion)
      await expectRejected(startupPacket({ database: 'app' }))
      const unterminated = startupPacket(LOGIN).subarray(0, -1)
      unterminated.writeInt32BE(unterminated.length, 0)
      await expectRejected(unterminated)
    })
  })

  test('after login: a message with length 2, garbage, a huge length', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    await whileBystanderQueries(async () => {
      await expectRejected(typed('Q', 2), { login: true })
      await expectRejected(typed('Q', 0xffffffff), { login: true })
      // Well framed but meaningless: the server refuses it, the sender pays.
      await expectRejected(typed('\u0000', 8, Buffer.from('junk')), { login: true })
      // A Query announcing 2 GB: PostgreSQL drops the server connection at once.
      await expectRejected(typed('Q', 0x7fffffff, Buffer.from('SELECT')), { login: true })
    })
  })

  test('a Query whose length lies about where its text ends', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    await whileBystanderQueries(async () => {
      const honest = queryMessage('SELECT 1')
      const lying = Buffer.from(honest)
      lying.writeInt32BE(6, 1)
      await expectRejected(lying, { login: true })
    })
  })

  test('rejected connections give their max_client_conn slot back', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    for (let i = 0; i < MAX_CLIENT_CONN * 3; i++) {
      await expectRejected(typed('Q', 2), { login: true })
    }
    // Every slot but the bystander's is free again.
    const conns = await Promise.all(
      Array.from({ length: MAX_CLIENT_CONN - 1 }, () =>
        RawConnection.connect(pooler.host, pooler.port),
      ),
    )
    try {
      await whileBystanderQueries(async () => {
        for (const conn of conns) await conn.login(LOGIN)
        for (const conn of conns) assert.deepEqual(await conn.query('SELECT 7'), [['7']])
      })
    } finally {
      for (const conn of conns) conn.destroy()
    }
  })

  test('slow clients block nobody and get client_login_timeout', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const good = startupPacket(LOGIN)
    const stalled: { conn: RawConnection; at: number; what: string }[] = []
    const stall = async (what: string, bytes: Buffer | null) => {
      const conn = await RawConnection.connect(pooler.host, pooler.port)
      if (bytes !== null) conn.send(bytes)
      stalled.push({ conn, at: Date.now(), what })
    }
    try {
      await stall('silent', null)
      await stall('half a startup packet', good.subarray(0, Math.floor(good.length / 2)))
      await stall('half a length field', good.subarray(0, 2))
      // Claims 200 bytes, sends 20 and waits: a lie only time can expose.
      await stall('longer length than sent', Buffer.concat([int32(200), good.subarray(4, 20)]))
      // Meanwhile newcomers log in and work as usual: done while the stalled
      // clients still hang on (had they blocked the pooler, it would be after).
      await whileBystanderQueries(async () => {
        await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
          assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
        })
      })
      const gone = stalled.filter((s) => s.conn.closed).map((s) => s.what)
      assert.deepEqual(gone, [], 'the newcomers were only served after the stalled clients left')
      for (const { conn, at, what } of stalled) {
        const messages = await conn.drain(5000)
        const waited = (conn.closedAt || Date.now()) - at
        assert.ok(conn.closed, `${what}: still open after ${waited} ms`)
        const error = firstError(messages)
        assert.deepEqual(
          error,
          { severity: 'FATAL', code: '08P01', message: 'client_login_timeout' },
          what,
        )
        assert.ok(waited >= LOGIN_TIMEOUT_S * 1000 - 100, `${what}: closed after only ${waited} ms`)
        assert.ok(waited < LOGIN_TIMEOUT_S * 1000 + 2500, `${what}: closed after ${waited} ms`)
      }
    } finally {
      for (const { conn } of stalled) conn.destroy()
    }
  })
})

describe('a client that stops in the middle of authentication', () => {
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { auth_type: 'md5', client_login_timeout: LOGIN_TIMEOUT_S },
      userlist: { postgres: 'secret' },
    })
    pooler = await startPooler(ini, { workers: 1 })
  })
  after(() => pooler.stop())

  test('gets client_login_timeout once asked for its password, and blocks nobody meanwhile', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const conn = await RawConnection.connect(pooler.host, pooler.port)
    try {
      const at = Date.now()
      conn.send(startupPacket(LOGIN))
      const request = await conn.next(2000)
      assert.equal(request?.type, 'R', 'expected an authentication request')
      assert.equal(request.body.readInt32BE(0), 5, 'expected AuthenticationMD5Password')
      await withClient(
        { connectionString: pooler.url({ database: 'app', password: 'secret' }) },
        async (c) => assert.equal((await c.query('SELECT 2 AS two')).rows[0].two, 2),
      )
      const messages = await conn.drain(5000)
      assert.ok(conn.closed)
      assert.deepEqual(firstError(messages), {
        severity: 'FATAL',
        code: '08P01',
        message: 'client_login_timeout',
      })
      assert.ok(conn.closedAt - at >= LOGIN_TIMEOUT_S * 1000 - 100)
    } finally {
      conn.destroy()
    }
  })
})
