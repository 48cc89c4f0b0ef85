import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, writeIni } from './support.ts'

const PSQL = findPgTool('psql')

// The console commands PgBouncer 1.20-1.24 added: SHOW STATE, KILL_CLIENT
// (with the `id` SHOW CLIENTS shows), and the 1.24 statistics of named
// prepared statements. PgBouncer 1.18 has none of them.

describe('admin console: PgBouncer 1.20+ commands', { timeout: 90_000 }, () => {
  const db = usePostgres({ databases: ['app'] })
  let pooler: Pooler
  let admin: pg.Client
  const clients: pg.Client[] = []

  before(async () => {
    pooler = await startPooler(
      writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', admin_users: 'postgres', stats_users: 'watcher' },
      }),
      { workers: 2 },
    )
    admin = await connect('pgbouncer')
  })
  after(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
    await pooler.stop()
  })

  async function connect(database: string, user = 'postgres'): Promise<pg.Client> {
    const c = pooler.client({ database, user })
    c.on('error', () => {})
    await c.connect()
    clients.push(c)
    return c
  }

  const localPort = (c: pg.Client) =>
    (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort

  async function clientRow(c: pg.Client): Promise<Record<string, unknown> | undefined> {
    const { rows } = await admin.query('SHOW CLIENTS')
    return rows.find((r) => r.port === localPort(c))
  }

  test('SHOW STATE: active, then paused under PAUSE, active again after RESUME', async () => {
    const state = async () =>
      Object.fromEntries((await admin.query('SHOW STATE')).rows.map((r) => [r.key, r.value]))
    assert.deepEqual(await state(), { active: 'yes', paused: 'no', suspended: 'no' })
    assert.equal((await admin.query('SHOW STATE')).command, 'SHOW')
    await admin.query('PAUSE')
    assert.deepEqual(await state(), { active: 'no', paused: 'yes', suspended: 'no' })
    await admin.query('RESUME')
    assert.deepEqual(await state(), { active: 'yes', paused: 'no', suspended: 'no' })
  })

  test('KILL_CLIENT <id> drops that client, on whichever worker it is, and only it', async () => {
    // Enough clients that both workers hold some: the id routes the command.
    const group: pg.Client[] = []
    for (let i = 0; i < 8; i++) group.push(await connect('app'))
    const bystander = await connect('app')
    await group[0].query('BEGIN')
    const ids: string[] = []
    for (const c of group) {
      const row = await clientRow(c)
      assert.ok(row, 'SHOW CLIENTS lists the client')
      assert.equal(row.replication, 'none')
      assert.equal(row.ptr, `0x${Number(row.id).toString(16)}`, 'id and ptr name the same client')
      ids.push(String(row.id))
    }
    const workers = new Set(ids.map((id) => Number(id) >>> 24))
    assert.equal(workers.size, 2, 'clients on both workers')
    for (const [i, c] of group.entries()) {
      await admin.query(`KILL_CLIENT ${ids[i]}`)
      await assert.rejects(c.query('SELECT 1'))
    }
    // What the client was told, as log_pooler_errors (on by default) logged it.
    assert.match(pooler.output(), /pooler error: admin forced disconnect/)
    assert.equal((await bystander.query('SELECT 1 AS one')).rows[0].one, 1)
    const left = (await admin.query('SHOW CLIENTS')).rows.map((r) => String(r.id))
    for (const id of ids) assert.ok(!left.includes(id), `client ${id} still listed`)
    // The killed client's open transaction did not go back to the pool.
    const { rows } = await bystander.query(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = $1',
      ['idle in transaction'],
    )
    assert.equal(rows[0].n, 0)
  })

  test('KILL_CLIENT answers with its command tag, whole in psql', {
    skip: skipWithout('psql', PSQL),
  }, async () => {
    // node-postgres cuts a command tag at the underscore; psql shows it as sent.
    const victim = await connect('app')
    const row = await clientRow(victim)
    assert.ok(row, 'SHOW CLIENTS lists the client')
    const { stdout } = await promisify(execFile)(PSQL!, [
      pooler.url({ database: 'pgbouncer' }),
      '-c',
      `KILL_CLIENT ${row.id}`,
    ])
    assert.equal(stdout.trim(), 'KILL_CLIENT')
    await assert.rejects(victim.query('SELECT 1'))
  })

  test("KILL_CLIENT: PgBouncer's errors for an unknown id, a bad one, and a stats user", async () => {
    await assert.rejects(admin.query('KILL_CLIENT 16777299'), {
      message: 'client not found',
      code: '08P01',
    })
    await assert.rejects(admin.query('KILL_CLIENT 12345678901234'), { message: 'client not found' })
    await assert.rejects(admin.query('KILL_CLIENT abc'), {
      message: 'invalid client pointer supplied',
    })
    const watcher = await connect('pgbouncer', 'watcher')
    const row = await clientRow(watcher)
    await assert.rejects(watcher.query(`KILL_CLIENT ${row!.id}`), {
      message: 'admin access needed',
    })
  })

  test('SHOW STATS counts server assignments and named prepared statements (1.24 counters)', async () => {
    const stat = async () =>
      (await admin.query('SHOW STATS')).rows.find((r) => r.database === 'app')
    const before = await stat()
    const c = await connect('app')
    for (let i = 0; i < 3; i++) {
      const { rows } = await c.query({ name: 'answer', text: 'SELECT $1::int AS x', values: [i] })
      assert.equal(rows[0].x, i)
    }
    const now = await stat()
    const grew = (k: string) => Number(now[k]) - Number(before[k])
    assert.equal(grew('total_client_parse_count'), 1)
    assert.equal(grew('total_bind_count'), 3)
    assert.ok(grew('total_server_parse_count') >= 1)
    assert.ok(grew('total_server_assignment_count') >= 3)
    const totals = (await admin.query('SHOW TOTALS')).rows.map((r) => r.name)
    for (const name of [
      'total_server_assignment_count',
      'total_ps_client_parse_count',
      'total_ps_server_parse_count',
      'total_ps_bind_count',
      'avg_ps_bind_count',
    ])
      assert.ok(totals.includes(name), name)
    const client = await clientRow(c)
    assert.equal(client?.prepared_statements, 1)
  })
})
