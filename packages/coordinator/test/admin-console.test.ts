import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

const run = promisify(execFile)

const TEXT = 25
const INT4 = 23
const INT8 = 20
const NUMERIC = 1700

// Column names, type OIDs and order exactly as PgBouncer 1.18.0 answers them
// (recorded from the real /usr/sbin/pgbouncer with psql and a raw client),
// except the statistics and the client/server lists, which follow 1.24
// (PgBouncer's doc/usage.md and its stats.c and admin.c): 1.23 added
// `replication` and `id` to SHOW CLIENTS/SERVERS and server assignments to
// the statistics, 1.24 the prepared-statement counters; and POOLS, DATABASES,
// USERS and LISTS, which follow 1.25's admin.c (1.23 and 1.24 added columns
// and renamed reserve_pool, 1.19 the peers' rows of LISTS).
const connectionColumns = [
  ['type', TEXT],
  ['user', TEXT],
  ['database', TEXT],
  ['replication', TEXT],
  ['state', TEXT],
  ['addr', TEXT],
  ['port', INT4],
  ['local_addr', TEXT],
  ['local_port', INT4],
  ['connect_time', TEXT],
  ['request_time', TEXT],
  ['wait', INT4],
  ['wait_us', INT4],
  ['close_needed', INT4],
  ['ptr', TEXT],
  ['link', TEXT],
  ['remote_pid', INT4],
  ['tls', TEXT],
  ['application_name', TEXT],
  ['prepared_statements', INT4],
  ['id', INT8],
]
const statsPart = [
  'server_assignment_count',
  'xact_count',
  'query_count',
  'bytes_received',
  'bytes_sent',
  'xact_time',
  'query_time',
  'wait_time',
]
const psCounts = ['client_parse_count', 'server_parse_count', 'bind_count']
const PGBOUNCER_COLUMNS: Record<string, [string, number][]> = {
  POOLS: [
    ['database', TEXT],
    ['user', TEXT],
    ...[
      'cl_active',
      'cl_waiting',
      'cl_active_cancel_req',
      'cl_waiting_cancel_req',
      'sv_active',
      'sv_active_cancel',
      'sv_being_canceled',
      'sv_idle',
      'sv_used',
      'sv_tested',
      'sv_login',
      'maxwait',
      'maxwait_us',
    ].map((n): [string, number] => [n, INT4]),
    ['pool_mode', TEXT],
    ['load_balance_hosts', TEXT],
  ],
  STATS: [
    ['database', TEXT],
    ...[
      'total_server_assignment_count',
      'total_xact_count',
      'total_query_count',
      'total_received',
      'total_sent',
      'total_xact_time',
      'total_query_time',
      'total_wait_time',
      'total_client_parse_count',
      'total_server_parse_count',
      'total_bind_count',
      'avg_server_assignment_count',
      'avg_xact_count',
      'avg_query_count',
      'avg_recv',
      'avg_sent',
      'avg_xact_time',
      'avg_query_time',
      'avg_wait_time',
      'avg_client_parse_count',
      'avg_server_parse_count',
      'avg_bind_count',
    ].map((n): [string, number] => [n, NUMERIC]),
  ],
  STATS_TOTALS: [
    ['database', TEXT],
    ...[...statsPart, ...psCounts].map((n): [string, number] => [n, NUMERIC]),
  ],
  STATS_AVERAGES: [
    ['database', TEXT],
    ...[...statsPart, ...psCounts.map((n) => `avg_${n}`)].map((n): [string, number] => [
      n,
      NUMERIC,
    ]),
  ],
  TOTALS: [
    ['name', TEXT],
    ['value', NUMERIC],
  ],
  // Ours after PgBouncer's: the kind of session state a client is pinned for.
  CLIENTS: [...connectionColumns, ['session_state_pin', TEXT]] as [string, number][],
  SERVERS: connectionColumns as [string, number][],
  DATABASES: [
    ['name', TEXT],
    ['host', TEXT],
    ['port', INT4],
    ['database', TEXT],
    ['force_user', TEXT],
    ['pool_size', INT4],
    ['min_pool_size', INT4],
    ['reserve_pool_size', INT4],
    ['server_lifetime', INT4],
    ['pool_mode', TEXT],
    ['load_balance_hosts', TEXT],
    ['max_connections', INT4],
    ['current_connections', INT4],
    ['max_client_connections', INT4],
    ['current_client_connections', INT4],
    ['paused', INT4],
    ['disabled', INT4],
  ],
  CONFIG: [
    ['key', TEXT],
    ['value', TEXT],
    ['default', TEXT],
    ['changeable', TEXT],
  ],
  LISTS: [
    ['list', TEXT],
    ['items', INT4],
  ],
  VERSION: [['version', TEXT]],
  STATE: [
    ['key', TEXT],
    ['value', TEXT],
  ],
  USERS: [
    ['name', TEXT],
    ['pool_size', TEXT],
    ['reserve_pool_size', TEXT],
    ['pool_mode', TEXT],
    ['max_user_connections', INT4],
    ['current_connections', INT4],
    ['max_user_client_connections', INT4],
    ['current_client_connections', INT4],
  ],
  DNS_HOSTS: [
    ['hostname', TEXT],
    ['ttl', INT8],
    ['addrs', TEXT],
  ],
  DNS_ZONES: [
    ['zonename', TEXT],
    ['serial', INT8],
    ['count', INT4],
  ],
}
const LISTS_1_25 = [
  'databases',
  'users',
  'peers',
  'pools',
  'peer_pools',
  'free_clients',
  'used_clients',
  'login_clients',
  'free_servers',
  'used_servers',
  'dns_names',
  'dns_zones',
  'dns_queries',
  'dns_pending',
]

