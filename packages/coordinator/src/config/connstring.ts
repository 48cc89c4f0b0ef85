// The value syntax of [databases] and [users] entries: space-separated
// `key=value` pairs, like a libpq connection string but read by PgBouncer's own
// parser: spaces may surround '=', a value may be 'single quoted' with '' for a
// quote (no backslash escapes), and an empty value is an error.

import {
  TARGET_SESSION_ATTRS,
  type TargetSessionAttrs,
} from '@pgbouncer-cluster/protocol/host-role'
import { MAX_HOSTS } from '@pgbouncer-cluster/protocol/shared-memory'
import type {
  HostPort,
  LoadBalanceHosts,
  DatabaseConfig as WorkerDatabaseConfig,
  UserConfig as WorkerUserConfig,
} from '@pgbouncer-cluster/worker'
import { ConfigError, type ErrorPlace } from './ini.ts'
import { POOL_MODES, SESSION_STATE_POLICIES } from './settings.ts'

export interface ConnParam {
  key: string
  value: string
}

export function parseConnString(text: string): ConnParam[] {
  const params: ConnParam[] = []
  const n = text.length
  const isSpace = (c: string | undefined) => c === ' ' || c === '\t'
  let i = 0
  for (;;) {
    while (isSpace(text[i])) i++
    if (i >= n) return params
    const keyStart = i
    while (i < n && text[i] !== '=' && !isSpace(text[i])) i++
    const key = text.slice(keyStart, i)
    while (isSpace(text[i])) i++
    if (text[i] !== '=') throw new Error(`expected "=" after "${key}"`)
    if (key === '') throw new Error('"=" without a parameter name')
    i++
    while (isSpace(text[i])) i++
    let value = ''
    if (text[i] === "'") {
      i++
      for (;;) {
        if (i >= n) throw new Error(`unterminated quoted value for ${key}`)
        if (text[i] === "'") {
          if (text[i + 1] !== "'") break
          i++
        }
        value += text[i++]
      }
      i++
      if (i < n && !isSpace(text[i])) throw new Error(`expected a space after the quoted ${key}`)
    } else {
      const start = i
      while (i < n && !isSpace(text[i])) i++
      value = text.slice(start, i)
    }
    if (value === '') throw new Error(`empty value for ${key}`)
    params.push({ key, value })
  }
}

export type { LoadBalanceHosts, TargetSessionAttrs }

// One [databases] entry (also the '*' fallback, whose name is '*'). What the
// worker reads is its WorkerDatabaseConfig; the rest is the loader's.
//
// host: as in PgBouncer, a host starting with '/' is the directory of
// PostgreSQL's unix socket (`<dir>/.s.PGSQL.<port>`; '@' an abstract one), and
// an entry without a host uses the socket in unix_socket_dir (the worker's
// address.ts). A comma-separated list (PgBouncer 1.17+), which may mix sockets
// and TCP hosts, spreads new server connections over the hosts; port is one
// for all of them or, as libpq takes it, one per host.
// dbname: defaults to name; '*' in the fallback entry stands for the client's name.
export interface DatabaseConfig extends WorkerDatabaseConfig {
  // Accepted, not implemented yet (see DATABASE_PARAMS).
  maxDbClientConnections?: number
  line: number // where it was defined, for messages
  file?: string
}

export interface UserConfig extends WorkerUserConfig {
  // Accepted, not implemented yet (see USER_PARAMS).
  maxUserClientConnections?: number
  line: number
  file?: string
}

type ParamType = 'string' | 'count' | 'ports' | 'seconds' | 'enum'

export interface ParamSpec {
  readonly name: string // PgBouncer's key
  readonly prop: string
  readonly type: ParamType
  readonly values?: readonly string[]
  readonly implemented: boolean
  readonly unsetValue?: number // PgBouncer's "not set" marker, e.g. -1
}

const p = (
  name: string,
  prop: string,
  type: ParamType,
  implemented: boolean,
  extra: Partial<ParamSpec> = {},
): ParamSpec => ({ name, prop, type, implemented, ...extra })

