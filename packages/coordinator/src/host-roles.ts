import { roleName } from '@pgbouncer-cluster/protocol/host-role'
import type { SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'

/** A breaker word's state, as SHOW HOSTS and /metrics name it. */
export const BREAKER_STATES = ['closed', 'open', 'half_open', 'probing'] as const

/** One database with a slot: its name, the slot, its host list and target_session_attrs. */
export interface HostedDatabase {
  name: string
  slot: number
  hosts: readonly { host: string; port: number }[]
  targetSessionAttrs?: string
}

/** One host of a database's list, as the workers left it in shared memory. */
export interface HostRow {
  database: string
  host: string
  port: number
  /** The host's breaker; a one-host database's is its database breaker. */
  state: (typeof BREAKER_STATES)[number]
  /** unknown, primary, standby or read-only primary (protocol/host-role.ts). */
  role: string
  targetSessionAttrs: string
  /** One of a host list (a breaker of its own), not the database's one host. */
  inList: boolean
}

/**
 * Each host of each database that has a slot, in list order. The same
 * host:port twice in a list is shown once: its first entry speaks for it.
 */
export function hostRows(shared: SharedMemory, databases: Iterable<HostedDatabase>): HostRow[] {
  const rows: HostRow[] = []
  for (const db of databases) {
    const words = shared.breaker(db.slot)
    const seen = new Set<string>()
    db.hosts.forEach((h, i) => {
      const key = `${h.host}\u0000${h.port}`
      if (seen.has(key)) return
      seen.add(key)
      const state = db.hosts.length > 1 ? words.hostState(i) : words.state()
      rows.push({
        database: db.name,
        host: h.host,
        port: h.port,
        state: BREAKER_STATES[state] ?? 'closed',
        role: roleName(words.hostRole(i)),
        targetSessionAttrs: db.targetSessionAttrs ?? 'any',
        inList: db.hosts.length > 1,
      })
    })
  }
  return rows
}
