// Every [pgbouncer] setting PgBouncer 1.18 through 1.24 knows (plus the few
// newer ones its documentation lists), with PgBouncer's type and default, and
// whether this version honours it. Names and defaults follow PgBouncer's own
// table (src/main.c) as of 1.24; where 1.18 had another default the row says
// so. A file may use any of them; the ones not implemented are reported once.
//
// Value syntax is PgBouncer's: integers as C strtol with base 0 ("0777" is
// octal, "0x10" hex), times as plain non-negative seconds ("1.5", no units),
// enums case-insensitive. PgBouncer's booleans are integers (0 = off); we also
// take yes/no/on/off/true/false, which PgBouncer itself would reject.

// The worker reads the validated config: the types it needs are its own and
// the loader's extend them. cert, hba and pam are recognised so the error can
// say "not supported by this version" rather than "unknown value"; config.ts
// refuses them.
import type { AuthType, PoolMode, SessionStatePolicy, SslMode } from '@pgbouncer-cluster/worker'

export type { AuthType, PoolMode, SessionStatePolicy, SslMode }

export const POOL_MODES: readonly PoolMode[] = ['session', 'transaction', 'statement']
/** session_state_policy, this pooler's own setting (not PgBouncer's). */
export const SESSION_STATE_POLICIES: readonly SessionStatePolicy[] = [
  'allow',
  'warn',
  'pin',
  'error',
]
export const AUTH_TYPES = [
  'any',
  'trust',
  'plain',
  'md5',
  'cert',
  'hba',
  'ldap',
  'pam',
  'scram-sha-256',
] as const
export const SSL_MODES: readonly SslMode[] = [
  'disable',
  'allow',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
]

export interface Settings {
  adminUsers: string[]
  applicationNameAddHost: boolean
  authDbname: string | null
  authFile: string | null
  authHbaFile: string
  authIdentFile: string | null
  authLdapOptions: string | null
  authQuery: string
  authType: AuthType
  authUser: string | null
  autodbIdleTimeout: number
  cancelWaitTimeout: number
  clientIdleTimeout: number
  clientLoginTimeout: number
  clientTls13Ciphers: string | null
  clientTlsCaFile: string
  clientTlsCertFile: string
  clientTlsCiphers: string
  clientTlsDheparams: string
  clientTlsEcdhcurve: string
  clientTlsKeyFile: string
  clientTlsProtocols: string
  clientTlsSslmode: SslMode
  conffile: string | null
  defaultPoolSize: number
  disablePqexec: boolean
  dnsMaxTtl: number
  dnsNxdomainTtl: number
  dnsZoneCheckPeriod: number
  idleTransactionTimeout: number
  ignoreStartupParameters: string[]
  jobName: string
  // Comma-separated, '*' for all; '' listens on no TCP address.
  listenAddr: string
  listenBacklog: number
  listenPort: number
  logConnections: boolean
  logDisconnections: boolean
  logPoolerErrors: boolean
  logStats: boolean
  logfile: string
  loginNotifyMessage: string
  maxClientConn: number
  maxDbClientConnections: number
  maxDbConnections: number
  maxPacketSize: number
  maxPreparedStatements: number
  sessionStatePolicy: SessionStatePolicy
  maxUserClientConnections: number
  maxUserConnections: number
  minPoolSize: number
  peerId: number
  pidfile: string
  pktBuf: number
  poolIdleTimeout: number
  poolMode: PoolMode
  queryTimeout: number
  queryWaitNotify: number
  queryWaitTimeout: number
  reservePoolSize: number
  reservePoolTimeout: number
  resolvConf: string
  sbufLoopcnt: number
  scramIterations: number
  serverCheckDelay: number
  serverCheckQuery: string
  serverConnectTimeout: number
  serverFastClose: boolean
  serverIdleTimeout: number
  serverLifetime: number
  serverLoginRetry: number
  serverResetQuery: string
  serverResetQueryAlways: boolean
  serverRoundRobin: boolean
  serverTls13Ciphers: string | null
  serverTlsCaFile: string
  serverTlsCertFile: string
  serverTlsCiphers: string
  serverTlsKeyFile: string
  serverTlsProtocols: string
  serverTlsSslmode: SslMode
  serviceName: string | null
  soReuseport: boolean
  statsPeriod: number
  statsUsers: string[]
  suspendTimeout: number
  syslog: boolean
  syslogFacility: string
  syslogIdent: string
  tcpDeferAccept: boolean
  tcpKeepalive: boolean
  tcpKeepcnt: number
  tcpKeepidle: number
  tcpKeepintvl: number
  tcpSocketBuffer: number
  tcpUserTimeout: number
  trackExtraParameters: string[]
  transactionTimeout: number
  unixSocketDir: string
  unixSocketGroup: string
  unixSocketMode: number
  user: string | null
  verbose: number
}

