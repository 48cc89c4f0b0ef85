import assert from 'node:assert/strict'
import net from 'node:net'
import { before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { startPooler, writeIni } from './support.ts'

// SIGINT and SIGTERM stop the pooler gracefully: transactions in flight finish.
describe('graceful shutdown', { timeout: 50_000 }, () => {
  const db = usePostgres({ databases: ['app'] })

  before(async () => {
    const c = new pg.Client(db.server.url({ database: 'app' }))
    await c.connect()
    await c.query('CREATE TABLE shutdown_log (signal text PRIMARY KEY)')
    await c.end()
  })

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

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    for (const mode of ['transaction', 'session'] as const) {
      test(`${signal} in ${mode} mode: the open transaction commits, new connections are refused, exit 0`, async () => {
        const ini = writeIni({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          pgbouncer: { pool_mode: mode },
        })
        const pooler = await startPooler(ini, { workers: 2 })
        const inFlight = pooler.client({ database: 'app' })
        inFlight.on('error', () => {})
        await inFlight.connect()
        await inFlight.query('BEGIN')
        await inFlight.query('INSERT INTO shutdown_log VALUES ($1)', [`${signal} ${mode}`])
        // An idle client is not waited for.
        const idle = pooler.client({ database: 'app' })
        idle.on('error', () => {})
        await idle.connect()
        await idle.query('SELECT 1')

        pooler.child.kill(signal)
        await new Promise((r) => setTimeout(r, 400))
        assert.equal(pooler.child.exitCode, null, 'exited with a transaction in flight')
        assert.equal(await connectRaw(pooler.port), 'ECONNREFUSED')

        await inFlight.query('COMMIT')
        const committed = performance.now()
        const code = await pooler.exited
        assert.equal(code, 0)
        assert.ok(performance.now() - committed < 5000, 'exit took long after the last commit')
        const check = new pg.Client(db.server.url({ database: 'app' }))
        await check.connect()
        const { rows } = await check.query(
          'SELECT count(*)::int AS n FROM shutdown_log WHERE signal = $1',
          [`${signal} ${mode}`],
        )
        await check.end()
        assert.equal(rows[0].n, 1, 'the transaction in flight was lost')
        assert.match(pooler.output(), /letting transactions in flight finish/)
        await inFlight.end().catch(() => {})
        await idle.end().catch(() => {})
      })
    }
  }

  test('a second signal does not wait: the open transaction is rolled back, exit 0', async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction' },
    })
    const pooler = await startPooler(ini, { workers: 2 })
    const inFlight = pooler.client({ database: 'app' })
    inFlight.on('error', () => {})
    await inFlight.connect()
    await inFlight.query('BEGIN')
    await inFlight.query("INSERT INTO shutdown_log VALUES ('twice')")
    pooler.child.kill('SIGTERM')
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(pooler.child.exitCode, null)
    const second = performance.now()
    pooler.child.kill('SIGTERM')
    assert.equal(await pooler.exited, 0)
    assert.ok(performance.now() - second < 3000)
    await assert.rejects(inFlight.query('COMMIT'))
    const check = new pg.Client(db.server.url({ database: 'app' }))
    await check.connect()
    const { rows } = await check.query(
      "SELECT count(*)::int AS n FROM shutdown_log WHERE signal = 'twice'",
    )
    await check.end()
    assert.equal(rows[0].n, 0)
    assert.match(pooler.output(), /shutting down at once/)
  })
})
