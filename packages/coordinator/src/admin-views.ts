import type {
  AdminColumn,
  ConnectionInfo,
  PeerPoolStats,
  PoolStats,
} from '@pgbouncer-cluster/protocol/control'
import { SESSION_KINDS } from '@pgbouncer-cluster/worker/session-state/classify'
import { type Config, resolveDatabase } from './config/config.ts'
import { formatSettingValue, SETTINGS } from './config/settings.ts'
import type { HostRow } from './host-roles.ts'

// The admin console's SHOW views, with PgBouncer's column names, types and
// order (tooling such as pgbouncer_exporter reads them by name), built from
// the workers' reports summed over the cluster. The statistics are 1.24's;
// POOLS, DATABASES, USERS, LISTS and the client/server lists are 1.25's; the
// other views are as 1.18 had them.

export type Row = (string | null)[]
export interface View {
  columns: AdminColumn[]
  rows: Row[]
}

const TEXT = 25
const INT4 = 23
const INT8 = 20
const NUMERIC = 1700

const cols = (type: number, ...names: string[]): AdminColumn[] => names.map((n) => [n, type])

export const ADMIN_DATABASE = 'pgbouncer'
/** What PgBouncer's console reports as its own pool and user. */
const ADMIN_USER = 'pgbouncer'

/** SHOW STATS' counters in PgBouncer 1.24's order, under the names each view gives them. */
const STAT_NAMES = {
  stats: [
    'server_assignment_count',
    'xact_count',
    'query_count',
    'received',
    'sent',
    'xact_time',
    'query_time',
    'wait_time',
    'client_parse_count',
    'server_parse_count',
    'bind_count',
  ],
  averages: [
    'server_assignment_count',
    'xact_count',
    'query_count',
    'recv',
    'sent',
    'xact_time',
    'query_time',
    'wait_time',
    'client_parse_count',
    'server_parse_count',
    'bind_count',
  ],
  parts: [
    'server_assignment_count',
    'xact_count',
    'query_count',
    'bytes_received',
    'bytes_sent',
    'xact_time',
    'query_time',
    'wait_time',
    'client_parse_count',
    'server_parse_count',
    'bind_count',
  ],
  totals: [
    'server_assignment_count',
    'xact_count',
    'query_count',
    'client_bytes',
    'server_bytes',
    'xact_time',
    'query_time',
    'wait_time',
    'ps_client_parse_count',
    'ps_server_parse_count',
    'ps_bind_count',
  ],
} as const