export const DATABASE_PARAMS: readonly ParamSpec[] = [
  p('dbname', 'dbname', 'string', true),
  p('host', 'host', 'string', true),
  p('port', 'port', 'ports', true),
  p('user', 'user', 'string', true),
  p('password', 'password', 'string', true),
  p('auth_user', 'authUser', 'string', true),
  p('auth_dbname', 'authDbname', 'string', true),
  p('auth_query', 'authQuery', 'string', true),
  p('client_encoding', 'clientEncoding', 'string', true),
  p('datestyle', 'datestyle', 'string', true),
  p('timezone', 'timezone', 'string', true),
  p('application_name', 'applicationName', 'string', true),
  p('connect_query', 'connectQuery', 'string', true),
  p('pool_size', 'poolSize', 'count', true),
  p('min_pool_size', 'minPoolSize', 'count', true),
  // reserve_pool is the name every PgBouncer knows; newer ones also take reserve_pool_size.
  p('reserve_pool', 'reservePoolSize', 'count', true),
  p('reserve_pool_size', 'reservePoolSize', 'count', true),
  p('pool_mode', 'poolMode', 'enum', true, { values: POOL_MODES }),
  p('max_db_connections', 'maxDbConnections', 'count', true),
  p('max_db_client_connections', 'maxDbClientConnections', 'count', true),
  p('server_lifetime', 'serverLifetime', 'seconds', true),
  p('load_balance_hosts', 'loadBalanceHosts', 'enum', true, {
    values: ['disable', 'round-robin'],
  }),
  p('target_session_attrs', 'targetSessionAttrs', 'enum', true, {
    values: TARGET_SESSION_ATTRS,
  }),
  p('query_wait_timeout', 'queryWaitTimeout', 'seconds', true, { unsetValue: -1 }),
  p('session_state_policy', 'sessionStatePolicy', 'enum', true, { values: SESSION_STATE_POLICIES }),
]

export const USER_PARAMS: readonly ParamSpec[] = [
  p('pool_mode', 'poolMode', 'enum', true, { values: POOL_MODES }),
  p('max_user_connections', 'maxUserConnections', 'count', true),
  p('pool_size', 'poolSize', 'count', true),
  p('reserve_pool_size', 'reservePoolSize', 'count', true),
  p('max_user_client_connections', 'maxUserClientConnections', 'count', true),
  p('query_timeout', 'queryTimeout', 'seconds', true),
  p('query_wait_timeout', 'queryWaitTimeout', 'seconds', true, { unsetValue: -1 }),
  p('idle_transaction_timeout', 'idleTransactionTimeout', 'seconds', true),
  p('transaction_timeout', 'transactionTimeout', 'seconds', true),
  p('client_idle_timeout', 'clientIdleTimeout', 'seconds', true),
  p('session_state_policy', 'sessionStatePolicy', 'enum', true, { values: SESSION_STATE_POLICIES }),
]

const byName = (specs: readonly ParamSpec[]) => new Map(specs.map((s) => [s.name, s]))
const DATABASE_BY_NAME = byName(DATABASE_PARAMS)
const USER_BY_NAME = byName(USER_PARAMS)

export interface Parsed<T> {
  config: T
  unimplemented: string[] // PgBouncer names of parameters used but not honoured
}

// The admin console's name; PgBouncer refuses it in [databases].
export const ADMIN_DATABASE = 'pgbouncer'

export function parseDatabase(
  name: string,
  connstr: string,
  place: ErrorPlace & { line: number },
): Parsed<DatabaseConfig> {
  const fail = (what: string) => new ConfigError(what, { ...place, key: name })
  if (name === ADMIN_DATABASE)
    throw fail(`database name "${name}" is reserved for the admin console`)
  const { values, unimplemented } = readParams(connstr, DATABASE_BY_NAME, 'connection', fail)
  const { port, ...rest } = values
  const host = typeof values.host === 'string' ? values.host : ''
  const ports = typeof port === 'string' ? port : '5432'
  const hosts = hostList(host, ports, fail)
  const config: DatabaseConfig = {
    name,
    dbname: name,
    ...rest,
    host,
    port: hosts[0]!.port,
    hosts,
    line: place.line,
  }
  if (place.file) config.file = place.file
  return { config, unimplemented }
}

