// Loads pgbouncer.ini (and the auth_file it names) into a validated Config.
// This is the one place configuration is checked: every error names the file,
// line and key; code that receives a Config trusts it.
//
// The goal is that a file PgBouncer starts with also starts us, meaning the
// same thing. Where we are more lenient than PgBouncer (section and setting
// names in any case, yes/no booleans, quoted names, repeated [pgbouncer]
// sections) the Config carries a warning so the user knows PgBouncer differs.

import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import type { PeerConfig, TlsMaterial } from '@pgbouncer-cluster/worker'
import type { HbaRule } from '@pgbouncer-cluster/worker/hba'
import {
  ADMIN_DATABASE,
  type DatabaseConfig,
  parseConnString,
  parseDatabase,
  parseUser,
  type UserConfig,
} from './connstring.ts'
import { loadHba } from './hba.ts'
import { ConfigError, errText, type IniItem, readIniFile, resolveConfigPath } from './ini.ts'
import {
  checkSettingValue,
  defaultSettings,
  NODE_CANNOT_SET,
  parseSettingValue,
  SETTINGS,
  SETTINGS_BY_NAME,
  type SettingSpec,
  type Settings,
} from './settings.ts'
import { loadTls } from './tls.ts'
import { parseUserlist } from './userlist.ts'

export type { PeerConfig } from '@pgbouncer-cluster/worker'
export type { DatabaseConfig, UserConfig } from './connstring.ts'
export { ConfigError } from './ini.ts'
export type { AuthType, PoolMode, Settings } from './settings.ts'
export { implementedSettings } from './settings.ts'

export interface Config {
  file: string | null // absolute path of the main file
  settings: Settings
  databases: Record<string, DatabaseConfig>
  fallbackDatabase: DatabaseConfig | null // the '*' entry
  users: Record<string, UserConfig>
  /** [peers] by id: where a CancelRequest for another pooler's key is sent. */
  peers: Record<string, PeerConfig>
  authUsers: Record<string, string> // auth_file: user -> plain text, md5 hash or SCRAM secret
  tls: TlsMaterial // client_tls_* and server_tls_* files, read and checked
  hba: HbaRule[] | null // auth_hba_file's rules when auth_type is hba
  warnings: string[]
}

// When the file has no listen_addr PgBouncer listens on its Unix socket only;
// we listen on 127.0.0.1 instead, since TCP is what our workers share a port on.
const DEFAULT_LISTEN_ADDR = '127.0.0.1'
const SECTIONS = new Set(['pgbouncer', 'databases', 'users', 'peers'])
const UNSUPPORTED_AUTH = new Set(['pam', 'ldap'])
const PASSWORD_AUTH = new Set(['md5', 'scram-sha-256', 'plain'])
const BOOL_WORDS = /^(?:yes|no|on|off|true|false)$/i
const SPEC_BY_PROP = new Map(SETTINGS.map((s) => [s.prop as string, s]))

interface Place {
  file: string
  line: number
}

export function loadConfig(file: string, overrides: Partial<Settings> = {}): Config {
  return buildConfig(readIniFile(file), file, overrides)
}

/**
 * The sections of pgbouncer.ini given as an object (the API's `config`):
 * `{ databases: { app: 'host=... dbname=...' }, pgbouncer: { pool_mode: 'transaction' } }`.
 * Values are checked exactly as the file's are. An error carries no file or
 * line; its key is the path in the object, e.g. `pgbouncer.default_pool_size`.
 */
export function configFromObject(
  sections: ConfigSections,
  overrides: Partial<Settings> = {},
): Config {
  const items: IniItem[] = []
  const paths: string[] = []
  const entry = (section: string, key: string, value: string) => {
    paths.push(`${section}.${key}`)
    items.push({ kind: 'entry', key, quoted: false, value, file: OBJECT_FILE, line: paths.length })
  }
  if (sections === null || typeof sections !== 'object') {
    throw new ConfigError('config must be an object of sections', { key: 'config' })
  }
  for (const [section, entries] of Object.entries(sections)) {
    if (entries === undefined) continue
    paths.push(section)
    items.push({ kind: 'section', name: section, file: OBJECT_FILE, line: paths.length })
    if (entries === null || typeof entries !== 'object') {
      throw new ConfigError('must be an object of settings', { key: section })
    }
    for (const [key, value] of Object.entries(entries)) {
      entry(section, key, iniValue(value, `${section}.${key}`))
    }
  }
  try {
    return buildConfig(items, null, overrides)
  } catch (err) {
    if (!(err instanceof ConfigError) || err.file !== OBJECT_FILE) throw err
    const path = err.line === null ? null : (paths[err.line - 1] ?? null)
    throw new ConfigError(err.reason, { key: path ?? err.key })
  }
}