const WORKERS = 2
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('admin console', { timeout: 55_000 }, () => {
  const db = usePostgres({ databases: ['app'] })
  let ini: string
  let pooler: Pooler
  let admin: pg.Client
  const clients: pg.Client[] = []

  const iniText = (poolSize: number) =>
    readFileSync(
      writeIni({
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app pool_size=${poolSize}`,
        },
        pgbouncer: {
          pool_mode: 'transaction',
          admin_users: 'postgres',
          stats_users: 'watcher',
          query_wait_timeout: 30,
          stats_period: 1,
        },
      }),
      'utf8',
    )

  before(async () => {
    ini = writeIni({ databases: {} })
    writeFileSync(ini, iniText(10))
    pooler = await startPooler(ini, { workers: WORKERS })
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

  async function show(what: string, by: pg.Client = admin) {
    return by.query({ text: `SHOW ${what}`, rowMode: 'array' })
  }

  async function poolRow(database = 'app'): Promise<Record<string, number | string>> {
    const { rows } = await admin.query('SHOW POOLS')
    const row = rows.find((r) => r.database === database && r.user === 'postgres')
    assert.ok(row, `no pool row for ${database}`)
    return row
  }

  /** Clients in app, connected until both workers hold some (the kernel spreads them). */
  async function spreadClients(min: number): Promise<pg.Client[]> {
    const group: pg.Client[] = []
    for (let i = 0; i < 24 && (group.length < min || (await workersOf(group)).size < 2); i++) {
      group.push(await connect('app'))
    }
    assert.ok((await workersOf(group)).size === 2, 'clients landed on both workers')
    return group
  }

  /** The workers holding these clients, from SHOW CLIENTS: each client's ptr carries its worker. */
  async function workersOf(group: pg.Client[]): Promise<Set<string>> {
    const ports = new Set(group.map(localPort))
    const { rows } = await admin.query('SHOW CLIENTS')
    const mine = rows.filter((r) => ports.has(r.port))
    assert.equal(mine.length, group.length, 'SHOW CLIENTS lists every client')
    return new Set(mine.map((r) => String(r.ptr).slice(0, 3)))
  }

  const localPort = (c: pg.Client) =>
    (c as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort

  test('every SHOW has the PgBouncer columns (1.18; 1.24 and 1.25 where they added some), types, order and the SHOW tag', async () => {
    for (const [what, expected] of Object.entries(PGBOUNCER_COLUMNS)) {
      const res = await show(what)
      assert.equal(res.command, 'SHOW', what)
      assert.deepEqual(
        res.fields.map((f) => [f.name, f.dataTypeID]),
        expected,
        `SHOW ${what} columns`,
      )
    }
    const lists = await admin.query('SHOW LISTS')
    assert.deepEqual(
      lists.rows.map((r) => r.list),
      LISTS_1_25,
    )
    const version = await admin.query('SHOW VERSION')
    assert.match(version.rows[0].version, /^PgBouncer 1\.18\.0 \(pgbouncer-cluster /)
    // The command's --version says the same words.
    const bin = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname
    const { stdout } = await run(process.execPath, [bin, '--version'])
    assert.equal(stdout.trim(), version.rows[0].version)
    const config = await admin.query('SHOW CONFIG')
    const byKey = new Map(config.rows.map((r) => [r.key, r]))
    assert.equal(byKey.get('pool_mode').value, 'transaction')
    assert.equal(byKey.get('pool_mode').default, 'session')
    assert.equal(byKey.get('admin_users').value, 'postgres')
    assert.equal(byKey.get('listen_port').changeable, 'no')
    // Lower case and a trailing semicolon, as psql users type it.
    assert.equal((await admin.query('show pools;')).command, 'SHOW')
  })

  test('SHOW POOLS sums clients and servers over both workers', async () => {
    const group = await spreadClients(3)
    await Promise.all(group.map((c) => c.query('BEGIN').then(() => c.query('SELECT 1'))))
    let row = await poolRow()
    assert.equal(row.cl_active, group.length)
    assert.equal(row.sv_active, group.length)
    assert.equal(row.cl_waiting, 0)
    assert.equal(row.pool_mode, 'transaction')
    // Every client is linked to a server that links back to it.
    const cl = (await admin.query('SHOW CLIENTS')).rows.filter((r) => r.database === 'app')
    const sv = (await admin.query('SHOW SERVERS')).rows.filter((r) => r.database === 'app')
    assert.equal(sv.length, group.length)
    const serverOf = new Map(sv.map((s) => [s.ptr, s]))
    for (const c of cl) {
      assert.equal(c.state, 'active')
      const s = serverOf.get(c.link)
      assert.ok(s, `client ${c.ptr} links to a listed server`)
      assert.equal(s.link, c.ptr)
      assert.equal(s.state, 'active')
      assert.ok(s.remote_pid > 0)
      assert.match(c.connect_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/)
    }
    await Promise.all(group.map((c) => c.query('COMMIT')))
    row = await poolRow()
    assert.equal(row.sv_active, 0)
    assert.equal(row.sv_idle, group.length)
    assert.equal(row.cl_active, group.length)
    const dbs = (await admin.query('SHOW DATABASES')).rows
    const app = dbs.find((r) => r.name === 'app')
    assert.equal(app.current_connections, group.length)
    assert.equal(app.current_client_connections, group.length)
    assert.equal(app.reserve_pool_size, 0)
    // 1.25: a client without a server is idle.
    const idle = (await admin.query('SHOW CLIENTS')).rows.filter((r) => r.database === 'app')
    assert.deepEqual([...new Set(idle.map((r) => r.state))], ['idle'])
    const users = (await admin.query('SHOW USERS')).rows
    const postgres = users.find((r) => r.name === 'postgres')
    assert.equal(postgres.current_connections, group.length)
    // The console session, logged in as postgres too, counts as one of the user's clients.
    assert.equal(postgres.current_client_connections, group.length + 1)
    assert.equal(postgres.pool_size, null)
    for (const c of group) await c.end()
  })

  test('SHOW STATS totals grow with the queries run', async () => {
    const stat = async () =>
      (await admin.query('SHOW STATS')).rows.find((r) => r.database === 'app')
    const before = await stat()
    const c = await connect('app')
    for (let i = 0; i < 10; i++) await c.query('SELECT 1')
    await c.query('BEGIN')
    await c.query('SELECT pg_sleep(0.3)')
    await c.query('COMMIT')
    const mid = await stat()
    assert.ok(Number(mid.total_query_count) >= Number(before.total_query_count) + 13)
    assert.ok(Number(mid.total_xact_count) >= Number(before.total_xact_count) + 11)
    assert.ok(Number(mid.total_received) > Number(before.total_received))
    assert.ok(Number(mid.total_sent) > Number(before.total_sent))
    // The 0.3 s transaction, on the workers' 100 ms clock.
    const xactTime = Number(mid.total_xact_time) - Number(before.total_xact_time)
    assert.ok(xactTime >= 150_000 && xactTime < 2_000_000, `xact time ${xactTime} µs`)
    // The pg_sleep query within it, measured on the same clock.
    const queryTime = Number(mid.total_query_time) - Number(before.total_query_time)
    assert.ok(queryTime >= 150_000 && queryTime < 2_000_000, `query time ${queryTime} µs`)
    // A client that leaves takes nothing away.
    await c.end()
    const after = await stat()
    assert.ok(Number(after.total_query_count) >= Number(mid.total_query_count))
    assert.ok(Number(after.total_sent) >= Number(mid.total_sent))
    // Averages cover the last stats_period (1 s here): they show the burst, then fade.
    let avg = after
    for (let i = 0; i < 30 && Number(avg.avg_query_count) === 0; i++) {
      await sleep(100)
      avg = await stat()
    }
    assert.ok(Number(avg.avg_query_count) > 0, 'avg_query_count over the last period')
    assert.ok(Number(avg.avg_recv) > 0)
  })

  test('only admin_users run commands; stats_users may SHOW; others are refused', async () => {
    const stranger = pooler.client({ database: 'pgbouncer', user: 'mallory' })
    stranger.on('error', () => {})
    await assert.rejects(stranger.connect(), { message: 'not allowed', code: '08P01' })
    const watcher = await connect('pgbouncer', 'watcher')
    assert.equal((await show('POOLS', watcher)).command, 'SHOW')
    await assert.rejects(watcher.query('PAUSE'), { message: 'admin access needed', code: '08P01' })
    await assert.rejects(watcher.query('SHOW FOO'), {
      message: "invalid command 'SHOW FOO', use SHOW HELP;",
    })
    await assert.rejects(admin.query('DISABLE'), { message: 'a database is required' })
    await assert.rejects(admin.query('PAUSE nosuch'), { message: 'no such database: nosuch' })
    await assert.rejects(admin.query('RESUME'), { message: 'pooler is not paused/suspended' })
    // Extended protocol: PgBouncer's error, then whatever follows costs the connection.
    await assert.rejects(watcher.query('SHOW POOLS', ['x']), {
      message: 'extended query protocol not supported by admin console',
    })
  })

  test('psql reads SHOW POOLS', {
    skip: skipWithout('psql', findPgTool('psql')),
  }, async () => {
    const { stdout } = await run(findPgTool('psql')!, [
      '-X',
      '-A',
      '-F',
      '|',
      '-c',
      'SHOW POOLS',
      pooler.url({ database: 'pgbouncer' }),
    ])
    const [header, ...lines] = stdout.trim().split('\n')
    assert.equal(header, PGBOUNCER_COLUMNS.POOLS.map(([n]) => n).join('|'))
    assert.ok(lines.some((l) => l.startsWith('pgbouncer|pgbouncer|')))
  })

  test('PAUSE waits for transactions, holds new queries until RESUME', async () => {
    const inTx = await connect('app')
    const later = await connect('app')
    await inTx.query('BEGIN')
    await inTx.query('SELECT 1')
    let paused = false
    const pause = admin.query('PAUSE').then((r) => {
      paused = true
      return r.command
    })
    await sleep(300)
    assert.equal(paused, false, 'PAUSE waits for the open transaction')
    // The transaction goes on; its end lets PAUSE complete.
    await inTx.query('SELECT 2')
    await inTx.query('COMMIT')
    assert.equal(await pause, 'PAUSE')
    assert.equal((await poolRow()).sv_idle, 0, 'servers closed by PAUSE')
    let answered = false
    const held = later.query('SELECT 42 AS n').then((r) => {
      answered = true
      return r.rows[0].n
    })
    await sleep(300)
    assert.equal(answered, false, 'a query during PAUSE waits')
    assert.equal((await poolRow()).cl_waiting, 1)
    await assert.rejects(admin.query('PAUSE'), { message: 'already suspended/paused' })
    assert.equal((await admin.query('RESUME')).command, 'RESUME')
    assert.equal(await held, 42)
  })

  test('KILL drops the database clients and keeps it paused until RESUME', async () => {
    const victim = await connect('app')
    await victim.query('BEGIN')
    await victim.query('SELECT 1')
    // Idle in its transaction: the FATAL arrives outside any query.
    const lost = new Promise<string>((resolve) => victim.once('error', (e) => resolve(e.message)))
    assert.equal((await admin.query('KILL app')).command, 'KILL')
    assert.equal(await lost, 'database removed')
    const dbs = (await admin.query('SHOW DATABASES')).rows
    assert.equal(dbs.find((r) => r.name === 'app').paused, 1)
    assert.equal((await admin.query('RESUME app')).command, 'RESUME')
    await assert.rejects(admin.query('RESUME app'), { message: 'database app is not paused' })
    assert.equal((await admin.query('RECONNECT app')).command, 'RECONNECT')
    await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    })
  })

  test('RELOAD applies a smaller pool_size across workers', async () => {
    writeFileSync(ini, iniText(3))
    assert.equal((await admin.query('RELOAD')).command, 'RELOAD')
    const dbs = (await admin.query('SHOW DATABASES')).rows
    assert.equal(dbs.find((r) => r.name === 'app').pool_size, 3)
    await admin.query('RECONNECT app')
    const group = await spreadClients(5)
    const begun = group.map((c) => c.query('BEGIN'))
    let row = await poolRow()
    for (let i = 0; i < 100 && (row.sv_active !== 3 || row.cl_waiting !== group.length - 3); i++) {
      await sleep(50)
      row = await poolRow()
    }
    assert.equal(row.sv_active, 3, 'the new pool_size holds across workers')
    assert.equal(row.cl_waiting, group.length - 3)
    assert.equal(row.sv_login, 0)
    assert.ok(Number(row.maxwait_us) > 0 || Number(row.maxwait) > 0)
    // As transactions end, the waiting clients get the freed servers.
    const settled = Promise.all(begun.map((p, i) => p.then(() => group[i].query('COMMIT'))))
    await settled
    assert.equal((await poolRow()).cl_waiting, 0)
    for (const c of group) await c.end()
  })

  test('SHUTDOWN stops the pooler with exit status 0', async () => {
    admin.query('SHUTDOWN').catch(() => {})
    assert.equal(await pooler.exited, 0)
  })
})
