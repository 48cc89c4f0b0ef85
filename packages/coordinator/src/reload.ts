import { type Config, type DatabaseConfig, resolveDatabase } from './config/config.ts'
import { SETTINGS } from './config/settings.ts'

export interface Reload {
  /** What the cluster runs with from now on. */
  config: Config
  /** Settings the file changed that only a restart applies (PgBouncer ignores them on RELOAD too). */
  ignored: string[]
  /** Databases whose connection (host, port, dbname, user, password, ...) changed or that went away. */
  changedDatabases: string[]
}

const NOT_RELOADABLE = SETTINGS.filter((s) => !s.reloadable)

/**
 * The configuration a reload (SIGHUP) switches to: the file as read again,
 * except the settings PgBouncer does not change on RELOAD (listen address and
 * port, pidfile, ...), which keep their running values. `known` names the
 * databases to compare besides those of the files (pools the '*' entry made).
 */
export function nextConfig(running: Config, loaded: Config, known: Iterable<string> = []): Reload {
  const settings = { ...loaded.settings }
  const ignored: string[] = []
  const from = running.settings as unknown as Record<string, unknown>
  const to = settings as unknown as Record<string, unknown>
  for (const spec of NOT_RELOADABLE) {
    if (!sameValue(from[spec.prop], to[spec.prop])) ignored.push(spec.name)
    to[spec.prop] = from[spec.prop]
  }
  const config: Config = { ...loaded, settings }
  const names = new Set([
    ...Object.keys(running.databases),
    ...Object.keys(loaded.databases),
    ...known,
  ])
  const changedDatabases = [...names].filter(
    (name) => !sameServer(resolveDatabase(running, name), resolveDatabase(config, name)),
  )
  return { config, ignored, changedDatabases }
}

/** Whether two entries reach the same server as the same user: pool sizes may differ. */
export function sameServer(a: DatabaseConfig | null, b: DatabaseConfig | null): boolean {
  if (a === null || b === null) return a === b
  // host is the list as written; a port per host can change behind the first.
  const samePorts =
    a.hosts.length === b.hosts.length && a.hosts.every((h, i) => h.port === b.hosts[i]!.port)
  return samePorts && CONNECTION_KEYS.every((k) => a[k] === b[k])
}

const CONNECTION_KEYS = [
  'host',
  'port',
  'dbname',
  'user',
  'password',
  'connectQuery',
  'clientEncoding',
  'datestyle',
  'timezone',
  'applicationName',
] as const satisfies readonly (keyof DatabaseConfig)[]

function sameValue(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) && Array.isArray(b))
    return a.length === b.length && a.every((v, i) => v === b[i])
  return a === b
}