/**
 * `host=a,b,c` with `port=p` for all or `port=p1,p2,p3`, one per host (the
 * count must match, as in libpq; PgBouncer 1.24 itself takes one port only).
 */
export function hostList(
  host: string,
  port: string,
  fail: (what: string) => ConfigError,
): HostPort[] {
  // No host: unix_socket_dir's socket, as one entry.
  const names = host === '' ? [''] : host.split(',').map((h) => h.trim())
  if (host !== '' && names.some((h) => h === ''))
    throw fail(`host: empty entry in host list "${host}"`)
  if (names.length > MAX_HOSTS) {
    throw fail(`host: ${names.length} hosts in the list, at most ${MAX_HOSTS} are supported`)
  }
  const ports = port.split(',').map(Number)
  if (ports.length !== 1 && ports.length !== names.length) {
    throw fail(
      `port: ${ports.length} ports for ${names.length} hosts; give one port for all hosts or one per host`,
    )
  }
  return names.map((h, i) => ({ host: h, port: ports.length === 1 ? ports[0]! : ports[i]! }))
}

export function parseUser(
  name: string,
  text: string,
  place: ErrorPlace & { line: number },
): Parsed<UserConfig> {
  const fail = (what: string) => new ConfigError(what, { ...place, key: name })
  const { values, unimplemented } = readParams(text, USER_BY_NAME, 'user', fail)
  const config: UserConfig = { name, ...values, line: place.line }
  if (place.file) config.file = place.file
  return { config, unimplemented }
}

function readParams(
  text: string,
  specs: ReadonlyMap<string, ParamSpec>,
  kind: 'connection' | 'user',
  fail: (what: string) => ConfigError,
): { values: Record<string, string | number>; unimplemented: string[] } {
  let pairs: ConnParam[]
  try {
    pairs = parseConnString(text)
  } catch (err) {
    throw fail(
      `syntax error in ${kind === 'user' ? 'user settings' : 'connection string'}: ${(err as Error).message}`,
    )
  }
  const values: Record<string, string | number> = {}
  const unimplemented: string[] = []
  for (const { key, value } of pairs) {
    const spec = specs.get(key)
    if (!spec) throw fail(`unrecognized ${kind} parameter: ${key}`)
    if (!spec.implemented) unimplemented.push(key)
    let v: string | number
    try {
      v = paramValue(spec, value)
    } catch (err) {
      throw fail(`${key}: ${(err as Error).message}`)
    }
    if (v === spec.unsetValue) delete values[spec.prop]
    else values[spec.prop] = v
  }
  return { values, unimplemented }
}

function paramValue(spec: ParamSpec, raw: string): string | number {
  switch (spec.type) {
    case 'string':
      return raw
    case 'count': {
      if (!/^[0-9]+$/.test(raw)) throw new Error(`expected a non-negative integer, got "${raw}"`)
      const n = Number(raw)
      if (n > 2147483647) throw new Error(`${raw} is too large`)
      return n
    }
    case 'ports': {
      // One port, or a comma-separated list (one per host); hostList() checks the count.
      const ports = raw.split(',').map((p) => p.trim())
      for (const port of ports) {
        const n = Number(port)
        if (!/^[0-9]+$/.test(port) || n < 1 || n > 65535) throw new Error(`invalid port: ${raw}`)
      }
      return ports.map(Number).join(',')
    }
    case 'seconds': {
      if (spec.unsetValue !== undefined && Number(raw) === spec.unsetValue) return spec.unsetValue
      if (!/^(?:[0-9]+\.?[0-9]*|\.[0-9]+)$/.test(raw)) {
        throw new Error(`expected a non-negative number of seconds, got "${raw}"`)
      }
      return Number(raw)
    }
    case 'enum': {
      const v = raw.toLowerCase()
      if (spec.values!.includes(v)) return v
      throw new Error(
        spec.name === 'pool_mode' ? `invalid pool mode: ${raw}` : `invalid value: ${raw}`,
      )
    }
  }
}