export type SettingType = 'int' | 'seconds' | 'bool' | 'string' | 'list' | 'enum'
type Value = Settings[keyof Settings]

export interface SettingSpec {
  readonly name: string // PgBouncer's name, as in the file and SHOW CONFIG
  readonly prop: keyof Settings
  readonly type: SettingType
  readonly default: Value
  readonly values?: readonly string[] // enum
  readonly min?: number // int and seconds; ints default to 0..2^31-1
  readonly max?: number
  readonly nullable?: boolean // string settings PgBouncer leaves unset (NULL)
  readonly reloadable: boolean // false: PgBouncer ignores changes on RELOAD
  readonly implemented: boolean
}

type Row = [
  name: string,
  type: SettingType,
  def: Value,
  implemented: boolean,
  extra?: Partial<Pick<SettingSpec, 'values' | 'min' | 'max' | 'nullable' | 'reloadable'>>,
]

const Y = true
const N = false
const NO_RELOAD = { reloadable: false }
const NULLABLE = { nullable: true }
const AUTH_QUERY =
  'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin'

// biome-ignore format: one row per setting reads as a table
const ROWS: Row[] = [
  ['admin_users', 'list', [], Y],
  ['application_name_add_host', 'bool', false, Y],
  ['auth_dbname', 'string', null, Y, NULLABLE],
  ['auth_file', 'string', null, Y, NULLABLE],
  ['auth_hba_file', 'string', '', Y],
  ['auth_ident_file', 'string', null, N, NULLABLE],
  ['auth_ldap_options', 'string', null, N, NULLABLE],
  ['auth_query', 'string', AUTH_QUERY, Y],
  ['auth_type', 'enum', 'md5', Y, { values: AUTH_TYPES }],
  ['auth_user', 'string', null, Y, NULLABLE],
  ['autodb_idle_timeout', 'seconds', 3600, Y],
  ['cancel_wait_timeout', 'seconds', 10, Y],
  ['client_idle_timeout', 'seconds', 0, Y],
  ['client_login_timeout', 'seconds', 60, Y],
  ['client_tls13_ciphers', 'string', null, N, NULLABLE],
  ['client_tls_ca_file', 'string', '', Y],
  ['client_tls_cert_file', 'string', '', Y],
  ['client_tls_ciphers', 'string', 'default', Y], // 1.18: fast
  ['client_tls_dheparams', 'string', 'auto', N],
  ['client_tls_ecdhcurve', 'string', 'auto', N],
  ['client_tls_key_file', 'string', '', Y],
  ['client_tls_protocols', 'string', 'secure', Y],
  ['client_tls_sslmode', 'enum', 'disable', Y, { values: SSL_MODES }],
  ['conffile', 'string', null, N, NULLABLE],
  ['default_pool_size', 'int', 20, Y],
  ['disable_pqexec', 'bool', false, Y, NO_RELOAD],
  ['dns_max_ttl', 'seconds', 15, N],
  ['dns_nxdomain_ttl', 'seconds', 15, N],
  ['dns_zone_check_period', 'seconds', 0, N],
  ['idle_transaction_timeout', 'seconds', 0, Y],
  ['ignore_startup_parameters', 'list', [], Y],
  ['job_name', 'string', 'pgbouncer', N, NO_RELOAD],
  ['listen_addr', 'string', '', Y, NO_RELOAD],
  ['listen_backlog', 'int', 128, Y, NO_RELOAD],
  ['listen_port', 'int', 6432, Y, { reloadable: false, max: 65535 }],
  ['log_connections', 'bool', true, Y],
  ['log_disconnections', 'bool', true, Y],
  ['log_pooler_errors', 'bool', true, Y],
  ['log_stats', 'bool', true, Y],
  ['logfile', 'string', '', Y],
  ['login_notify_message', 'string', '', N], // newer than 1.24
  ['max_client_conn', 'int', 100, Y],
  ['max_db_client_connections', 'int', 0, Y],
  ['max_db_connections', 'int', 0, Y],
  ['max_packet_size', 'int', 2147483647, Y, { max: 4294967295 }], // unsigned in PgBouncer
  ['max_prepared_statements', 'int', 200, Y], // 0 before 1.24
  ['max_user_client_connections', 'int', 0, Y],
  ['max_user_connections', 'int', 0, Y],
  ['min_pool_size', 'int', 0, Y],
  ['peer_id', 'int', 0, Y, { max: 16383, reloadable: false }],
  ['pidfile', 'string', '', Y, NO_RELOAD],
  ['pkt_buf', 'int', 4096, N, { reloadable: false, min: 1 }],
  ['pool_idle_timeout', 'seconds', 0, N], // newer than 1.24
  ['pool_mode', 'enum', 'session', Y, { values: POOL_MODES }],
  ['query_timeout', 'seconds', 0, Y],
  ['query_wait_notify', 'int', 5, Y],
  ['query_wait_timeout', 'seconds', 120, Y],
  ['reserve_pool_size', 'int', 0, Y],
  ['reserve_pool_timeout', 'seconds', 5, Y],
  ['resolv_conf', 'string', '', N, NO_RELOAD],
  ['sbuf_loopcnt', 'int', 5, N],
  ['session_state_policy', 'enum', 'allow', Y, { values: SESSION_STATE_POLICIES }], // ours
  ['scram_iterations', 'int', 4096, Y, { min: 1 }],
  ['server_check_delay', 'seconds', 30, Y],
  ['server_check_query', 'string', '<empty>', Y], // 1.18: select 1
  ['server_connect_timeout', 'seconds', 15, Y],
  ['server_fast_close', 'bool', false, Y],
  ['server_idle_timeout', 'seconds', 600, Y],
  ['server_lifetime', 'seconds', 3600, Y],
  ['server_login_retry', 'seconds', 15, Y],
  ['server_reset_query', 'string', 'DISCARD ALL', Y],
  ['server_reset_query_always', 'bool', false, Y],
  ['server_round_robin', 'bool', false, Y],
  ['server_tls13_ciphers', 'string', null, N, NULLABLE],
  ['server_tls_ca_file', 'string', '', Y],
  ['server_tls_cert_file', 'string', '', Y],
  ['server_tls_ciphers', 'string', 'default', Y], // 1.18: fast
  ['server_tls_key_file', 'string', '', Y],
  ['server_tls_protocols', 'string', 'secure', Y],
  ['server_tls_sslmode', 'enum', 'prefer', Y, { values: SSL_MODES }], // 1.18: disable
  ['service_name', 'string', null, N, { nullable: true, reloadable: false }], // Windows alias of job_name
  ['so_reuseport', 'bool', false, Y, NO_RELOAD],
  ['stats_period', 'int', 60, Y, { min: 1 }],
  ['stats_users', 'list', [], Y],
  ['suspend_timeout', 'seconds', 10, Y],
  ['syslog', 'bool', false, N],
  ['syslog_facility', 'string', 'daemon', N],
  ['syslog_ident', 'string', 'pgbouncer', N],
  ['tcp_defer_accept', 'bool', true, N], // Linux default
  ['tcp_keepalive', 'bool', true, Y],
  ['tcp_keepcnt', 'int', 0, N],
  ['tcp_keepidle', 'int', 0, Y],
  ['tcp_keepintvl', 'int', 0, N],
  ['tcp_socket_buffer', 'int', 0, N],
  ['tcp_user_timeout', 'int', 0, N], // milliseconds
  ['track_extra_parameters', 'list', ['IntervalStyle'], Y, NO_RELOAD],
  ['transaction_timeout', 'seconds', 0, Y],
  ['unix_socket_dir', 'string', '/tmp', Y, NO_RELOAD],
  ['unix_socket_group', 'string', '', Y, NO_RELOAD],
  ['unix_socket_mode', 'int', 0o777, Y, NO_RELOAD],
  ['user', 'string', null, Y, { nullable: true, reloadable: false }],
  ['verbose', 'int', 0, N],
]