export const COLUMNS = {
  pools: [
    ...cols(TEXT, 'database', 'user'),
    ...cols(
      INT4,
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
    ),
    ...cols(TEXT, 'pool_mode', 'load_balance_hosts'),
  ],
  stats: [
    ...cols(TEXT, 'database'),
    ...cols(NUMERIC, ...STAT_NAMES.stats.map((n) => `total_${n}`)),
    ...cols(NUMERIC, ...STAT_NAMES.averages.map((n) => `avg_${n}`)),
  ],
  statsTotals: [...cols(TEXT, 'database'), ...cols(NUMERIC, ...STAT_NAMES.parts)],
  // 1.24 names the prepared-statement columns of STATS_AVERAGES with their avg_ prefix.
  statsAverages: [
    ...cols(TEXT, 'database'),
    ...cols(
      NUMERIC,
      ...STAT_NAMES.parts.map((n, i) => (i >= STAT_NAMES.parts.length - 3 ? `avg_${n}` : n)),
    ),
  ],
  totals: [...cols(TEXT, 'name'), ...cols(NUMERIC, 'value')],
  // 1.23+: `replication` after `database`; `prepared_statements` (1.21) and `id` at the end.
  connections: [
    ...cols(TEXT, 'type', 'user', 'database', 'replication', 'state', 'addr'),
    ...cols(INT4, 'port'),
    ...cols(TEXT, 'local_addr'),
    ...cols(INT4, 'local_port'),
    ...cols(TEXT, 'connect_time', 'request_time'),
    ...cols(INT4, 'wait', 'wait_us', 'close_needed'),
    ...cols(TEXT, 'ptr', 'link'),
    ...cols(INT4, 'remote_pid'),
    ...cols(TEXT, 'tls', 'application_name'),
    ...cols(INT4, 'prepared_statements'),
    ...cols(INT8, 'id'),
  ],
  // Ours (issue 29): statements seen per pool and kind of session state.
  sessionState: [...cols(TEXT, 'database', 'user', 'kind'), ...cols(INT8, 'count')],
  state: cols(TEXT, 'key', 'value'),
  // 1.24+: reserve_pool became reserve_pool_size; server_lifetime (1.23), load_balance_hosts
  // and the client counts came in before paused and disabled.
  databases: [
    ...cols(TEXT, 'name', 'host'),
    ...cols(INT4, 'port'),
    ...cols(TEXT, 'database', 'force_user'),
    ...cols(INT4, 'pool_size', 'min_pool_size', 'reserve_pool_size', 'server_lifetime'),
    ...cols(TEXT, 'pool_mode', 'load_balance_hosts'),
    ...cols(
      INT4,
      'max_connections',
      'current_connections',
      'max_client_connections',
      'current_client_connections',
      'paused',
      'disabled',
    ),
  ],
  config: cols(TEXT, 'key', 'value', 'default', 'changeable'),
  lists: [...cols(TEXT, 'list'), ...cols(INT4, 'items')],
  // 1.24+: the user's overrides (text, NULL when not set) and its counts.
  users: [
    ...cols(TEXT, 'name', 'pool_size', 'reserve_pool_size', 'pool_mode'),
    ...cols(
      INT4,
      'max_user_connections',
      'current_connections',
      'max_user_client_connections',
      'current_client_connections',
    ),
  ],
  version: cols(TEXT, 'version'),
  dnsHosts: [...cols(TEXT, 'hostname'), ...cols(INT8, 'ttl'), ...cols(TEXT, 'addrs')],
  mem: [...cols(TEXT, 'name'), ...cols(INT4, 'size', 'used', 'free', 'memtotal')],
  dnsZones: [...cols(TEXT, 'zonename'), ...cols(INT8, 'serial'), ...cols(INT4, 'count')],
  // PgBouncer 1.19+.
  peers: [...cols(INT4, 'peer_id'), ...cols(TEXT, 'host'), ...cols(INT4, 'port', 'pool_size')],
  // Ours: PgBouncer has no view of its hosts.
  hosts: [
    ...cols(TEXT, 'database', 'host'),
    ...cols(INT4, 'port'),
    ...cols(TEXT, 'state', 'role', 'target_session_attrs'),
  ],
  peerPools: cols(
    INT4,
    'peer_id',
    'cl_active_cancel_req',
    'cl_waiting_cancel_req',
    'sv_active_cancel',
    'sv_login',
  ),
} as const satisfies Record<string, AdminColumn[]>
/** SHOW SOCKETS: the client and server lists' columns, then PgBouncer's buffer positions. */
const SOCKET_COLUMNS: AdminColumn[] = [
  ...COLUMNS.connections,
  ...cols(
    INT4,
    'recv_pos',
    'pkt_pos',
    'pkt_remain',
    'send_pos',
    'send_remain',
    'pkt_avail',
    'send_avail',
  ),
]

/** One SHOW STATS line: the counters of a database (or of all), as totals or per-period averages. */
export type StatLine = Pick<
  PoolStats,
  | 'serverAssignmentCount'
  | 'xactCount'
  | 'queryCount'
  | 'bytesReceived'
  | 'bytesSent'
  | 'xactUs'
  | 'queryUs'
  | 'waitUs'
  | 'clientParseCount'
  | 'serverParseCount'
  | 'bindCount'
>

/** Also the columns' order. */
export const ZERO_STATS: StatLine = {
  serverAssignmentCount: 0,
  xactCount: 0,
  queryCount: 0,
  bytesReceived: 0,
  bytesSent: 0,
  xactUs: 0,
  queryUs: 0,
  waitUs: 0,
  clientParseCount: 0,
  serverParseCount: 0,
  bindCount: 0,
}
const STAT_KEYS = Object.keys(ZERO_STATS) as (keyof StatLine)[]

