import { Counter as ShmCounter } from '@pgbouncer-cluster/protocol/counters'
import {
  BUCKET_BOUNDS_US,
  type HistogramSnapshot,
  Latency,
  WorkerFigure,
} from '@pgbouncer-cluster/protocol/latency'
import type { SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import client, { type Metric, type RegistryContentType } from 'prom-client'
import type { AdminSnapshot } from './admin.ts'
import type { View } from './admin-views.ts'
import { BREAKER_STATES, type HostedDatabase, hostRows } from './host-roles.ts'
import type { NotifyFigures } from './notify.ts'

// /metrics: pgbouncer_exporter's metrics, made from the admin console's own
// views, plus what only the cluster can show (pgbouncer_cluster_*), read from
// shared memory. Everything is collected when scraped; nothing runs per
// transaction and no message but the console's one stats request per worker.

const { Counter, Gauge, collectDefaultMetrics } = client

type Registry = client.Registry<RegistryContentType>
/** prom-client takes the content type in its constructor; its typings leave the argument out. */
const newRegistry = (type: string): Registry =>
  new (client.Registry as unknown as new (type: string) => Registry)(type)

export const CONTENT_TYPE = {
  prometheus: client.Registry.PROMETHEUS_CONTENT_TYPE,
  openMetrics: client.Registry.OPENMETRICS_CONTENT_TYPE,
} as const
export type Format = keyof typeof CONTENT_TYPE

type Kind = 'counter' | 'gauge'
/** A SHOW column as pgbouncer_exporter maps it: metric name (after the view's prefix), kind, factor, help. */
type Column = [column: string, name: string, kind: Kind, factor: number, help: string]

// pgbouncer_exporter's metric table (its collector's map for SHOW STATS, POOLS
// and DATABASES): names, types, units and help texts as dashboards expect them.
const EXPORTER = {
  stats: {
    labels: ['database'],
    columns: [
      [
        'total_query_count',
        'queries_pooled_total',
        'counter',
        1,
        'Total number of SQL queries pooled',
      ],
      [
        'total_query_time',
        'queries_duration_seconds_total',
        'counter',
        1e-6,
        'Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries',
      ],
      [
        'total_received',
        'received_bytes_total',
        'counter',
        1,
        'Total volume in bytes of network traffic received by pgbouncer, shown as bytes',
      ],
      [
        'total_sent',
        'sent_bytes_total',
        'counter',
        1,
        'Total volume in bytes of network traffic sent by pgbouncer, shown as bytes',
      ],
      [
        'total_wait_time',
        'client_wait_seconds_total',
        'counter',
        1e-6,
        'Time spent by clients waiting for a server in seconds',
      ],
      [
        'total_xact_count',
        'sql_transactions_pooled_total',
        'counter',
        1,
        'Total number of SQL transactions pooled',
      ],
      [
        'total_xact_time',
        'server_in_transaction_seconds_total',
        'counter',
        1e-6,
        'Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction, either idle in transaction or executing queries',
      ],
      [
        'total_client_parse_count',
        'client_parses_total',
        'counter',
        1,
        'Total number of prepared statement Parse messages received from clients',
      ],
      [
        'total_server_parse_count',
        'server_parses_total',
        'counter',
        1,
        'Total number of prepared statement Parse messages sent by pgbouncer to PostgreSQL',
      ],
      [
        'total_bind_count',
        'binds_total',
        'counter',
        1,
        'Total number of prepared statements readied for execution with a Bind message',
      ],
    ],
  },
  pools: {
    labels: ['database', 'user'],
    columns: [
      [
        'cl_active',
        'client_active_connections',
        'gauge',
        1,
        'Client connections linked to server connection and able to process queries, shown as connection',
      ],
      [
        'cl_active_cancel_req',
        'client_active_cancel_connections',
        'gauge',
        1,
        'Client connections that have forwarded query cancellations to the server and are waiting for the server response',
      ],
      [
        'cl_waiting',
        'client_waiting_connections',
        'gauge',
        1,
        'Client connections waiting on a server connection, shown as connection',
      ],
      [
        'cl_waiting_cancel_req',
        'client_waiting_cancel_connections',
        'gauge',
        1,
        'Client connections that have not forwarded query cancellations to the server yet',
      ],
      [
        'sv_active',
        'server_active_connections',
        'gauge',
        1,
        'Server connections linked to a client connection, shown as connection',
      ],
      [
        'sv_active_cancel',
        'server_active_cancel_connections',
        'gauge',
        1,
        'Server connections that are currently forwarding a cancel request',
      ],
      [
        'sv_being_canceled',
        'server_being_canceled_connections',
        'gauge',
        1,
        'Servers that normally could become idle but are waiting to do so until all in-flight cancel requests have completed that were sent to cancel a query on this server',
      ],
      [
        'sv_idle',
        'server_idle_connections',
        'gauge',
        1,
        'Server connections idle and ready for a client query, shown as connection',
      ],
      [
        'sv_used',
        'server_used_connections',
        'gauge',
        1,
        'Server connections idle more than server_check_delay, needing server_check_query, shown as connection',
      ],
      [
        'sv_tested',
        'server_testing_connections',
        'gauge',
        1,
        'Server connections currently running either server_reset_query or server_check_query, shown as connection',
      ],
      [
        'sv_login',
        'server_login_connections',
        'gauge',
        1,
        'Server connections currently in the process of logging in, shown as connection',
      ],
      [
        'maxwait',
        'client_maxwait_seconds',
        'gauge',
        1,
        'Age of oldest unserved client connection, shown as second',
      ],
    ],
  },
  databases: {
    labels: ['name', 'host', 'port', 'database', 'force_user', 'pool_mode'],
    columns: [
      ['pool_size', 'pool_size', 'gauge', 1, 'Maximum number of server connections'],
      // 1.24 renamed the column; the exporter keeps the metric's name.
      [
        'reserve_pool_size',
        'reserve_pool',
        'gauge',
        1,
        'Maximum number of additional connections for this database',
      ],
      [
        'max_connections',
        'max_connections',
        'gauge',
        1,
        'Maximum number of allowed connections for this database',
      ],
      [
        'current_connections',
        'current_connections',
        'gauge',
        1,
        'Current number of connections for this database',
      ],
      ['paused', 'paused', 'gauge', 1, '1 if this database is currently paused, else 0'],
      ['disabled', 'disabled', 'gauge', 1, '1 if this database is currently disabled, else 0'],
    ],
  },
} as const satisfies Record<string, { labels: string[]; columns: Column[] }>

/** SHOW LISTS rows → pgbouncer_<name>. */
const LISTS: Record<string, [string, string]> = {
  databases: ['databases', 'Count of databases'],
  users: ['users', 'Count of users'],
  pools: ['pools', 'Count of pools'],
  free_clients: ['free_clients', 'Count of free clients'],
  used_clients: ['used_clients', 'Count of used clients'],
  login_clients: ['login_clients', 'Count of clients in login state'],
  free_servers: ['free_servers', 'Count of free servers'],
  used_servers: ['used_servers', 'Count of used servers'],
  dns_names: ['cached_dns_names', 'Count of DNS names in the cache'],
  dns_zones: ['cached_dns_zones', 'Count of DNS zones in the cache'],
  dns_queries: ['in_flight_dns_queries', 'Count of in-flight DNS queries'],
}

/** SHOW CONFIG keys → pgbouncer_config_<name>. */
const CONFIG: Record<string, [string, string]> = {
  max_client_conn: ['max_client_connections', 'Config maximum number of client connections'],
  max_user_connections: [
    'max_user_connections',
    'Config maximum number of server connections per user',
  ],
}

const HISTOGRAMS = [
  [Latency.query, 'query_duration_seconds', 'Time from a query (or Sync) to its ReadyForQuery'],
  [
    Latency.xact,
    'transaction_duration_seconds',
    'Time a server was linked to a client for one transaction (transaction and statement mode)',
  ],
  [
    Latency.wait,
    'client_wait_seconds',
    'Time a client waited for a server, for the clients that waited',
  ],
] as const

const HOST_ROLES = ['unknown', 'primary', 'standby', 'read-only primary'] as const

/** One entry of a database's host list (`host=a,b port=...`), in the list's order. */
export interface Host {
  host: string
  port: number
}

/** What the metrics need of the cluster, read at scrape time. */
export interface MetricsSource {
  shared: SharedMemory
  snapshot(): Promise<AdminSnapshot>
  /** Pool slots by (database, user), database slots by name: the registry's. */
  pools(): Iterable<{ database: string; user: string; slot: number }>
  databases(): Iterable<HostedDatabase>
  /** Worker ids with a live thread. */
  workers(): number[]
  /** The pool-slot tables: slots in use and how many there are (registry.ts). */
  slots(): Record<'databases' | 'users' | 'pools', { used: number; max: number }>
  /** Automatic databases freed so far (autodb_idle_timeout, or tables full). */
  databasesFreed(): number
  /** LISTEN/NOTIFY in transaction mode, per database that had listening clients (notify.ts). */
  notify?(): NotifyFigures[]
}

/**
 * The process figures (RSS, heap, GC, the main thread's event loop) come from
 * prom-client's default collectors, one set per format: OpenMetrics output
 * renames counters in place, so the two registries share no metric object.
 */
export class Metrics {
  private readonly source: MetricsSource
  private readonly process: Record<Format, Registry>

  constructor(source: MetricsSource) {
    this.source = source
    this.process = {
      prometheus: newRegistry(CONTENT_TYPE.prometheus),
      openMetrics: newRegistry(CONTENT_TYPE.openMetrics),
    }
    for (const register of Object.values(this.process)) {
      collectDefaultMetrics({ register, prefix: 'pgbouncer_cluster_' })
      // Gauges named *_total (active handles, requests, resources) break
      // Prometheus' naming rules; promtool rejects them.
      for (const m of register.getMetricsAsArray()) {
        const { name, type } = m as unknown as { name: string; type: string }
        if (type !== 'counter' && name.endsWith('_total')) register.removeSingleMetric(name)
      }
    }
  }

  /** The exposition text of every metric now, in the asked format. */
  async render(format: Format): Promise<string> {
    const reg = newRegistry(CONTENT_TYPE[format])
    let snapshot: AdminSnapshot | null = null
    try {
      snapshot = await this.source.snapshot()
    } catch {
      // pgbouncer_up says it; the cluster's own figures are still worth showing.
    }
    gauge(reg, 'pgbouncer_up', 'The pgbouncer scrape succeeded', []).set(snapshot?.complete ? 1 : 0)
    if (snapshot !== null) {
      this.exporterMetrics(reg, snapshot)
      sessionStateMetrics(reg, snapshot)
    }
    this.clusterMetrics(reg, snapshot)
    const own = await reg.metrics()
    const proc = await this.process[format].metrics()
    if (format === 'openMetrics') return `${proc.replace(/# EOF\n$/, '')}${own}`
    return `${own}\n${proc}`
  }

  private exporterMetrics(reg: Registry, s: AdminSnapshot): void {
    gauge(reg, 'pgbouncer_version_info', 'The pgbouncer version info', ['version']).set(
      { version: s.version },
      1,
    )
    fromView(reg, 'pgbouncer_stats_', EXPORTER.stats, s.stats)
    fromView(reg, 'pgbouncer_pools_', EXPORTER.pools, s.pools)
    fromView(reg, 'pgbouncer_databases_', EXPORTER.databases, s.databases)
    for (const [list, items] of s.lists.rows) {
      const m = LISTS[list!]
      if (m !== undefined) gauge(reg, `pgbouncer_${m[0]}`, m[1], []).set(Number(items))
    }
    for (const [key, value] of s.config.rows) {
      const m = CONFIG[key!]
      if (m !== undefined) gauge(reg, `pgbouncer_config_${m[0]}`, m[1], []).set(Number(value))
    }
  }

  private clusterMetrics(reg: Registry, s: AdminSnapshot | null): void {
    const { shared } = this.source
    const workers = this.source.workers()
    gauge(reg, 'pgbouncer_cluster_workers', 'Worker threads running', []).set(workers.length)

    // Per worker: clients and servers from the same reports as SHOW; the
    // rest from the worker's figures row in shared memory.
    const clients = gauge(
      reg,
      'pgbouncer_cluster_worker_clients',
      "Client connections of the worker (the console's included)",
      ['worker'],
    )
    const servers = gauge(
      reg,
      'pgbouncer_cluster_worker_servers',
      'Server connections of the worker',
      ['worker'],
    )
    for (const r of s?.reports ?? []) {
      const w = { worker: String(r.worker) }
      let c = r.admin?.sessions ?? 0
      let sv = 0
      for (const p of r.pools ?? []) {
        c += p.clActive + p.clWaiting
        sv += p.svActive + p.svIdle + p.svUsed + p.svLogin + p.svBeingCanceled
      }
      clients.set(w, c)
      servers.set(w, sv)
    }
    const f = shared.figures
    const delay = (name: string, help: string, figure: number) => {
      const g = gauge(reg, `pgbouncer_cluster_worker_event_loop_delay_${name}_seconds`, help, [
        'worker',
      ])
      for (const id of workers) g.set({ worker: String(id) }, f.read(id, figure) / 1e6)
    }
    delay(
      'mean',
      'Mean event-loop delay of the worker over the last second',
      WorkerFigure.loop_delay_mean_us,
    )
    delay(
      'p99',
      "99th percentile of the worker's event-loop delay over the last second",
      WorkerFigure.loop_delay_p99_us,
    )
    delay(
      'max',
      'Longest event-loop delay of the worker over the last second',
      WorkerFigure.loop_delay_max_us,
    )
    const cpu = counter(
      reg,
      'pgbouncer_cluster_worker_cpu_seconds_total',
      'CPU time of the worker thread',
      ['worker', 'mode'],
    )
    const heap = gauge(
      reg,
      'pgbouncer_cluster_worker_heap_used_bytes',
      'V8 heap in use by the worker thread',
      ['worker'],
    )
    for (const id of workers) {
      const w = String(id)
      cpu.inc({ worker: w, mode: 'user' }, f.read(id, WorkerFigure.cpu_user_us) / 1e6)
      cpu.inc({ worker: w, mode: 'system' }, f.read(id, WorkerFigure.cpu_system_us) / 1e6)
      heap.set({ worker: w }, f.read(id, WorkerFigure.heap_used_bytes))
    }

    // Per pool: the shared semaphore and the rebalance hand-overs.
    const inUse = gauge(
      reg,
      'pgbouncer_cluster_pool_permits_in_use',
      "Permits of the pool's shared semaphore held (server connections open or opening, all workers)",
      ['database', 'user'],
    )
    const waiters = gauge(
      reg,
      'pgbouncer_cluster_pool_permit_waiters',
      "Workers waiting for a permit of the pool's shared semaphore",
      ['database', 'user'],
    )
    const handovers = counter(
      reg,
      'pgbouncer_cluster_pool_handovers_total',
      "Servers a worker closed so that another worker's waiting clients get the permit",
      ['database', 'user'],
    )
    for (const p of this.source.pools()) {
      const labels = { database: p.database, user: p.user }
      const sem = shared.pool(p.slot)
      inUse.set(labels, sem.used())
      waiters.set(labels, sem.waiters())
      handovers.inc(labels, shared.counters.sum(p.slot, ShmCounter.handovers))
    }

    // The pool-slot tables in shared memory, and the automatic databases freed.
    const slotsUsed = gauge(
      reg,
      'pgbouncer_cluster_slots_in_use',
      'Slots of the shared-memory table given to a database, user or pool (freed with unused automatic databases)',
      ['table'],
    )
    const slotsMax = gauge(
      reg,
      'pgbouncer_cluster_slots',
      'Slots of the shared-memory table, in use or not',
      ['table'],
    )
    for (const [table, { used, max }] of Object.entries(this.source.slots())) {
      slotsUsed.set({ table }, used)
      slotsMax.set({ table }, max)
    }
    counter(
      reg,
      'pgbouncer_cluster_auto_databases_freed_total',
      'Automatic databases (made by the * entry) freed unused, after autodb_idle_timeout or because a table was full',
      [],
    ).inc(this.source.databasesFreed())

    // LISTEN/NOTIFY in transaction and statement mode (notify.ts).
    const listenerUp = gauge(
      reg,
      'pgbouncer_cluster_notify_listener_up',
      "1 while the database's listening server is logged in and listens, 0 while it is being opened again",
      ['database'],
    )
    const listenChannels = gauge(
      reg,
      'pgbouncer_cluster_notify_channels',
      "Channels the database's listening server listens to for the pooler's clients",
      ['database'],
    )
    const listenerGaps = counter(
      reg,
      'pgbouncer_cluster_notify_listener_gaps_total',
      "Times the database's listening server was lost or moved; notifications sent until it listened again were lost",
      ['database'],
    )
    const notifications = counter(
      reg,
      'pgbouncer_cluster_notifications_total',
      'Notifications the listening server received and fanned out to the workers with listening clients',
      ['database'],
    )
    for (const n of this.source.notify?.() ?? []) {
      const labels = { database: n.database }
      listenerUp.set(labels, n.up ? 1 : 0)
      listenChannels.set(labels, n.channels)
      listenerGaps.inc(labels, n.gaps)
      notifications.inc(labels, n.notifications)
    }

    // Per database: the circuit breaker and the latency histograms.
    const breaker = gauge(
      reg,
      'pgbouncer_cluster_breaker_state',
      'Circuit breaker of the database: 1 for the state it is in',
      ['database', 'state'],
    )
    const dbs = [...this.source.databases()]
    for (const db of dbs) {
      const state = shared.breaker(db.slot).state()
      BREAKER_STATES.forEach((name, i) => {
        breaker.set({ database: db.name, state: name }, state === i ? 1 : 0)
      })
    }
    // Per host of a host list: its own breaker, index h of the list. A
    // one-host database has none (its database breaker is the host's).
    const hostBreaker = gauge(
      reg,
      'pgbouncer_cluster_host_breaker_state',
      "Breaker of one host of the database's host list: 1 for the state it is in",
      ['database', 'host', 'port', 'state'],
    )
    const hostRole = gauge(
      reg,
      'pgbouncer_cluster_host_role',
      'What the last server login to the host (or its in_hot_standby report) said it is: 1 for its role (unknown, primary, standby, read-only primary)',
      ['database', 'host', 'port', 'role'],
    )
    for (const row of hostRows(shared, dbs)) {
      const labels = { database: row.database, host: row.host, port: String(row.port) }
      for (const role of HOST_ROLES) hostRole.set({ ...labels, role }, row.role === role ? 1 : 0)
      if (!row.inList) continue
      for (const name of BREAKER_STATES) {
        hostBreaker.set({ ...labels, state: name }, row.state === name ? 1 : 0)
      }
    }
    for (const [kind, name, help] of HISTOGRAMS) {
      histogram(
        reg,
        `pgbouncer_cluster_${name}`,
        help,
        dbs.map((db) => [db.name, shared.histograms.snapshot(db.slot, kind)]),
      )
    }
  }
}

function gauge(reg: Registry, name: string, help: string, labelNames: readonly string[]) {
  return new Gauge({ name, help, labelNames, registers: [reg] })
}

function counter(reg: Registry, name: string, help: string, labelNames: readonly string[]) {
  return new Counter({ name, help, labelNames, registers: [reg] })
}

/** SHOW SESSION_STATE as a counter, and the clients session_state_policy = pin holds. */
function sessionStateMetrics(reg: Registry, s: AdminSnapshot): void {
  const seen = counter(
    reg,
    'pgbouncer_cluster_session_state_total',
    'Statements that left session state on their server, per pool and kind (SHOW SESSION_STATE)',
    ['database', 'user', 'kind'],
  )
  for (const [database, user, kind, n] of s.sessionState.rows) {
    seen.inc({ database: database!, user: user!, kind: kind! }, Number(n))
  }
  const pinned = gauge(
    reg,
    'pgbouncer_cluster_session_state_pinned_clients',
    'Clients whose server session_state_policy = pin keeps linked until they leave',
    ['database', 'user'],
  )
  for (const p of s.pinned) pinned.set({ database: p.database, user: p.user }, p.count)
}

/** One metric per mapped column, one sample per row, as pgbouncer_exporter reads a SHOW. */
function fromView(
  reg: Registry,
  prefix: string,
  map: { labels: readonly string[]; columns: readonly Column[] },
  view: View,
): void {
  const index = new Map(view.columns.map(([name], i) => [name, i]))
  const labelAt = map.labels.map((l) => index.get(l)!)
  for (const [column, name, kind, factor, help] of map.columns) {
    const at = index.get(column)
    if (at === undefined) continue
    const metric =
      kind === 'counter'
        ? counter(reg, prefix + name, help, map.labels)
        : gauge(reg, prefix + name, help, map.labels)
    for (const row of view.rows) {
      const cell = row[at]
      if (cell === null || cell === undefined) continue
      const labels: Record<string, string> = {}
      map.labels.forEach((l, i) => {
        labels[l] = row[labelAt[i]!] ?? ''
      })
      const value = Number(cell) * factor
      if (metric instanceof Counter) metric.inc(labels, value)
      else metric.set(labels, value)
    }
  }
}

/**
 * A histogram whose buckets are already counted (in shared memory):
 * prom-client's Histogram only observes, so this hands the registry the
 * samples its own get() would.
 */
function histogram(
  reg: Registry,
  name: string,
  help: string,
  series: [database: string, HistogramSnapshot][],
): void {
  const bounds = BUCKET_BOUNDS_US.map((us) => String(us / 1e6))
  const values: { labels: Record<string, string | number>; value: number; metricName: string }[] =
    []
  for (const [database, h] of series) {
    h.cumulative.forEach((n, b) => {
      values.push({
        metricName: `${name}_bucket`,
        labels: { database, le: b < bounds.length ? bounds[b]! : '+Inf' },
        value: n,
      })
    })
    values.push({ metricName: `${name}_sum`, labels: { database }, value: h.sumUs / 1e6 })
    values.push({ metricName: `${name}_count`, labels: { database }, value: h.cumulative.at(-1)! })
  }
  const metric = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    get: async () => ({ name, help, type: 'histogram', aggregator: 'sum', values }),
    reset: () => {},
  }
  reg.registerMetric(metric as unknown as Metric)
}
