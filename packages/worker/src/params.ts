/**
 * The session parameters PgBouncer keeps in step between a client and whichever
 * server it is linked to (its "varcache"): five always, plus the ones
 * track_extra_parameters names (PgBouncer 1.20+). Keys are the names in lower
 * case, as PostgreSQL compares them; ParameterStatus and SET use the spelling
 * the configuration gave.
 */
const BASE = [
  'client_encoding',
  'DateStyle',
  'TimeZone',
  'standard_conforming_strings',
  'application_name',
] as const

export type TrackedName = string
export type Vars = Record<TrackedName, string | undefined>

/** The tracked keys, in a fixed order (varsKey and the SET depend on it). */
let tracked: string[] = []
/** Lower-case key → the spelling used in SET and in ParameterStatus. */
let spelling = new Map<string, string>()

/**
 * Which parameters this thread tracks. track_extra_parameters is read at
 * start only (PgBouncer ignores a change on reload), so once per worker.
 */
export function trackParameters(extra: readonly string[]): void {
  tracked = []
  spelling = new Map()
  for (const name of [...BASE, ...extra]) {
    const key = name.toLowerCase()
    if (spelling.has(key)) continue
    spelling.set(key, name)
    tracked.push(key)
  }
}
trackParameters(['IntervalStyle'])

/** The tracked keys, in order. */
export function trackedNames(): readonly string[] {
  return tracked
}

/** `DateStyle` → `datestyle`; null for parameters we do not track. */
export function trackedName(name: string): TrackedName | null {
  const key = name.toLowerCase()
  return spelling.has(key) ? key : null
}

/** The spelling the server reports a tracked key under. */
export function reportedName(key: TrackedName): string {
  return spelling.get(key) ?? key
}

function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`
}

/**
 * The value as it goes after `SET name=`. search_path (GUC_LIST_QUOTE) is
 * reported already quoted as a list, so it goes as it is, as in PgBouncer.
 */
function setValue(key: string, value: string): string {
  if (key === 'search_path') return value === '""' ? "''" : value
  return quoteLiteral(value)
}

/**
 * One combined statement that makes the server's values equal the client's, or
 * null when nothing differs. A client with no opinion on a parameter keeps the
 * server's value; a parameter the server never reported (one PostgreSQL does
 * not report, such as search_path before PostgreSQL 18) is left alone, as
 * PgBouncer leaves it.
 */
export function syncStatement(want: Vars, have: Vars): string | null {
  let sql = ''
  for (const key of tracked) {
    const value = want[key]
    const current = have[key]
    if (value === undefined || current === undefined || value === current) continue
    sql += `SET ${key}=${setValue(key, value)};`
  }
  return sql === '' ? null : sql
}

export const OPTIONS_FORM =
  "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed"

/**
 * Parses the `options` startup parameter as PgBouncer 1.20+ does: a list of
 * `-c name=value` (or `-cname=value`) and `--name=value`, a backslash escaping
 * the next character. Tracked parameters are taken; others are skipped when
 * ignore_startup_parameters names them (or `options`), else refused.
 * Returns the settings, or the FATAL text.
 */
export function parseOptions(
  options: string,
  ignored: readonly string[],
): { vars: Vars } | { error: string } {
  const vars: Vars = {}
  let i = 0
  const n = options.length
  const isSpace = (ch: string) => ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r'
  for (;;) {
    while (i < n && isSpace(options[i]!)) i++
    if (i >= n) break
    if (options.startsWith('-c', i)) {
      i += 2
      while (i < n && isSpace(options[i]!)) i++
    } else if (options.startsWith('--', i)) {
      i += 2
    } else {
      return { error: OPTIONS_FORM }
    }
    let arg = ''
    while (i < n && !isSpace(options[i]!)) {
      if (options[i] === '\\') {
        i++
        if (i >= n) break
      }
      arg += options[i++]
    }
    const eq = arg.indexOf('=')
    if (eq < 0) return { error: OPTIONS_FORM }
    const name = arg.slice(0, eq)
    const key = trackedName(name)
    if (key !== null) vars[key] = arg.slice(eq + 1)
    else if (!ignored.includes(name) && !ignored.includes('options')) {
      return { error: `unsupported startup parameter in options: ${name}` }
    }
  }
  return { vars }
}

/** One combination of tracked values, shared by every client that has it. */
export interface SharedVars {
  readonly key: string
  readonly vars: Vars
}

const sharedVars = new Map<string, SharedVars>()
/** Distinct combinations kept; past this the table starts over (clients keep theirs). */
const SHARED_VARS_MAX = 1024

/**
 * Idle clients are many and nearly all agree on their tracked parameters: one
 * Vars object and one key string per combination, instead of a copy of both
 * in every client (about 150 bytes each). A shared Vars is never written to:
 * a client whose value changes makes a new one and shares that.
 */
export function shareVars(vars: Vars): SharedVars {
  const key = varsKey(vars)
  let shared = sharedVars.get(key)
  if (shared === undefined) {
    if (sharedVars.size >= SHARED_VARS_MAX) sharedVars.clear()
    shared = { key, vars }
    sharedVars.set(key, shared)
  }
  return shared
}

/**
 * A value that is equal for two Vars exactly when they agree on every tracked
 * parameter: comparing keys on link costs one string compare in the common
 * case where nothing differs.
 */
export function varsKey(vars: Vars): string {
  let key = ''
  for (const name of tracked) key += `${vars[name] ?? '\u0001'}\u0000`
  return key
}