/** What `configFromObject` takes: pgbouncer.ini's sections, values as in the file. */
export type ConfigSections = Record<
  string,
  Record<string, string | number | boolean | Record<string, string | number>> | undefined
>

// Stands for the object in error places until configFromObject replaces them with key paths.
const OBJECT_FILE = '\u0000config'

// A number or boolean as the file would spell it; an object of connection
// parameters (a [databases] or [users] entry) as its key=value string.
function iniValue(value: unknown, path: string): string {
  if (typeof value === 'string') return value
  if (typeof value === 'number' && Number.isFinite(value)) return String(value)
  if (typeof value === 'boolean') return value ? '1' : '0'
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    return Object.entries(value)
      .map(([k, v]) => `${k}=${quoteParam(iniValue(v, `${path}.${k}`))}`)
      .join(' ')
  }
  throw new ConfigError('must be a string, number, boolean or object of parameters', {
    key: path,
  })
}

// PgBouncer's connection strings quote with '...' and double a quote inside.
function quoteParam(v: string): string {
  return v !== '' && !/[\s']/.test(v) ? v : `'${v.replaceAll("'", "''")}'`
}

function buildConfig(items: IniItem[], file: string | null, overrides: Partial<Settings>): Config {
  const settings = defaultSettings()
  const origins = new Map<string, Place>() // setting name -> where the file set it
  const databases: Record<string, DatabaseConfig> = Object.create(null)
  const users: Record<string, UserConfig> = Object.create(null)
  let fallbackDatabase: DatabaseConfig | null = null
  const peers: Record<string, PeerConfig> = Object.create(null)
  const unimplemented = new Set<string>()
  const pgbouncerHeaders: Place[] = []
  const pgbouncerRejects: string[] = []
  let section: string | null = null

  for (const item of items) {
    const place = { file: item.file, line: item.line }
    if (item.kind === 'section') {
      const name = item.name.toLowerCase()
      if (!SECTIONS.has(name)) {
        throw new ConfigError(`unknown section [${item.name}]`, { ...place, key: item.name })
      }
      if (name !== item.name) pgbouncerRejects.push(`${at(place)} [${item.name}]`)
      if (name === 'pgbouncer') pgbouncerHeaders.push(place)
      section = name
      continue
    }
    if (section === null) {
      throw new ConfigError('setting outside of any [section]', { ...place, key: item.key })
    }
    if (section === 'pgbouncer') {
      const spec = setSetting(settings, item, pgbouncerRejects)
      origins.set(spec.name, place)
      if (!spec.implemented) unimplemented.add(spec.name)
    } else if (section === 'databases') {
      const { config, unimplemented: params } = parseDatabase(item.key, item.value, place)
      // '*' is the fallback for any other name; its dbname stays '*' unless
      // given, standing for the name the client asks for (resolveDatabase).
      if (item.key === '*') {
        fallbackDatabase = config
      } else {
        databases[item.key] = config
      }
      for (const p of params) unimplemented.add(`${p} (in [databases])`)
    } else if (section === 'users') {
      const { config, unimplemented: params } = parseUser(item.key, item.value, place)
      users[item.key] = config
      for (const p of params) unimplemented.add(`${p} (in [users])`)
    } else {
      const peer = parsePeer(item)
      peers[peer.id] = peer
    }
  }

  if (!origins.has('listen_addr')) settings.listenAddr = DEFAULT_LISTEN_ADDR
  if (!origins.has('conffile') && file !== null) settings.conffile = file

  const warnings: string[] = []
  for (const [name, why] of NODE_CANNOT_SET) {
    if (!unimplemented.delete(name)) continue
    warnings.push(`${at(origins.get(name)!)}: ${name} has no effect: ${why}`)
  }
  if (unimplemented.size > 0) {
    warnings.push(
      `${file ?? 'config'}: these settings are accepted but not implemented by this version, so they have no effect: ${[...unimplemented].join(', ')}`,
    )
  }
  if (pgbouncerHeaders.length > 1) {
    warnings.push(
      `${pgbouncerHeaders.map(at).join(', ')}: [pgbouncer] appears more than once; PgBouncer resets every setting to its default at a repeated [pgbouncer] header, this version keeps the values set before it`,
    )
  }
  if (pgbouncerRejects.length > 0) {
    warnings.push(
      `PgBouncer itself would refuse these lines, accepted here: ${pgbouncerRejects.join(', ')}`,
    )
  }

  applyOverrides(settings, overrides, origins)
  const authUsers = finish(settings, origins, warnings)
  if (settings.unixSocketDir === '') {
    const entries = Object.values(databases)
    if (fallbackDatabase !== null) entries.push(fallbackDatabase)
    for (const d of entries) {
      if (!d.hosts.some((h) => h.host === '')) continue
      const where = d.file === undefined ? 'config' : at({ file: d.file, line: d.line })
      warnings.push(
        `${where}: database ${d.name} has no host, which means the unix socket in unix_socket_dir, and unix_socket_dir is empty: its server connections fail, as in PgBouncer`,
      )
    }
  }
  return {
    file: file === null ? null : resolve(file),
    settings,
    databases,
    fallbackDatabase,
    users,
    peers,
    authUsers,
    tls: loadTls(settings, origins, file),
    hba: hbaRules(settings, origins),
    warnings,
  }
}

// Without a file: listen on 127.0.0.1:6432 and send every database name to
// PostgreSQL on 127.0.0.1:5432. auth_type is trust because there is no
// auth_file to check a password against; a quick start should just connect,
// as PostgreSQL's own trust default on localhost does.
export function defaultConfig(overrides: Partial<Settings> = {}): Config {
  const settings = defaultSettings()
  settings.listenAddr = DEFAULT_LISTEN_ADDR
  settings.authType = 'trust'
  const origins = new Map<string, Place>()
  applyOverrides(settings, overrides, origins)
  const warnings: string[] = []
  const authUsers = finish(settings, origins, warnings)
  return {
    file: null,
    settings,
    databases: Object.create(null),
    fallbackDatabase: {
      name: '*',
      host: '127.0.0.1',
      port: 5432,
      hosts: [{ host: '127.0.0.1', port: 5432 }],
      dbname: '*',
      line: 0,
    },
    users: Object.create(null),
    peers: Object.create(null),
    authUsers,
    tls: loadTls(settings, origins, null),
    hba: hbaRules(settings, origins),
    warnings,
  }
}

// The entry for a database a client asks for: its own, else the '*' fallback
// with dbname set to the requested name (unless the fallback names one).
// The admin console's name never resolves to a server database.
export function resolveDatabase(config: Config, name: string): DatabaseConfig | null {
  if (name === ADMIN_DATABASE) return null
  if (Object.hasOwn(config.databases, name)) return config.databases[name]!
  const fb = config.fallbackDatabase
  if (fb === null) return null
  return { ...fb, name, dbname: fb.dbname === '*' ? name : fb.dbname }
}

/**
 * The console's `SET name = value`: the running configuration with one
 * [pgbouncer] setting changed, its value checked as the file's are. What the
 * setting feeds is read again (auth_file for auth_file and auth_type,
 * auth_hba_file's rules for auth_type and auth_hba_file). TLS files that do
 * not make a working setup keep the running TLS in place (`tlsError` says
 * why), as PgBouncer keeps its old TLS context: the files are set one at a
 * time, and a key without its certificate is only a step on the way.
 */
export function withSetting(
  config: Config,
  name: string,
  raw: string,
): { config: Config; tlsError: string | null } {
  const spec = SETTINGS_BY_NAME.get(name.toLowerCase())
  if (!spec) throw new ConfigError('unknown setting', { key: name })
  let value: unknown
  try {
    value = parseSettingValue(spec, raw)
  } catch (err) {
    throw new ConfigError((err as Error).message, { key: spec.name })
  }
  const settings: Settings = { ...config.settings }
  set(settings, spec, value)
  // A path SET names is taken as the process sees it, as PgBouncer does.
  const origins = new Map<string, Place>()
  const warnings: string[] = []
  if (!spec.implemented)
    warnings.push(
      `SET ${spec.name}: accepted but not implemented by this version, so it has no effect`,
    )
  const auth = ['auth_file', 'auth_type', 'auth_user', 'auth_dbname'].includes(spec.name)
  const authUsers = auth ? finish(settings, origins, warnings) : config.authUsers
  const hba =
    spec.name === 'auth_type' || spec.name === 'auth_hba_file'
      ? hbaRules(settings, origins)
      : config.hba
  let tls = config.tls
  let tlsError: string | null = null
  if (spec.name.includes('_tls')) {
    try {
      tls = loadTls(settings, origins, config.file)
    } catch (err) {
      tlsError = (err as Error).message
    }
  }
  return { config: { ...config, settings, authUsers, hba, tls, warnings }, tlsError }
}

function setSetting(settings: Settings, item: IniItem & { kind: 'entry' }, rejects: string[]) {
  const place = { file: item.file, line: item.line, key: item.key }
  const spec = SETTINGS_BY_NAME.get(item.key.toLowerCase())
  if (!spec) throw new ConfigError('unknown setting', place)
  if (spec.name !== item.key) rejects.push(`${at(item)} ${item.key}`)
  let value: unknown
  try {
    value = parseSettingValue(spec, item.value)
  } catch (err) {
    throw new ConfigError((err as Error).message, place)
  }
  if (spec.type === 'bool' && BOOL_WORDS.test(item.value)) {
    rejects.push(`${at(item)} ${item.key} = ${item.value}`)
  }
  set(settings, spec, value)
  return spec
}

// [peers] (PgBouncer 1.19+): peer id = host=... port=... pool_size=...
// With peer_id set, a CancelRequest whose key names another peer is sent on
// to that peer's host and port (a directory for its unix socket).
function parsePeer(item: IniItem & { kind: 'entry' }): PeerConfig {
  const place = { file: item.file, line: item.line, key: item.key }
  if (!/^[0-9]+$/.test(item.key) || Number(item.key) < 1 || Number(item.key) > 16383) {
    throw new ConfigError('peer ids must be numbers from 1 to 16383', place)
  }
  let pairs: { key: string; value: string }[]
  try {
    pairs = parseConnString(item.value)
  } catch (err) {
    throw new ConfigError(`syntax error in connection string: ${(err as Error).message}`, place)
  }
  const peer: PeerConfig = { id: Number(item.key), host: '', port: 6432 }
  for (const { key, value } of pairs) {
    if (key === 'host') {
      peer.host = value
    } else if (key === 'port') {
      const port = Number(value)
      if (!Number.isInteger(port) || port < 1 || port > 65535)
        throw new ConfigError(`invalid port: ${value}`, place)
      peer.port = port
    } else if (key === 'pool_size') {
      const size = Number(value)
      if (!Number.isInteger(size) || size < 0)
        throw new ConfigError(`invalid pool_size: ${value}`, place)
      peer.poolSize = size
    } else {
      throw new ConfigError(`unrecognized connection parameter: ${key}`, place)
    }
  }
  if (peer.host === '') throw new ConfigError('host was not provided', place)
  return peer
}

// CLI flags win over the file. They are typed values, checked here all the same.
function applyOverrides(
  settings: Settings,
  overrides: Partial<Settings>,
  origins: Map<string, Place>,
): void {
  for (const [prop, value] of Object.entries(overrides)) {
    if (value === undefined) continue
    const spec = SPEC_BY_PROP.get(prop)
    if (!spec) throw new ConfigError('unknown setting (command line)', { key: prop })
    const problem = checkSettingValue(spec, value)
    if (problem) throw new ConfigError(`${problem} (command line)`, { key: spec.name })
    set(settings, spec, Array.isArray(value) ? [...value] : value)
    origins.delete(spec.name)
  }
}

// Checks that need the whole picture, then reads the auth_file.
function finish(
  settings: Settings,
  origins: Map<string, Place>,
  warnings: string[],
): Record<string, string> {
  const where = (name: string) => ({ ...origins.get(name), key: name })
  if (settings.authDbname === ADMIN_DATABASE) {
    throw new ConfigError(
      `cannot use the reserved "${ADMIN_DATABASE}" database as an auth_dbname`,
      where('auth_dbname'),
    )
  }
  if (UNSUPPORTED_AUTH.has(settings.authType)) {
    throw new ConfigError(
      `auth_type ${settings.authType} is not supported by this version`,
      where('auth_type'),
    )
  }
  let authUsers: Record<string, string> = Object.create(null)
  if (settings.authFile !== null) {
    const from = origins.get('auth_file')?.file ?? null
    const path = resolveConfigPath(settings.authFile, from)
    let text: string
    try {
      text = readFileSync(path, 'utf8')
    } catch (err) {
      throw new ConfigError(
        `cannot read auth_file "${settings.authFile}": ${errText(err)}`,
        where('auth_file'),
      )
    }
    authUsers = parseUserlist(text, settings.authFile)
    settings.authFile = path
  } else if (PASSWORD_AUTH.has(settings.authType) && settings.authUser === null) {
    warnings.push(
      `auth_type ${settings.authType} without auth_file or auth_user: no user can log in`,
    )
  }
  return authUsers
}

// auth_type hba: the rules of auth_hba_file, read once here (start and reload).
function hbaRules(settings: Settings, origins: Map<string, Place>): HbaRule[] | null {
  if (settings.authType !== 'hba') return null
  const place = origins.get('auth_hba_file') ?? origins.get('auth_type')
  if (settings.authHbaFile === '') {
    throw new ConfigError('auth_type hba needs auth_hba_file', { ...place, key: 'auth_type' })
  }
  const path = resolveConfigPath(settings.authHbaFile, origins.get('auth_hba_file')?.file ?? null)
  settings.authHbaFile = path
  return loadHba(path, place ?? {})
}

function set(settings: Settings, spec: SettingSpec, value: unknown): void {
  ;(settings as unknown as Record<string, unknown>)[spec.prop] = value
}

const at = (p: Place) => (p.file === OBJECT_FILE ? 'config' : `${p.file}:${p.line}`)