/** What the workers reported, summed: pools by (database, user), plus the console itself. */
export interface ClusterStats {
  pools: PoolStats[]
  adminSessions: number
  adminQueries: number
  /** Peers a cancel was forwarded to (SHOW PEER_POOLS' rows). */
  peerPools: number
}

const num = (n: number) => String(Math.round(n))
const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

/** Every worker's pools summed into one row per (database, user), sorted as PgBouncer lists them. */
export function mergePools(reports: PoolStats[][]): PoolStats[] {
  const merged = new Map<string, PoolStats>()
  for (const pools of reports) {
    for (const p of pools) {
      const key = `${p.database}\u0000${p.user}`
      const m = merged.get(key)
      if (m === undefined) {
        merged.set(key, { ...p, sessionState: p.sessionState?.slice() })
        continue
      }
      for (const k of SUMMED) m[k] += p[k]
      m.maxWaitUs = Math.max(m.maxWaitUs, p.maxWaitUs)
      m.pinned = (m.pinned ?? 0) + (p.pinned ?? 0)
      if (p.sessionState !== undefined) {
        const into = (m.sessionState ??= [])
        p.sessionState.forEach((n, i) => {
          into[i] = (into[i] ?? 0) + n
        })
      }
    }
  }
  return [...merged.values()].sort(
    (a, b) => byName(a.database, b.database) || byName(a.user, b.user),
  )
}

const SUMMED = [
  'clActive',
  'clWaiting',
  'svActive',
  'svIdle',
  'svUsed',
  'svLogin',
  'svBeingCanceled',
  'xactCount',
  'queryCount',
  'bytesReceived',
  'bytesSent',
  'xactUs',
  'queryUs',
  'waitUs',
  'serverAssignmentCount',
  'clientParseCount',
  'serverParseCount',
  'bindCount',
] as const satisfies (keyof PoolStats)[]

/** Per database (and '' for all of them): the totals SHOW STATS starts from. */
export function statTotals(stats: ClusterStats): Map<string, StatLine> {
  const out = new Map<string, StatLine>()
  const add = (key: string, s: StatLine) => {
    const line = out.get(key) ?? { ...ZERO_STATS }
    for (const k of STAT_KEYS) line[k] += s[k]
    out.set(key, line)
  }
  for (const p of stats.pools) {
    add(p.database, p)
    add('', p)
  }
  // PgBouncer counts each console command as a query and a transaction of its own database.
  const admin = { ...ZERO_STATS, xactCount: stats.adminQueries, queryCount: stats.adminQueries }
  add(ADMIN_DATABASE, admin)
  add('', admin)
  return out
}

/**
 * PgBouncer's averages over one stats_period: counts per second; times per
 * transaction, per query, and (1.23+) wait time per server assignment.
 */
export function averages(now: StatLine, before: StatLine, seconds: number): StatLine {
  const d = (k: keyof StatLine) => now[k] - before[k]
  const xacts = d('xactCount')
  const queries = d('queryCount')
  const assignments = d('serverAssignmentCount')
  return {
    serverAssignmentCount: assignments / seconds,
    xactCount: xacts / seconds,
    queryCount: queries / seconds,
    bytesReceived: d('bytesReceived') / seconds,
    bytesSent: d('bytesSent') / seconds,
    xactUs: xacts > 0 ? d('xactUs') / xacts : 0,
    queryUs: queries > 0 ? d('queryUs') / queries : 0,
    waitUs: assignments > 0 ? d('waitUs') / assignments : 0,
    clientParseCount: d('clientParseCount') / seconds,
    serverParseCount: d('serverParseCount') / seconds,
    bindCount: d('bindCount') / seconds,
  }
}

const statValues = (s: StatLine): string[] => STAT_KEYS.map((k) => num(s[k]))

/** log_stats: PgBouncer 1.24's periodic line, from the averages over all databases. */
export function statsLogLine(avg: StatLine): string {
  const n = (v: number) => Math.floor(v)
  return (
    `stats: ${n(avg.xactCount)} xacts/s, ${n(avg.queryCount)} queries/s, ` +
    `${n(avg.clientParseCount)} client parses/s, ${n(avg.serverParseCount)} server parses/s, ` +
    `${n(avg.bindCount)} binds/s, in ${n(avg.bytesReceived)} B/s, out ${n(avg.bytesSent)} B/s, ` +
    `xact ${n(avg.xactUs)} us, query ${n(avg.queryUs)} us, wait ${n(avg.waitUs)} us`
  )
}

