import type { SharedLayout } from '@pgbouncer-cluster/protocol/shared-memory'

export interface Slots {
  pool: number
  databaseSlot: number
  userSlot: number
}

/**
 * Which shared-memory slot belongs to which pool, database and user. Only the
 * coordinator assigns them, so every worker agrees; a slot is never reused
 * while the process lives (pools are few; PgBouncer keeps them too).
 */
export class SlotRegistry {
  private readonly layout: Omit<SharedLayout, 'maxWorkers'>
  private readonly pools = new Map<string, number>()
  private readonly databases = new Map<string, number>()
  private readonly users = new Map<string, number>()

  constructor(layout: Omit<SharedLayout, 'maxWorkers'>) {
    this.layout = layout
  }

  slotsFor(database: string, user: string): Slots | null {
    const databaseSlot = assign(this.databases, database, this.layout.maxDatabases)
    const userSlot = assign(this.users, user, this.layout.maxUsers)
    const pool = assign(this.pools, `${database}\u0000${user}`, this.layout.maxPools)
    if (databaseSlot < 0 || userSlot < 0 || pool < 0) return null
    return { pool, databaseSlot, userSlot }
  }

  /** The database's and the user's slots alone (client counts); -1 where the table is full. */
  clientSlotsFor(database: string, user: string): { databaseSlot: number; userSlot: number } {
    return {
      databaseSlot: assign(this.databases, database, this.layout.maxDatabases),
      userSlot: assign(this.users, user, this.layout.maxUsers),
    }
  }

  /** Slots of every pool, for the admin views. */
  entries(): IterableIterator<[string, number]> {
    return this.pools.entries()
  }

  /** Slots of every database, for /metrics. */
  databaseEntries(): IterableIterator<[string, number]> {
    return this.databases.entries()
  }
}

function assign(map: Map<string, number>, key: string, max: number): number {
  let slot = map.get(key)
  if (slot === undefined) {
    if (map.size >= max) return -1
    slot = map.size
    map.set(key, slot)
  }
  return slot
}
