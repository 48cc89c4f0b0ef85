import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, writeIni } from './support.ts'

// The circuit breaker against a real PostgreSQL: an outage and a wrong password.
describe('circuit breaker', { timeout: 50_000 }, () => {
  const db = usePostgres({
    databases: ['app'],
    roles: [{ name: 'app_user', password: 'right-password', auth: 'scram-sha-256' }],
    settings: { log_connections: 'on' },
  })
  const poolers: Pooler[] = []
  after(() => Promise.all(poolers.map((p) => p.stop())))

  /** Connects and runs one query; the error (from either step) or null, and how long it took. */
  async function attempt(
    pooler: Pooler,
    database: string,
  ): Promise<{ err: (Error & { code?: string }) | null; ms: number }> {
    const started = performance.now()
    const client = pooler.client({ database })
    client.on('error', () => {})
    try {
      await client.connect()
      await client.query('SELECT 1')
      return { err: null, ms: performance.now() - started }
    } catch (err) {
      return { err: err as Error, ms: performance.now() - started }
    } finally {
      await client.end().catch(() => {})
    }
  }

  test('PostgreSQL stopped: a fast error naming the cause; restarted: queries work again', async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'transaction', server_login_retry: 1, query_wait_timeout: 30 },
    })
    const pooler = await startPooler(ini, { workers: 2 })
    poolers.push(pooler)
    // Connected across the whole outage, idle: transaction pooling needs no server between
    // queries. (A query during the outage would get the FATAL error and lose the connection.)
    const steady: pg.Client = pooler.client({ database: 'app' })
    steady.on('error', () => {})
    await steady.connect()
    assert.equal((await steady.query('SELECT 1 AS one')).rows[0].one, 1)
    for (let i = 0; i < 4; i++) assert.equal((await attempt(pooler, 'app')).err, null)

    await db.server.halt()
    try {
      await new Promise((r) => setTimeout(r, 300))
      const refused = new RegExp(
        `cannot connect to server at 127\\.0\\.0\\.1:${db.server.port}: connection refused`,
      )
      for (let i = 0; i < 8; i++) {
        const { err, ms } = await attempt(pooler, 'app')
        assert.ok(err !== null, 'a query succeeded with PostgreSQL down')
        assert.match(err.message, refused)
        assert.equal(err.code, '08006')
        // query_wait_timeout is 30 s: anything near it would be a hang.
        assert.ok(ms < 2000, `the error took ${Math.round(ms)} ms`)
      }
      assert.match(pooler.output(), /circuit breaker open/)
    } finally {
      // Whatever failed above, the next test needs its server back.
      await db.server.restart()
    }
    const restarted = performance.now()
    let ok = false
    while (!ok && performance.now() - restarted < 10_000) {
      ok = (await attempt(pooler, 'app')).err === null
      if (!ok) await new Promise((r) => setTimeout(r, 100))
    }
    assert.ok(ok, 'queries did not work again within 10 s of the restart')
    // server_login_retry is 1 s: the probe comes soon after it.
    assert.ok(performance.now() - restarted < 4000)
    for (let i = 0; i < 4; i++) assert.equal((await attempt(pooler, 'app')).err, null)
    assert.equal((await steady.query('SELECT 2 AS two')).rows[0].two, 2)
    await steady.end()
    assert.equal(pooler.child.exitCode, null, 'the pooler was restarted')
    assert.match(pooler.output(), /circuit breaker closed/)
  })

  test('wrong password in [databases]: 28P01 relayed, and the breaker stops the retries', async () => {
    const ini = writeIni({
      databases: {
        bad: `host=127.0.0.1 port=${db.server.port} dbname=app user=app_user password=wrong-password`,
      },
      pgbouncer: { pool_mode: 'transaction', server_login_retry: 2 },
    })
    const pooler = await startPooler(ini, { workers: 2 })
    poolers.push(pooler)
    const failedLogins = () =>
      db.server
        .readLog()
        .split('\n')
        .filter((l) => l.includes('password authentication failed for user "app_user"')).length
    const before = failedLogins()
    const started = performance.now()
    let clients = 0
    while (performance.now() - started < 3000) {
      const { err, ms } = await attempt(pooler, 'bad')
      clients++
      assert.ok(err !== null)
      assert.equal(err.code, '28P01')
      assert.match(err.message, /password authentication failed for user "app_user"/)
      assert.ok(ms < 1000, `the error took ${Math.round(ms)} ms`)
      await new Promise((r) => setTimeout(r, 50))
    }
    // PostgreSQL writes its log line as it rejects; give the last one a moment.
    await new Promise((r) => setTimeout(r, 200))
    const attempts = failedLogins() - before
    assert.ok(clients >= 20, `only ${clients} clients tried`)
    // Three failures open it; over 3 s with server_login_retry = 2 s, one or two probes follow.
    assert.ok(attempts >= 3, `PostgreSQL saw ${attempts} logins`)
    assert.ok(attempts <= 6, `${clients} clients caused ${attempts} logins to PostgreSQL`)
  })
})