/** SHOW POOLS and DATABASES: load_balance_hosts only for a database with a host list (PgBouncer's rule). */
function loadBalance(config: Config, database: string): string | null {
  const db = resolveDatabase(config, database)
  if (db === null || !db.host.includes(',')) return null
  return db.loadBalanceHosts ?? 'round-robin'
}

export function showPools(config: Config, stats: ClusterStats): View {
  const rows: Row[] = stats.pools.map((p) => {
    // Cancel requests and server checks have no state of their own here: those columns stay 0.
    const counts = [
      p.clActive,
      p.clWaiting,
      0,
      0,
      p.svActive,
      0,
      p.svBeingCanceled,
      p.svIdle,
      p.svUsed,
      0,
      p.svLogin,
      Math.floor(p.maxWaitUs / 1e6),
      Math.floor(p.maxWaitUs % 1e6),
    ]
    return [p.database, p.user, ...counts.map(num), p.mode, loadBalance(config, p.database)]
  })
  rows.push(adminPoolRow(stats.adminSessions))
  rows.sort((a, b) => byName(a[0]!, b[0]!) || byName(a[1]!, b[1]!))
  return { columns: COLUMNS.pools, rows }
}

/**
 * SHOW SESSION_STATE (ours): per pool, in any pool mode, how many statements
 * of each kind of session state its clients ran (worker/src/session-state).
 */
export function showSessionState(stats: ClusterStats): View {
  const rows: Row[] = []
  for (const p of stats.pools) {
    SESSION_KINDS.forEach((kind, i) => {
      rows.push([p.database, p.user, kind, num(p.sessionState?.[i] ?? 0)])
    })
  }
  return { columns: COLUMNS.sessionState, rows }
}

function adminPoolRow(sessions: number): Row {
  const zeros = Array.from({ length: 12 }, () => '0')
  return [ADMIN_DATABASE, ADMIN_USER, String(sessions), ...zeros, 'statement', null]
}

export function showStats(
  totals: Map<string, StatLine>,
  avgs: Map<string, StatLine>,
  kind: 'stats' | 'totals' | 'averages',
): View {
  const names = [...totals.keys()].filter((k) => k !== '').sort(byName)
  const rows = names.map((name) => {
    const total = totals.get(name)!
    const avg = avgs.get(name) ?? ZERO_STATS
    if (kind === 'totals') return [name, ...statValues(total)]
    if (kind === 'averages') return [name, ...statValues(avg)]
    return [name, ...statValues(total), ...statValues(avg)]
  })
  const columns =
    kind === 'stats'
      ? COLUMNS.stats
      : kind === 'totals'
        ? COLUMNS.statsTotals
        : COLUMNS.statsAverages
  return { columns, rows }
}

export function showTotals(total: StatLine, avg: StatLine): View {
  const [t, a] = [statValues(total), statValues(avg)]
  const rows: Row[] = []
  for (const [prefix, values] of [
    ['total', t],
    ['avg', a],
  ] as const) {
    STAT_NAMES.totals.forEach((n, i) => {
      rows.push([`${prefix}_${n}`, values[i]])
    })
  }
  return { columns: COLUMNS.totals, rows }
}

