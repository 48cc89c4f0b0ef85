/**
 * auth_type = hba: which rule of auth_hba_file a login matches, as PgBouncer's
 * hba.c decides it. The coordinator parsed and checked the file (its
 * config/hba.ts); the rules arrive here as plain data and are trusted.
 */

export type HbaConnType = 'local' | 'host' | 'hostssl' | 'hostnossl'
export type HbaMethod = 'trust' | 'reject' | 'md5' | 'password' | 'scram-sha-256' | 'cert'

export interface HbaNames {
  all: boolean
  /** Database column only: the database named like the user. */
  sameuser: boolean
  /** Database column only: physical replication connections (PgBouncer 1.23), as in pg_hba.conf. */
  replication: boolean
  names: string[]
}

export interface HbaRule {
  /** Where the rule is, for the log. */
  file: string
  line: number
  type: HbaConnType
  databases: HbaNames
  users: HbaNames
  /** Network and mask as 4 or 16 bytes; null for `local`. */
  address: { bytes: number[]; mask: number[] } | null
  method: HbaMethod
}

/** What the rules look at. `address` is the peer's IP text; null on the unix socket. */
export interface HbaLogin {
  address: string | null
  tls: boolean
  database: string
  user: string
  /** A physical replication client matches only the `replication` keyword, as in PostgreSQL. */
  replication?: 'none' | 'logical' | 'physical'
}

/** The first rule that matches, or null: PgBouncer then refuses the login. */
export function matchHba(rules: readonly HbaRule[], login: HbaLogin): HbaRule | null {
  const bytes = login.address === null ? null : addressBytes(login.address)
  for (const rule of rules) {
    if (bytes === null) {
      if (rule.type !== 'local') continue
    } else {
      if (rule.type === 'local') continue
      if (rule.type === 'hostssl' && !login.tls) continue
      if (rule.type === 'hostnossl' && login.tls) continue
      if (!inNetwork(bytes, rule.address!)) continue
    }
    if (login.replication === 'physical') {
      if (!rule.databases.replication) continue
    } else if (!nameMatch(rule.databases, login.database, login.user)) continue
    if (!nameMatch(rule.users, login.user, null)) continue
    return rule
  }
  return null
}

function nameMatch(names: HbaNames, name: string, user: string | null): boolean {
  if (names.all) return true
  if (names.sameuser && name === user) return true
  return names.names.includes(name)
}

function inNetwork(bytes: number[], net: { bytes: number[]; mask: number[] }): boolean {
  if (bytes.length !== net.bytes.length) return false
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i]! & net.mask[i]!) !== (net.bytes[i]! & net.mask[i]!)) return false
  }
  return true
}

/**
 * An IPv4 or IPv6 address as 4 or 16 bytes; an IPv4-mapped IPv6 address (what
 * a listener on `::` reports for an IPv4 client) as its IPv4 bytes. null when
 * the text is neither.
 */
export function addressBytes(text: string): number[] | null {
  const v4 = parseIpv4(text)
  if (v4 !== null) return v4
  const v6 = parseIpv6(text)
  if (v6 === null) return null
  const mapped = v6.slice(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff
  return mapped ? v6.slice(12) : v6
}

export function parseIpv4(text: string): number[] | null {
  const parts = text.split('.')
  if (parts.length !== 4) return null
  const out: number[] = []
  for (const p of parts) {
    if (!/^[0-9]{1,3}$/.test(p)) return null
    const n = Number(p)
    if (n > 255) return null
    out.push(n)
  }
  return out
}

/** All 16 bytes, IPv4-mapped or not (a mask is parsed with this too). */
export function parseIpv6(text: string): number[] | null {
  let s = text.split('%')[0]!
  if (!s.includes(':')) return null
  // A trailing dotted IPv4 part (::ffff:1.2.3.4) becomes two groups.
  const lastColon = s.lastIndexOf(':')
  const last = s.slice(lastColon + 1)
  if (last.includes('.')) {
    const v4 = parseIpv4(last)
    if (v4 === null) return null
    const hi = ((v4[0]! << 8) | v4[1]!).toString(16)
    const lo = ((v4[2]! << 8) | v4[3]!).toString(16)
    s = `${s.slice(0, lastColon + 1)}${hi}:${lo}`
  }
  const halves = s.split('::')
  if (halves.length > 2) return null
  const groups = (h: string) => (h === '' ? [] : h.split(':'))
  const head = groups(halves[0]!)
  const rest = halves.length === 2 ? groups(halves[1]!) : []
  const present = head.length + rest.length
  if (halves.length === 1 ? present !== 8 : present > 7) return null
  const out: number[] = []
  for (const w of [...head, ...new Array<string>(8 - present).fill('0'), ...rest]) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(w)) return null
    const n = Number.parseInt(w, 16)
    out.push(n >> 8, n & 0xff)
  }
  return out
}