// Socket options Node.js gives no way to set: named apart in the start-up
// warning, with what the sockets get instead.
export const NODE_CANNOT_SET: ReadonlyMap<string, string> = new Map([
  ['tcp_keepintvl', 'Node.js sets TCP_KEEPINTVL to 1 second itself when keepalive is on'],
  ['tcp_keepcnt', 'Node.js sets TCP_KEEPCNT to 10 itself when keepalive is on'],
  ['tcp_user_timeout', 'Node.js cannot set TCP_USER_TIMEOUT; the kernel default applies'],
])

const camel = (name: string) => name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())

export const SETTINGS: readonly SettingSpec[] = ROWS.map(
  ([name, type, def, implemented, extra]): SettingSpec => ({
    name,
    prop: camel(name) as keyof Settings,
    type,
    default: def,
    reloadable: true,
    implemented,
    ...extra,
  }),
)

export const SETTINGS_BY_NAME: ReadonlyMap<string, SettingSpec> = new Map(
  SETTINGS.map((s) => [s.name, s]),
)

const IMPLEMENTED: ReadonlySet<string> = new Set(
  SETTINGS.filter((s) => s.implemented).map((s) => s.name),
)

// PgBouncer names of the [pgbouncer] settings this version honours.
export function implementedSettings(): ReadonlySet<string> {
  return IMPLEMENTED
}

