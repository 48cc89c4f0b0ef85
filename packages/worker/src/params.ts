/**
 * The session parameters PgBouncer keeps in step between a client and whichever
 * server it is linked to (its "varcache"). Keys are PostgreSQL's GUC names in
 * lower case; ParameterStatus reports them with their own spelling, which
 * `trackedName` maps back.
 */
export const TRACKED = [
  'client_encoding',
  'datestyle',
  'timezone',
  'standard_conforming_strings',
  'application_name',
] as const

export type TrackedName = (typeof TRACKED)[number]
export type Vars = Partial<Record<TrackedName, string>>

const byLowerName = new Map<string, TrackedName>(TRACKED.map((n) => [n, n]))

/** `DateStyle` → `datestyle`; null for parameters we do not track. */
export function trackedName(name: string): TrackedName | null {
  return byLowerName.get(name.toLowerCase()) ?? null
}

/** The server's spelling, used when building a SET and the welcome. */
export const REPORTED_NAME: Record<TrackedName, string> = {
  client_encoding: 'client_encoding',
  datestyle: 'DateStyle',
  timezone: 'TimeZone',
  standard_conforming_strings: 'standard_conforming_strings',
  application_name: 'application_name',
}

function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`
}

/**
 * One combined statement that makes the server's values equal the client's, or
 * null when nothing differs. A client with no opinion on a parameter keeps the
 * server's value.
 */
export function syncStatement(want: Vars, have: Vars): string | null {
  let sql = ''
  for (const name of TRACKED) {
    const value = want[name]
    if (value === undefined || value === have[name]) continue
    sql += `SET ${name}=${quoteLiteral(value)};`
  }
  return sql === '' ? null : sql
}

/**
 * Parses `options=-c name=value --name=value` as PostgreSQL does (backslash
 * escapes a space). Returns the settings, or the first option we cannot honour.
 */
export function parseOptions(options: string): { vars: Vars } | { unsupported: string } {
  const words: string[] = []
  let word = ''
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]
    if (ch === '\\' && i + 1 < options.length) {
      word += options[++i]
    } else if (ch === ' ' || ch === '\t') {
      if (word !== '') words.push(word)
      word = ''
    } else {
      word += ch
    }
  }
  if (word !== '') words.push(word)
  const vars: Vars = {}
  for (let i = 0; i < words.length; i++) {
    let setting: string
    if (words[i] === '-c' && i + 1 < words.length) setting = words[++i]
    else if (words[i].startsWith('-c')) setting = words[i].slice(2)
    else if (words[i].startsWith('--')) setting = words[i].slice(2)
    else return { unsupported: words[i] }
    const eq = setting.indexOf('=')
    if (eq <= 0) return { unsupported: setting }
    const name = trackedName(setting.slice(0, eq).replaceAll('-', '_'))
    if (name === null) return { unsupported: setting.slice(0, eq) }
    vars[name] = setting.slice(eq + 1)
  }
  return { vars }
}

/**
 * A value that is equal for two Vars exactly when they agree on every tracked
 * parameter: comparing keys on link costs one string compare in the common
 * case where nothing differs.
 */
export function varsKey(vars: Vars): string {
  let key = ''
  for (const name of TRACKED) key += `${vars[name] ?? '\u0001'}\u0000`
  return key
}
