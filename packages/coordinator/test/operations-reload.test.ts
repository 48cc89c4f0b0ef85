import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, writeIni } from './support.ts'

const WORKERS = 2

// SIGHUP reloads the file without dropping anyone; a broken file changes nothing.
describe('reload on SIGHUP', { timeout: 50_000 }, () => {
  const db = usePostgres({ databases: ['app', 'other'] })
  let ini: string
  let pooler: Pooler
  const clients: pg.Client[] = []

  const iniText = (poolSize: number, withOther: boolean) =>
    readFileSync(
      writeIni({
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app pool_size=${poolSize}`,
          ...(withOther ? { other: `host=127.0.0.1 port=${db.server.port} dbname=other` } : {}),
        },
        pgbouncer: { pool_mode: 'transaction', query_wait_timeout: 30 },
      }),
      'utf8',
    )

  before(async () => {
    ini = writeIni({ databases: {} })
    writeFileSync(ini, iniText(2, false))
    pooler = await startPooler(ini, { workers: WORKERS })
  })
  after(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
    await pooler.stop()
  })

  async function connect(database: string): Promise<pg.Client> {
    const c = pooler.client({ database })
    c.on('error', () => {})
    await c.connect()
    clients.push(c)
    return c
  }

  const pid = async (c: pg.Client) =>
    Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)

  /** Sends SIGHUP and waits until the coordinator and every worker logged the outcome. */
  async function reload(outcome: RegExp, workers: number): Promise<string> {
    const seen = pooler.output().length
    pooler.child.kill('SIGHUP')
    const deadline = Date.now() + 5000
    for (;;) {
      const out = pooler.output().slice(seen)
      const workerLines = out.match(/"worker":\d+[^\n]*"msg":"configuration reloaded"/g) ?? []
      if (outcome.test(out) && workerLines.length >= workers) return out
      if (Date.now() > deadline) throw new Error(`no reload outcome in:\n${out}`)
      await new Promise((r) => setTimeout(r, 25))
    }
  }

  /** n clients each inside a transaction at once; their backend pids. */
  async function concurrentTransactions(n: number): Promise<number[]> {
    const group = await Promise.all(Array.from({ length: n }, () => connect('app')))
    const pids = await Promise.all(
      group.map(async (c) => {
        await c.query('BEGIN')
        return pid(c)
      }),
    )
    await Promise.all(group.map((c) => c.query('COMMIT')))
    return pids
  }

  test('a bigger pool_size and a new database apply, connected clients stay', async () => {
    const keeper = await connect('app')
    await keeper.query('BEGIN')
    const keeperPid = await pid(keeper)
    const second = await connect('app')
    await second.query('BEGIN')
    await pid(second)
    // pool_size = 2 is used up: a third client waits (already to log in, when its worker
    // has not seen a server of this pool yet and so knows no parameters to welcome it with).
    let thirdDone = false
    const thirdQuery = connect('app').then(async (third) => {
      const { rows } = await third.query('SELECT 3 AS n')
      thirdDone = true
      return rows[0].n
    })
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(thirdDone, false, 'a third server was opened with pool_size = 2')
    await assert.rejects(connect('other'), /no such database: other/)

    writeFileSync(ini, iniText(4, true))
    await reload(/configuration file reloaded/, WORKERS)

    assert.equal(await thirdQuery, 3)
    // Four at once now: the keeper's and second's servers plus two more.
    const more = await concurrentTransactions(2)
    assert.equal(new Set([keeperPid, ...more]).size, 3)
    const otherClient = await connect('other')
    const { rows } = await otherClient.query('SELECT current_database() AS db')
    assert.equal(rows[0].db, 'other')
    // The keeper's transaction went on across the reload on the same server.
    assert.equal(await pid(keeper), keeperPid)
    await keeper.query('COMMIT')
    await second.query('COMMIT')
    assert.equal(new Set(await concurrentTransactions(4)).size, 4)
    assert.equal((await keeper.query('SELECT 1 AS one')).rows[0].one, 1)
  })

  test('a broken file keeps the running configuration and logs file, line and key', async () => {
    const before = pooler.output().length
    const text = iniText(4, true).replace('[pgbouncer]', '[pgbouncer]\ndefault_pool_size = lots')
    writeFileSync(ini, text)
    const line = text.split('\n').indexOf('default_pool_size = lots') + 1
    pooler.child.kill('SIGHUP')
    const deadline = Date.now() + 5000
    while (!/reload failed/.test(pooler.output().slice(before))) {
      if (Date.now() > deadline) throw new Error(`no reload error in:\n${pooler.output()}`)
      await new Promise((r) => setTimeout(r, 25))
    }
    const out = pooler.output().slice(before)
    assert.match(out, new RegExp(`"file":"${ini}","line":${line},"key":"default_pool_size"`))
    assert.match(out, /keeping the running configuration/)
    assert.doesNotMatch(out, /"msg":"configuration reloaded"/)
    // Still pool_size 4 and still the database the last good file added.
    assert.equal(new Set(await concurrentTransactions(4)).size, 4)
    const otherClient = await connect('other')
    assert.equal((await otherClient.query('SELECT 1 AS one')).rows[0].one, 1)
    assert.equal(pooler.child.exitCode, null)
  })

  test('a smaller pool_size applies as servers come free', async () => {
    writeFileSync(ini, iniText(1, true))
    await reload(/configuration file reloaded/, WORKERS)
    // Idle servers above the new size close at the next janitor tick.
    await new Promise((r) => setTimeout(r, 400))
    const monitor = await db.server.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend'",
    )
    assert.ok(monitor.rows[0].n <= 1, `${monitor.rows[0].n} servers for pool_size = 1`)
    const group = await Promise.all([connect('app'), connect('app')])
    await group[0].query('BEGIN')
    await pid(group[0])
    let waited = false
    const blocked = group[1].query('SELECT 1').then(() => {
      waited = true
    })
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(waited, false, 'a second server was opened with pool_size = 1')
    await group[0].query('COMMIT')
    await blocked
    assert.equal(waited, true)
  })
})