/** PgBouncer's time format in SHOW CLIENTS / SERVERS. */
export function formatTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`
}

export function showConnections(type: 'C' | 'S', list: ConnectionInfo[]): View {
  const rows: Row[] = list.map((c) => [
    type,
    c.user,
    c.database,
    c.replication ?? 'none',
    c.state,
    c.addr,
    String(c.port),
    c.localAddr,
    String(c.localPort),
    formatTime(c.connectTime),
    formatTime(c.requestTime),
    String(Math.floor(c.waitUs / 1e6)),
    String(Math.floor(c.waitUs % 1e6)),
    c.closeNeeded ? '1' : '0',
    c.ptr,
    c.link,
    String(c.remotePid),
    c.tls,
    c.applicationName,
    String(c.preparedStatements),
    String(c.id),
  ])
  return { columns: COLUMNS.connections, rows }
}

/** SHOW CLIENTS: PgBouncer's columns, then ours, the kind of state a client is pinned for. */
export function showClients(list: ConnectionInfo[]): View {
  const rows = showConnections('C', list).rows.map((row, i) => [...row, list[i]!.pinned ?? ''])
  return { columns: [...COLUMNS.connections, ['session_state_pin', 25]], rows }
}

/**
 * SHOW SOCKETS: clients (cl_active, cl_waiting, cl_login) and servers
 * (sv_active, sv_idle, sv_login) with PgBouncer's buffer columns, which are 0
 * here: a worker reads every client into one shared buffer and writes through
 * libuv's queue, so no socket has buffer positions of its own to show.
 */
export function showSockets(clients: ConnectionInfo[], servers: ConnectionInfo[]): View {
  const zeros = Array.from({ length: 7 }, () => '0')
  const rows = [...showConnections('C', clients).rows, ...showConnections('S', servers).rows].map(
    (row) => [...row, ...zeros],
  )
  return { columns: SOCKET_COLUMNS, rows }
}

/** SHOW STATE (1.20+): whether the pooler runs, is paused (PAUSE, or SHUTDOWN WAIT_FOR_SERVERS) or suspended. */
export function showState(paused: boolean, suspended: boolean): View {
  const yes = (b: boolean) => (b ? 'yes' : 'no')
  return {
    columns: COLUMNS.state,
    rows: [
      ['active', yes(!paused && !suspended)],
      ['paused', yes(paused)],
      ['suspended', yes(suspended)],
    ],
  }
}

/** Clients logged in per database and per user, across the cluster (their shared counts). */
export interface ClientCounts {
  databases: ReadonlyMap<string, number>
  users: ReadonlyMap<string, number>
}

/** Configured databases, those the '*' entry made, and the console itself. */
export function showDatabases(
  config: Config,
  names: Iterable<string>,
  pools: PoolStats[],
  paused: ReadonlySet<string>,
  disabled: ReadonlySet<string>,
  clients: ClientCounts,
  listenPort: number,
): View {
  const s = config.settings
  const connections = new Map<string, number>()
  for (const p of pools)
    connections.set(p.database, (connections.get(p.database) ?? 0) + servers(p))
  const rows: Row[] = []
  for (const name of new Set(names)) {
    const db = resolveDatabase(config, name)
    if (db === null) continue
    rows.push([
      name,
      // No host (unix_socket_dir's socket): NULL, as PgBouncer shows it.
      db.host === '' ? null : db.host,
      String(db.port),
      db.dbname,
      db.user ?? null,
      String(db.poolSize ?? s.defaultPoolSize),
      String(db.minPoolSize ?? s.minPoolSize),
      String(db.reservePoolSize ?? s.reservePoolSize),
      String(Math.floor(db.serverLifetime || s.serverLifetime)),
      db.poolMode ?? null,
      loadBalance(config, name),
      String(db.maxDbConnections ?? s.maxDbConnections),
      String(connections.get(name) ?? 0),
      String(limitOf(db.maxDbClientConnections, s.maxDbClientConnections)),
      String(clients.databases.get(name) ?? 0),
      paused.has(name) ? '1' : '0',
      disabled.has(name) ? '1' : '0',
    ])
  }
  rows.push([
    ADMIN_DATABASE,
    null,
    String(listenPort),
    ADMIN_DATABASE,
    ADMIN_USER,
    '2',
    '0',
    '0',
    String(Math.floor(s.serverLifetime)),
    'statement',
    null,
    '0',
    '0',
    String(s.maxDbClientConnections),
    String(clients.databases.get(ADMIN_DATABASE) ?? 0),
    '0',
    '0',
  ])
  rows.sort((a, b) => byName(a[0]!, b[0]!))
  return { columns: COLUMNS.databases, rows }
}

/** PgBouncer's rule for a per-database or per-user limit: its own when above 0, else the global one. */
function limitOf(own: number | undefined, global: number): number {
  return own !== undefined && own > 0 ? own : global
}

const servers = (p: PoolStats) => p.svActive + p.svIdle + p.svUsed + p.svLogin + p.svBeingCanceled

/** auth_file and [users] names, the users pools were made for, and the console's own. */
export function userNames(config: Config, poolUsers: Iterable<string>): string[] {
  return [
    ...new Set([
      ...Object.keys(config.authUsers),
      ...Object.keys(config.users),
      ...poolUsers,
      ADMIN_USER,
    ]),
  ].sort(byName)
}

export function showUsers(
  config: Config,
  names: string[],
  pools: PoolStats[],
  clients: ClientCounts,
): View {
  const s = config.settings
  const connections = new Map<string, number>()
  for (const p of pools) connections.set(p.user, (connections.get(p.user) ?? 0) + servers(p))
  // PgBouncer prints the overrides with %9d.
  const padded = (n: number | undefined) => (n === undefined ? null : String(n).padStart(9))
  const rows = names.map((name) => {
    const u = config.users[name]
    return [
      name,
      padded(u?.poolSize),
      padded(u?.reservePoolSize),
      u?.poolMode ?? null,
      String(limitOf(u?.maxUserConnections, s.maxUserConnections)),
      String(connections.get(name) ?? 0),
      String(limitOf(u?.maxUserClientConnections, s.maxUserClientConnections)),
      String(clients.users.get(name) ?? 0),
    ]
  })
  return { columns: COLUMNS.users, rows }
}

export function showConfig(config: Config): View {
  const current = config.settings as unknown as Record<string, unknown>
  const text = (v: unknown) =>
    v === null ? null : formatSettingValue(v as Parameters<typeof formatSettingValue>[0])
  const rows = [...SETTINGS]
    .sort((a, b) => byName(a.name, b.name))
    .map((spec) => [
      spec.name,
      text(current[spec.prop] ?? null),
      text(spec.default),
      spec.reloadable ? 'yes' : 'no',
    ])
  return { columns: COLUMNS.config, rows }
}

export function showLists(counts: {
  databases: number
  users: number
  peers: number
  pools: number
  peerPools: number
  clients: number
  servers: number
}): View {
  // 1.19+ lists the peers and their pools after the users and the pools.
  const rows: [string, number][] = [
    ['databases', counts.databases],
    ['users', counts.users],
    ['peers', counts.peers],
    ['pools', counts.pools],
    ['peer_pools', counts.peerPools],
    ['free_clients', 0],
    ['used_clients', counts.clients],
    ['login_clients', 0],
    ['free_servers', 0],
    ['used_servers', counts.servers],
    ['dns_names', 0],
    ['dns_zones', 0],
    ['dns_queries', 0],
    ['dns_pending', 0],
  ]
  return { columns: COLUMNS.lists, rows: rows.map(([name, n]) => [name, String(n)]) }
}

/** SHOW HOSTS: each host of each database in use, its breaker and the role its servers reported. */
export function showHosts(hosts: readonly HostRow[]): View {
  return {
    columns: COLUMNS.hosts,
    rows: hosts.map((h) => [
      h.database,
      h.host,
      String(h.port),
      h.state,
      h.role,
      h.targetSessionAttrs,
    ]),
  }
}

/** SHOW PEERS: the [peers] section, by id. */
export function showPeers(config: Config): View {
  const peers = Object.values(config.peers).sort((a, b) => a.id - b.id)
  return {
    columns: COLUMNS.peers,
    rows: peers.map((p) => [
      String(p.id),
      p.host,
      String(p.port),
      String(p.poolSize ?? config.settings.defaultPoolSize),
    ]),
  }
}

/** SHOW PEER_POOLS: one row per peer a cancel was forwarded to, summed over workers. */
export function showPeerPools(reports: PeerPoolStats[][]): View {
  const sums = new Map<number, number[]>()
  for (const report of reports) {
    for (const p of report) {
      const row = sums.get(p.peerId) ?? [0, 0, 0, 0]
      row[0]! += p.clActiveCancelReq
      row[1]! += p.clWaitingCancelReq
      row[2]! += p.svActiveCancel
      row[3]! += p.svLogin
      sums.set(p.peerId, row)
    }
  }
  return {
    columns: COLUMNS.peerPools,
    rows: [...sums].sort(([a], [b]) => a - b).map(([id, row]) => [String(id), ...row.map(String)]),
  }
}