// PgBouncer's defaults (before our own choices for listen_addr, see config.ts).
export function defaultSettings(): Settings {
  const s: Record<string, Value> = {}
  for (const spec of SETTINGS) {
    s[spec.prop] = Array.isArray(spec.default) ? [...spec.default] : spec.default
  }
  return s as unknown as Settings
}

const INT = /^[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/
const SECONDS = /^\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/
const TRUE_WORDS = new Set(['yes', 'on', 'true'])
const FALSE_WORDS = new Set(['no', 'off', 'false'])

// Integer the way C's strtol(s, &end, 0) reads it, whole string only.
export function parseCInt(raw: string): number | null {
  if (!INT.test(raw)) return null
  const neg = raw[0] === '-'
  const s = raw.replace(/^[+-]/, '')
  const n = /^0[xX]/.test(s)
    ? Number.parseInt(s.slice(2), 16)
    : s.length > 1 && s[0] === '0'
      ? Number.parseInt(s, 8)
      : Number(s)
  return neg ? -n : n
}

// Turns a value written in the file into its typed form; throws a message
// (without place: the caller knows file, line and key).
export function parseSettingValue(spec: SettingSpec, raw: string): Value {
  const min = spec.min ?? 0
  const max = spec.max ?? 2147483647
  switch (spec.type) {
    case 'int': {
      const n = parseCInt(raw)
      if (n === null) throw new Error(`expected an integer, got "${raw}"`)
      if (n < min || n > max) throw new Error(`${n} is out of range ${min}..${max}`)
      return n
    }
    case 'seconds': {
      if (!SECONDS.test(raw)) {
        throw new Error(
          raw.startsWith('-')
            ? `must not be negative, got "${raw}"`
            : `expected a number of seconds such as 15 or 0.5 (no units), got "${raw}"`,
        )
      }
      const n = Number(raw)
      if (n < min || n > (spec.max ?? Number.MAX_SAFE_INTEGER)) {
        throw new Error(`${n} is out of range`)
      }
      return n
    }
    case 'bool': {
      const word = raw.toLowerCase()
      if (TRUE_WORDS.has(word)) return true
      if (FALSE_WORDS.has(word)) return false
      const n = parseCInt(raw)
      if (n === null) throw new Error(`expected 0 or 1, got "${raw}"`)
      return n !== 0
    }
    case 'enum': {
      const v = raw.toLowerCase()
      if (!spec.values!.includes(v)) {
        throw new Error(`invalid value "${raw}", expected one of: ${spec.values!.join(', ')}`)
      }
      return v as Value
    }
    case 'list':
      return splitList(raw)
    case 'string':
      // An empty value leaves a NULL-default setting unset, as PgBouncer treats it.
      return spec.nullable && raw === '' ? null : raw
  }
}

export function splitList(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
}

// Checks a typed value (a CLI override); returns a message when it is wrong.
export function checkSettingValue(spec: SettingSpec, v: unknown): string | null {
  switch (spec.type) {
    case 'int':
    case 'seconds': {
      const ok =
        typeof v === 'number' &&
        Number.isFinite(v) &&
        (spec.type === 'seconds' || Number.isInteger(v))
      if (!ok)
        return `expected ${spec.type === 'int' ? 'an integer' : 'a number of seconds'}, got ${String(v)}`
      const min = spec.min ?? 0
      const max = spec.max ?? (spec.type === 'int' ? 2147483647 : Number.MAX_SAFE_INTEGER)
      return v < min || v > max ? `${v} is out of range ${min}..${max}` : null
    }
    case 'bool':
      return typeof v === 'boolean' ? null : `expected true or false, got ${String(v)}`
    case 'enum':
      return spec.values!.includes(v as string)
        ? null
        : `invalid value "${String(v)}", expected one of: ${spec.values!.join(', ')}`
    case 'list':
      return Array.isArray(v) && v.every((x) => typeof x === 'string')
        ? null
        : 'expected a list of names'
    case 'string':
      return typeof v === 'string' || (spec.nullable && v === null) ? null : 'expected a string'
  }
}

// The value as PgBouncer's SHOW CONFIG prints it.
export function formatSettingValue(v: Settings[keyof Settings]): string {
  if (v === null) return ''
  if (typeof v === 'boolean') return v ? '1' : '0'
  if (Array.isArray(v)) return v.join(',')
  return String(v)
}
