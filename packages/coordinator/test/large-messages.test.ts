import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { errorFields, extended, queryMessage, RawConnection } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// Messages far larger than a read. A named Parse must be seen whole (its
// statement name is rewritten for the server), so the pooler holds it until
// its last byte: in one buffer of its size, each byte copied once. Holding it
// by joining all it had with each new read took 20 s for 54 MB. PgBouncer 1.18
// has no prepared statements and streams the Parse to PostgreSQL.
// max_packet_size bounds what a message may be, counted as PgBouncer counts a
// packet: type byte, length and body.
const db = usePostgres({ databases: ['app'] })

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 2 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

async function loggedIn(pooler: Pooler): Promise<RawConnection> {
  const conn = await RawConnection.connect(pooler.host, pooler.port)
  await conn.login({ user: 'postgres', database: 'app' })
  return conn
}

/** Writes `bytes` in pieces of `piece`, each after the last has drained. */
async function sendInPieces(conn: RawConnection, bytes: Buffer, piece: number): Promise<void> {
  for (let at = 0; at < bytes.length && !conn.closed; at += piece) {
    if (!conn.socket.write(bytes.subarray(at, at + piece))) {
      await new Promise((r) => conn.socket.once('drain', r))
    }
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: large messages`, { skip: target.skip, timeout: 120_000 }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', default_pool_size: 2 },
      })
    })
    after(() => pooler.stop())

    test('a named Parse of 64 MB sent in 64 kB writes is taken and prepared', {
      timeout: 60_000,
    }, async () => {
      const sql = `SELECT 'whole' /* ${'z'.repeat(64 * 1024 * 1024)} */`
      const parse = extended.parse('big', sql)
      const conn = await loggedIn(pooler)
      try {
        const started = Date.now()
        await sendInPieces(conn, parse, 64 * 1024)
        conn.send(Buffer.concat([extended.bind('big'), extended.execute(), extended.sync()]))
        const answer = await conn.until('Z', 45_000)
        const elapsed = Date.now() - started
        const error = answer.find((m) => m.type === 'E')
        assert.equal(error, undefined, error && JSON.stringify(errorFields(error.body)))
        const row = answer.find((m) => m.type === 'D')
        assert.ok(row, `no row: ${answer.map((m) => m.type).join('')}`)
        assert.match(row.body.toString('latin1'), /whole/)
        // Generous: the pooler's own work is a fraction of a second; copying all
        // it held at each read took minutes.
        assert.ok(elapsed < 30_000, `took ${elapsed} ms`)
      } finally {
        conn.destroy()
      }
    })
  })

  describe(`${target.name}: a client sending while it waits for a server`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      // One worker: a login to a worker whose pool never had a server would wait for one.
      const start =
        target.name === 'PgBouncer'
          ? target.start
          : (spec: IniSpec) => startPooler(writeIni(spec), { workers: 1 })
      pooler = await start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', default_pool_size: 1 },
      })
    })
    after(() => pooler.stop())

    test('is read no further than its first bytes until a server comes', {
      timeout: 45_000,
    }, async () => {
      // The one server is busy: the client's queries wait for it.
      const blocker = pooler.client({ database: 'app' })
      await blocker.connect()
      await blocker.query('BEGIN')
      await blocker.query('SELECT 1')
      const conn = await loggedIn(pooler)
      try {
        const query = queryMessage(`SELECT 'sent' /* ${'q'.repeat(320 * 1024)} */`)
        const count = 100 // 32 MB, more than the kernel's socket buffers hold
        for (let i = 0; i < count; i++) conn.socket.write(query)
        await new Promise((r) => setTimeout(r, 2000))
        // Read by the pooler, these bytes would have left the client's socket.
        const unsent = conn.socket.writableLength
        assert.ok(unsent > 16 * 1024 * 1024, `only ${unsent} bytes left unsent: the pooler read on`)
        await blocker.query('COMMIT')
        let ready = 0
        while (ready < count) {
          const msg = await conn.next(20_000)
          assert.ok(msg !== null, `${ready} of ${count} answered`)
          if (msg.type === 'E') assert.fail(JSON.stringify(errorFields(msg.body)))
          if (msg.type === 'Z') ready++
        }
      } finally {
        conn.destroy()
        await blocker.end().catch(() => {})
      }
    })
  })

  describe(`${target.name}: max_packet_size`, { skip: target.skip, timeout: 60_000 }, () => {
    const MAX = 100_000
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', max_packet_size: MAX },
      })
    })
    after(() => pooler.stop())

    /** A Query whose whole message (type byte, length, text, NUL) is `size` bytes. */
    function queryOfSize(size: number): Buffer {
      const head = "SELECT 'fits' /* "
      const tail = ' */'
      const msg = queryMessage(`${head}${'w'.repeat(size - 6 - head.length - tail.length)}${tail}`)
      assert.equal(msg.length, size)
      return msg
    }

    test('a message of max_packet_size bytes passes; one byte more closes the client', async () => {
      const fits = await loggedIn(pooler)
      try {
        fits.send(queryOfSize(MAX))
        const answer = await fits.until('Z', 10_000)
        assert.ok(
          answer.some((m) => m.type === 'D'),
          answer.map((m) => m.type).join(''),
        )
      } finally {
        fits.destroy()
      }
      const over = await loggedIn(pooler)
      try {
        over.send(queryOfSize(MAX + 1))
        const seen = await over.drain(10_000)
        assert.ok(over.closed, 'still open')
        const error = seen.find((m) => m.type === 'E')
        assert.ok(error, `no error: ${seen.map((m) => m.type).join('')}`)
        const fields = errorFields(error.body)
        assert.equal(fields.severity, 'FATAL')
        assert.equal(fields.code, '08P01')
        assert.ok(!seen.some((m) => m.type === 'D'), 'the query ran')
      } finally {
        over.destroy()
      }
    })
  })
}
