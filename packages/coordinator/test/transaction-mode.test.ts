import assert from 'node:assert/strict'
import net from 'node:net'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { queryMessage, startupPacket } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Invariant 1 under load: four workers, one shared pool of 10, 200 clients.
const POOL_SIZE = 10
describe('transaction pooling on four workers', () => {
  const db = usePostgres({ databases: ['app'], maxConnections: 100 })
  let pooler: Pooler

  before(async () => {
    const ini = writeIni({
      databases: {
        app: `host=127.0.0.1 port=${db.server.port} dbname=app application_name=txpool`,
      },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: POOL_SIZE, max_client_conn: 1000 },
    })
    pooler = await startPooler(ini, { workers: 4 })
  })
  after(() => pooler.stop())

  test('200 clients in transactions never use more than pool_size servers across 4 workers', async () => {
    const monitor = new pg.Client({ connectionString: db.server.url({ database: 'app' }) })
    await monitor.connect()
    let peak = 0
    let samples = 0
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await monitor.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        peak = Math.max(peak, rows[0].n)
        samples++
        await new Promise((r) => setTimeout(r, 5))
      }
    })()

    let completed = 0
    await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
          for (let j = 0; j < 3; j++) {
            await c.query('BEGIN')
            const { rows } = await c.query('SELECT $1::int AS i, pg_sleep(0.02)', [i])
            assert.equal(rows[0].i, i)
            await c.query('COMMIT')
            completed++
          }
        }),
      ),
    )
    sampling = false
    await sampler
    await monitor.end()
    assert.equal(completed, 600)
    assert.ok(samples > 10, `only ${samples} samples`)
    assert.ok(peak <= POOL_SIZE, `saw ${peak} server connections for a pool of ${POOL_SIZE}`)
    assert.ok(peak > 0)
  })

  test('pool_size transactions run at the same time (the whole pool is usable)', async () => {
    // POOL_SIZE clients each hold a transaction open until all of them are inside.
    const clients = await Promise.all(
      Array.from({ length: POOL_SIZE }, async () => {
        const c = new pg.Client({ connectionString: pooler.url({ database: 'app' }) })
        await c.connect()
        return c
      }),
    )
    try {
      const pids = await Promise.all(
        clients.map(async (c) => {
          await c.query('BEGIN')
          return Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
        }),
      )
      assert.equal(new Set(pids).size, POOL_SIZE)
      await Promise.all(clients.map((c) => c.query('COMMIT')))
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
  })

  test('cross-talk: 100 clients x 100 parameterised queries each get their own token back', async () => {
    let checked = 0
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
          for (let j = 0; j < 100; j++) {
            const token = `client-${i}-query-${j}`
            const { rows } = await c.query('SELECT $1::text AS token', [token])
            assert.equal(rows[0].token, token)
            checked++
          }
        }),
      ),
    )
    assert.equal(checked, 10_000)
  })

  test('Terminate closes the connection at once, as PgBouncer does: the pooler reads nothing after it', async () => {
    // allowHalfOpen: the client keeps its side open after the pooler's FIN,
    // so anything it then sends meets a closed socket, which resets.
    const socket = net.connect({ host: pooler.host, port: pooler.port, allowHalfOpen: true })
    const events: string[] = []
    let welcomed!: () => void
    const welcome = new Promise<void>((r) => {
      welcomed = r
    })
    const reset = new Promise<string>((resolve) => {
      socket.on('data', (b: Buffer) => {
        if (b.includes(Buffer.from('Z\0\0\0\x05I', 'latin1'))) welcomed()
      })
      socket.on('end', () => {
        events.push('end')
        // A query after our goodbye: a pooler still reading takes it in
        // silence; a closed socket answers it with a reset, which the next
        // write reports (this side reads no more after the end of stream).
        socket.write(queryMessage('SELECT 1'))
        setTimeout(() => socket.write(queryMessage('SELECT 2')), 100)
      })
      socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
      setTimeout(() => resolve('no reset'), 3000)
    })
    socket.write(startupPacket({ user: 'postgres', database: 'app' }))
    await welcome
    socket.write(Buffer.from([0x58, 0, 0, 0, 4])) // Terminate
    const code = await reset
    socket.destroy()
    assert.deepEqual(events, ['end'])
    assert.match(code, /ECONNRESET|EPIPE/)
  })

  test('a client that disconnects mid-transaction leaves no open transaction for the next one', async () => {
    const leaver = new pg.Client({ connectionString: pooler.url({ database: 'app' }) })
    leaver.on('error', () => {})
    await leaver.connect()
    await leaver.query('BEGIN')
    await leaver.query('SELECT txid_current()')
    const pid = Number((await leaver.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)
    // Drop the socket without Terminate, as a crashing client would.
    ;(
      leaver as unknown as { connection: { stream: { destroy(): void } } }
    ).connection.stream.destroy()
    await new Promise((r) => setTimeout(r, 200))
    for (let i = 0; i < 20; i++) {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
        const { rows } = await c.query(
          'SELECT txid_current_if_assigned() AS x, pg_backend_pid() AS pid',
        )
        assert.equal(rows[0].x, null, 'a reused server carried a transaction over')
      })
    }
    const { rows } = await db.server.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state LIKE 'idle in transaction%'",
      [pid],
    )
    assert.equal(rows[0].n, 0)
  })
})
