import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import { after, before, describe, test } from 'node:test'
import { findTool, skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import {
  freePort,
  metricsBase,
  type Pooler,
  parseMetrics as parse,
  type Samples,
  startPooler,
  writeIni,
} from './support.ts'

// --metrics: real HTTP requests, bodies checked by Prometheus' own parser
// (promtool, from Debian's prometheus package, which .ci/run installs; the
// tests that need it skip without it).

const PROMTOOL = findTool('promtool')
const NO_PROMTOOL = skipWithout('promtool', PROMTOOL)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Response {
  status: number
  type: string
  body: string
}

async function get(base: string, path: string, init: RequestInit = {}): Promise<Response> {
  const res = await fetch(`${base}${path}`, { ...init, signal: AbortSignal.timeout(15_000) })
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() }
}

/** promtool check metrics: exit 0 means the text parsed and passed its lint. */
function promtoolCheck(body: string): string {
  try {
    return execFileSync(PROMTOOL!, ['check', 'metrics'], { input: body, encoding: 'utf8' })
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string }
    throw new Error(`promtool check metrics failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`)
  }
}

function value(samples: Samples, key: string): number {
  const v = samples.get(key)
  assert.ok(v !== undefined, `no sample ${key}`)
  return v
}

describe('--metrics', { timeout: 120_000 }, () => {
  const db = usePostgres({ databases: ['app'] })
  let pooler: Pooler
  let base: string
  let admin: pg.Client
  let app: pg.Client

  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app pool_size=4` },
      pgbouncer: { pool_mode: 'transaction', admin_users: 'postgres', max_client_conn: 77 },
    })
    pooler = await startPooler(ini, {
      workers: 2,
      args: ['--metrics', '127.0.0.1:0'],
      timeoutMs: 60_000,
    })
    base = metricsBase(pooler)
    admin = pooler.client({ database: 'pgbouncer' })
    app = pooler.client({ database: 'app' })
    await admin.connect()
    await app.connect()
  })
  after(async () => {
    await admin?.end().catch(() => {})
    await app?.end().catch(() => {})
    await pooler?.stop('SIGQUIT')
  })

  test('/health and /ready answer 200, other paths 404, other methods 405', async () => {
    assert.equal((await get(base, '/health')).status, 200)
    assert.equal((await get(base, '/ready')).status, 200)
    assert.equal((await get(base, '/')).status, 404)
    assert.equal((await get(base, '/metricsx')).status, 404)
    assert.equal((await get(base, '/metrics', { method: 'POST' })).status, 405)
  })

  test('promtool accepts /metrics', { skip: NO_PROMTOOL }, async () => {
    await app.query('SELECT 1')
    promtoolCheck((await get(base, '/metrics')).body)
  })

  test('/metrics is Prometheus text with the exporter names', async () => {
    await app.query('SELECT 1')
    const res = await get(base, '/metrics')
    assert.equal(res.status, 200)
    assert.match(res.type, /^text\/plain; version=0\.0\.4/)
    const s = parse(res.body)
    assert.equal(value(s, 'pgbouncer_up'), 1)
    assert.equal(value(s, 'pgbouncer_config_max_client_connections'), 77)
    for (const name of [
      'pgbouncer_stats_queries_pooled_total{database="app"}',
      'pgbouncer_stats_sql_transactions_pooled_total{database="app"}',
      'pgbouncer_stats_queries_duration_seconds_total{database="app"}',
      'pgbouncer_stats_client_wait_seconds_total{database="app"}',
      'pgbouncer_stats_server_in_transaction_seconds_total{database="app"}',
      'pgbouncer_stats_received_bytes_total{database="app"}',
      'pgbouncer_stats_sent_bytes_total{database="app"}',
      'pgbouncer_pools_client_active_connections{database="app",user="postgres"}',
      'pgbouncer_pools_client_waiting_connections{database="app",user="postgres"}',
      'pgbouncer_pools_server_active_connections{database="app",user="postgres"}',
      'pgbouncer_pools_server_idle_connections{database="app",user="postgres"}',
      'pgbouncer_pools_client_maxwait_seconds{database="app",user="postgres"}',
      'pgbouncer_databases_pool_size{name="app",host="127.0.0.1",port="' +
        db.server.port +
        '",database="app",force_user="",pool_mode=""}',
      'pgbouncer_pools{}',
      'pgbouncer_cluster_workers{}',
      'pgbouncer_cluster_pool_permits_in_use{database="app",user="postgres"}',
      'pgbouncer_cluster_pool_handovers_total{database="app",user="postgres"}',
      'pgbouncer_cluster_breaker_state{database="app",state="closed"}',
      'pgbouncer_cluster_query_duration_seconds_bucket{database="app",le="+Inf"}',
      'pgbouncer_cluster_transaction_duration_seconds_count{database="app"}',
      'pgbouncer_cluster_client_wait_seconds_sum{database="app"}',
      'pgbouncer_cluster_worker_clients{worker="0"}',
      'pgbouncer_cluster_worker_cpu_seconds_total{worker="1",mode="user"}',
      'pgbouncer_cluster_process_resident_memory_bytes',
      'pgbouncer_cluster_nodejs_heap_size_used_bytes',
    ]) {
      const key = name.endsWith('{}') ? name.slice(0, -2) : name
      assert.ok(s.has(key) || [...s.keys()].some((k) => k.startsWith(`${key}{`)), `missing ${key}`)
    }
    assert.equal(value(s, 'pgbouncer_cluster_breaker_state{database="app",state="closed"}'), 1)
    assert.equal(value(s, 'pgbouncer_cluster_workers'), 2)
    assert.ok(
      value(s, 'pgbouncer_cluster_pool_permits_in_use{database="app",user="postgres"}') >= 1,
    )
  })

  test('per-worker and process figures are filled: CPU, heap, event-loop delay, RSS, GC', async () => {
    // Each worker rewrites its figures row about once a second.
    let s = parse((await get(base, '/metrics')).body)
    const w = (name: string, id: number) =>
      value(s, `pgbouncer_cluster_worker_${name}{worker="${id}"}`)
    for (let i = 0; i < 100 && !(w('heap_used_bytes', 0) > 0 && w('heap_used_bytes', 1) > 0); i++) {
      await sleep(100)
      s = parse((await get(base, '/metrics')).body)
    }
    for (const id of [0, 1]) {
      assert.ok(w('heap_used_bytes', id) > 1e6, `worker ${id} heap`)
      assert.ok(w('event_loop_delay_max_seconds', id) > 0, `worker ${id} event-loop delay`)
      assert.ok(w('event_loop_delay_max_seconds', id) >= w('event_loop_delay_p99_seconds', id))
      const cpu =
        value(s, `pgbouncer_cluster_worker_cpu_seconds_total{worker="${id}",mode="user"}`) +
        value(s, `pgbouncer_cluster_worker_cpu_seconds_total{worker="${id}",mode="system"}`)
      assert.ok(cpu > 0, `worker ${id} CPU`)
    }
    assert.ok(value(s, 'pgbouncer_cluster_process_resident_memory_bytes') > 10e6)
    assert.ok(value(s, 'pgbouncer_cluster_nodejs_heap_size_used_bytes') > 1e6)
    assert.ok(value(s, 'pgbouncer_cluster_process_cpu_seconds_total') > 0)
    const body = (await get(base, '/metrics')).body
    assert.match(body, /^# TYPE pgbouncer_cluster_nodejs_gc_duration_seconds histogram$/m)
  })

  test('stuck scrapers block nobody: clients, the console and other scrapes are served meanwhile', async () => {
    const url = new URL(base)
    // One sends half a request and stops; others ask for /metrics and never read the answer.
    const stuck: net.Socket[] = []
    const open = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const sock = net.connect(Number(url.port), url.hostname, () => resolve(sock))
        sock.on('error', reject)
        stuck.push(sock)
      })
    try {
      ;(await open()).write('GET /metrics HTTP/1.1\r\nHost: x\r\n')
      for (let i = 0; i < 5; i++) {
        const sock = await open()
        sock.pause()
        sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n')
      }
      for (let i = 0; i < 20; i++)
        assert.equal((await app.query('SELECT $1::int AS n', [i])).rows[0].n, i)
      assert.ok((await admin.query('SHOW POOLS')).rows.length > 0)
      const res = await get(base, '/metrics')
      assert.equal(res.status, 200)
      assert.equal(value(parse(res.body), 'pgbouncer_up'), 1)
    } finally {
      for (const sock of stuck) sock.destroy()
    }
  })

  test('OpenMetrics when the scraper asks for it', async () => {
    const res = await get(base, '/metrics', {
      headers: { accept: 'application/openmetrics-text; version=1.0.0,text/plain;q=0.5' },
    })
    assert.equal(res.status, 200)
    assert.match(res.type, /^application\/openmetrics-text; version=1\.0\.0/)
    assert.match(res.body, /\n# EOF\n$/)
    assert.equal(res.body.match(/# EOF/g)?.length, 1)
    assert.match(res.body, /^# TYPE pgbouncer_stats_queries_pooled counter$/m)
    assert.match(res.body, /^pgbouncer_stats_queries_pooled_total\{database="app"\} \d+$/m)
    // The Prometheus format afterwards still has its counters' full names.
    const again = parse((await get(base, '/metrics')).body)
    assert.ok(again.has('pgbouncer_stats_queries_pooled_total{database="app"}'))
  })

  test('after N queries the counters and histograms rose by N', async () => {
    const key = (name: string) => `${name}{database="app"}`
    const before = parse((await get(base, '/metrics')).body)
    const N = 37
    for (let i = 0; i < N; i++) await app.query('SELECT $1::int', [i])
    const after = parse((await get(base, '/metrics')).body)
    const rose = (name: string) => value(after, key(name)) - value(before, key(name))
    assert.equal(rose('pgbouncer_stats_queries_pooled_total'), N)
    assert.equal(rose('pgbouncer_stats_sql_transactions_pooled_total'), N)
    assert.equal(rose('pgbouncer_cluster_query_duration_seconds_count'), N)
    assert.equal(rose('pgbouncer_cluster_transaction_duration_seconds_count'), N)
    assert.ok(rose('pgbouncer_stats_received_bytes_total') > 0)
    assert.ok(rose('pgbouncer_cluster_query_duration_seconds_sum') > 0)
    // Cumulative buckets never fall, and +Inf holds them all.
    const buckets = [...after.entries()].filter(([k]) =>
      k.startsWith('pgbouncer_cluster_query_duration_seconds_bucket{database="app"'),
    )
    assert.ok(buckets.length > 30)
    for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]![1] >= buckets[i - 1]![1])
    assert.equal(
      buckets.at(-1)![1],
      value(after, key('pgbouncer_cluster_query_duration_seconds_count')),
    )
  })

  test('the metrics equal SHOW STATS and SHOW POOLS', async () => {
    await app.query('SELECT pg_sleep(0.01)')
    // Nothing moves between the two reads: the app client is idle, and the
    // console's own query counts only in the pgbouncer database's rows.
    const stats = (await admin.query('SHOW STATS')).rows.find((r) => r.database === 'app')
    const pools = (await admin.query('SHOW POOLS')).rows.find(
      (r) => r.database === 'app' && r.user === 'postgres',
    )
    const s = parse((await get(base, '/metrics')).body)
    const stat = (name: string) => value(s, `pgbouncer_stats_${name}{database="app"}`)
    assert.equal(stat('queries_pooled_total'), Number(stats.total_query_count))
    assert.equal(stat('sql_transactions_pooled_total'), Number(stats.total_xact_count))
    assert.equal(stat('received_bytes_total'), Number(stats.total_received))
    assert.equal(stat('sent_bytes_total'), Number(stats.total_sent))
    assert.equal(stat('queries_duration_seconds_total'), Number(stats.total_query_time) * 1e-6)
    assert.equal(stat('server_in_transaction_seconds_total'), Number(stats.total_xact_time) * 1e-6)
    assert.equal(stat('client_wait_seconds_total'), Number(stats.total_wait_time) * 1e-6)
    const pool = (name: string) =>
      value(s, `pgbouncer_pools_${name}{database="app",user="postgres"}`)
    assert.equal(pool('client_active_connections'), Number(pools.cl_active))
    assert.equal(pool('client_waiting_connections'), Number(pools.cl_waiting))
    assert.equal(pool('server_active_connections'), Number(pools.sv_active))
    assert.equal(pool('server_idle_connections'), Number(pools.sv_idle))
    assert.equal(pool('server_used_connections'), Number(pools.sv_used))
    assert.equal(pool('server_login_connections'), Number(pools.sv_login))
    assert.equal(pool('client_maxwait_seconds'), Number(pools.maxwait))
    assert.equal(pool('client_active_connections'), 1)
    assert.ok(pool('server_idle_connections') >= 1)
  })
})

describe('--metrics /ready during a drain', { timeout: 120_000 }, () => {
  const db = usePostgres()

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    test(`/ready turns 503 at ${signal} while /health stays 200 until the exit`, async () => {
      const ini = writeIni({
        databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
        pgbouncer: { pool_mode: 'session' },
      })
      const pooler = await startPooler(ini, {
        workers: 1,
        args: ['--metrics', '127.0.0.1:0'],
        timeoutMs: 60_000,
      })
      const base = metricsBase(pooler)
      // A client in an open transaction keeps either graceful shutdown
      // draining (SIGTERM waits for clients, SIGINT for servers).
      const c = pooler.client()
      c.on('error', () => {})
      await c.connect()
      await c.query('BEGIN')
      await c.query('SELECT 1')
      try {
        assert.equal((await get(base, '/ready')).status, 200)
        pooler.child.kill(signal)
        let ready = 200
        for (let i = 0; i < 200 && ready === 200; i++) {
          ready = (await get(base, '/ready')).status
          if (ready === 200) await sleep(50)
        }
        assert.equal(ready, 503)
        assert.equal((await get(base, '/health')).status, 200)
        assert.equal(pooler.child.exitCode, null, 'still draining')
        // The client's transaction is untouched by the drain.
        assert.equal((await c.query('SELECT 2 AS n')).rows[0].n, 2)
        await c.query('COMMIT')
      } finally {
        await c.end().catch(() => {})
      }
      const code = await Promise.race([pooler.exited, sleep(60_000).then(() => 'timeout')])
      if (code === 'timeout') await pooler.stop('SIGQUIT')
      assert.equal(code, 0)
    })
  }
})

const DASHBOARD = new URL('../../../deploy/grafana/pgbouncer-cluster.json', import.meta.url)

/** Every PromQL query of the dashboard (panels' targets and template variables). */
function dashboardQueries(): string[] {
  const out: string[] = []
  const walk = (v: unknown, key: string): void => {
    if (typeof v === 'string') {
      if (key === 'expr' || key === 'query') out.push(v)
    } else if (Array.isArray(v)) for (const x of v) walk(x, key)
    else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, k)
  }
  walk(JSON.parse(readFileSync(DASHBOARD, 'utf8')), '')
  return out.filter((q) => q.includes('pgbouncer_'))
}

/** Sample names of a body, each with the label names its samples carry. */
function labelsByName(body: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>()
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? /.exec(line)
    if (m === null) continue
    const labels = out.get(m[1]!) ?? new Set<string>()
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="/g)) labels.add(l[1]!)
    out.set(m[1]!, labels)
  }
  return out
}

describe('--metrics with a host list', { timeout: 120_000 }, () => {
  // One PostgreSQL on 127.0.0.2; nothing listens on 127.0.0.3 (Linux answers
  // on all of 127.0.0.0/8, so the login is refused at once).
  const db = usePostgres({ host: '127.0.0.2', databases: ['app'] })
  let pooler: Pooler
  let base: string
  let up: { host: string; port: string }
  let down: { host: string; port: string }

  before(async () => {
    up = { host: db.server.host, port: String(db.server.port) }
    down = { host: '127.0.0.3', port: String(await freePort()) }
    const ini = writeIni({
      databases: {
        app: `host=${up.host},${down.host} port=${up.port},${down.port} dbname=app`,
      },
      // A long cool-down keeps the refusing host open until the scrape.
      pgbouncer: { pool_mode: 'session', default_pool_size: 10, server_login_retry: 60 },
    })
    pooler = await startPooler(ini, {
      workers: 1,
      args: ['--metrics', '127.0.0.1:0'],
      timeoutMs: 60_000,
    })
    base = metricsBase(pooler)
  })
  after(() => pooler?.stop('SIGQUIT'))

  /**
   * Four servers opened at once, in round-robin: at least one login picks the
   * refusing host and fails over to the other, and no client sees it.
   */
  async function openServers(): Promise<void> {
    const clients = Array.from({ length: 4 }, () => pooler.client({ database: 'app' }))
    try {
      await Promise.all(clients.map((c) => c.connect()))
      await Promise.all(clients.map((c) => c.query('BEGIN')))
      const addrs = await Promise.all(
        clients.map(async (c) => (await c.query('SELECT host(inet_server_addr()) AS a')).rows[0].a),
      )
      assert.deepEqual(new Set(addrs), new Set([up.host]))
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
    }
  }

  test('breaker state per host: the host that refuses shows open, the other host and the database stay closed', async () => {
    const state = (s: Samples, h: { host: string; port: string }, st: string) =>
      value(
        s,
        `pgbouncer_cluster_host_breaker_state{database="app",host="${h.host}",port="${h.port}",state="${st}"}`,
      )
    const before = parse((await get(base, '/metrics')).body)
    assert.ok(
      ![...before.keys()].some((k) => k.startsWith('pgbouncer_cluster_host_breaker_state{')),
      'no database has been used yet',
    )
    await openServers()
    const res = await get(base, '/metrics')
    const s = parse(res.body)
    assert.equal(state(s, down, 'open'), 1)
    assert.equal(state(s, down, 'closed'), 0)
    assert.equal(state(s, up, 'closed'), 1)
    assert.equal(state(s, up, 'open'), 0)
    assert.equal(value(s, 'pgbouncer_cluster_breaker_state{database="app",state="closed"}'), 1)
  })

  test('promtool accepts /metrics with the host breakers in it', {
    skip: NO_PROMTOOL,
  }, async () => {
    await openServers()
    const body = (await get(base, '/metrics')).body
    assert.match(body, /pgbouncer_cluster_host_breaker_state\{/)
    promtoolCheck(body)
  })

  test('every metric the Grafana dashboard queries is in the body, with the labels it uses', async () => {
    await openServers()
    const body = (await get(base, '/metrics')).body
    const have = labelsByName(body)
    const queries = dashboardQueries()
    assert.ok(queries.length >= 20, `only ${queries.length} queries found in the dashboard`)
    const checked = new Set<string>()
    for (const q of queries) {
      const names = [...new Set(q.match(/\bpgbouncer_[a-zA-Z0-9_:]*/g) ?? [])]
      // Labels the query selects on or groups by (`le` only belongs to buckets).
      const used = new Set<string>()
      for (const m of q.matchAll(/\{([^}]*)\}/g))
        for (const l of m[1]!.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)) used.add(l[1]!)
      for (const m of q.matchAll(/\bby\s*\(([^)]*)\)/g))
        for (const l of m[1]!.split(',')) if (l.trim() !== '') used.add(l.trim())
      for (const name of names) {
        checked.add(name)
        const family = name.replace(/_(bucket|sum|count)$/, '')
        // A histogram nothing has observed yet (GC) has its TYPE line and no sample.
        const declared = new RegExp(`^# TYPE ${family} histogram$`, 'm').test(body)
        assert.ok(
          have.has(name) || (name !== family && declared),
          `${name} (in ${q}) is not served`,
        )
        for (const l of used) {
          if (l === 'le' && !name.endsWith('_bucket')) continue
          if (!have.has(name)) continue
          assert.ok(have.get(name)!.has(l), `${name} has no label ${l} (used in ${q})`)
        }
      }
    }
    assert.ok(checked.has('pgbouncer_cluster_host_breaker_state'))
    assert.ok(checked.size >= 25, `${checked.size} names checked`)
  })
})
