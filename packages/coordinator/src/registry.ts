import { poolKey } from '@pgbouncer-cluster/protocol/pool-key'
import type { SharedLayout } from '@pgbouncer-cluster/protocol/shared-memory'

/**
 * The pool-slot tables in shared memory, unless PGBOUNCER_CLUSTER_SLOTS says
 * otherwise (cluster.ts): databases alive at once (an unused automatic
 * database's slots are freed and given again), users, (database, user) pools.
 * Their pages are committed only where written, which slot reuse keeps to
 * about the most alive at once.
 */
export const SLOT_TABLES = { maxPools: 32768, maxDatabases: 16384, maxUsers: 4096 } as const

export interface Slots {
  pool: number
  databaseSlot: number
  userSlot: number
}

/** A database the registry has given a slot to. */
export interface DatabaseEntry {
  readonly name: string
  readonly slot: number
  /** Its pools' slots, by user. */
  readonly pools: Map<string, number>
  /** The users whose slots it holds (its pools' and its clients' users). */
  readonly users: Set<string>
  /** When it was first seen unused since it was last used (Date.now()); 0 while in use. */
  idleSince: number
  /** Being freed: every worker is asked to let it go (pool-slots.ts). */
  releasing: boolean
}

/** What release() took back: the slots to zero before they count for anything else. */
export interface Released {
  databaseSlot: number
  pools: number[]
  users: number[]
}

/** Which table is full, when a slot cannot be given. */
export type FullTable = 'databases' | 'users' | 'pools'

/**
 * Which shared-memory slot belongs to which pool, database and user. Only the
 * coordinator assigns them, so every worker agrees. A database's slots (its
 * own, its pools', and the slots of users no other database holds) are
 * released together, once every worker has let the database go
 * (pool-slots.ts); a released slot is the first given again (last in, first
 * out), so the shared memory written stays the part that was in use at once.
 */
export class SlotRegistry {
  private readonly layout: Omit<SharedLayout, 'maxWorkers'>
  private readonly databases = new Map<string, DatabaseEntry>()
  private readonly users = new Map<string, { slot: number; databases: number }>()
  private readonly pools = new Map<string, number>()
  /** Users whose slot the console holds (consoleSlots). */
  private readonly consoleUsers = new Set<string>()
  private readonly free = {
    databases: new FreeSlots(),
    users: new FreeSlots(),
    pools: new FreeSlots(),
  }

  constructor(layout: Omit<SharedLayout, 'maxWorkers'>) {
    this.layout = layout
  }

  /**
   * The slots of a (database, user) pool, given now if need be; the table
   * that is full when one cannot be given. Partial success keeps what was
   * given (a database without a pool is released like any other).
   */
  slotsFor(database: string, user: string): Slots | FullTable {
    const db = this.databaseEntry(database)
    if (db === null) return 'databases'
    const userSlot = this.userSlot(db, user)
    if (userSlot < 0) return 'users'
    let pool = db.pools.get(user)
    if (pool === undefined) {
      pool = this.free.pools.take(this.layout.maxPools)
      if (pool < 0) return 'pools'
      db.pools.set(user, pool)
      this.pools.set(poolKey(database, user), pool)
    }
    return { pool, databaseSlot: db.slot, userSlot }
  }

  /** The database's and the user's slots alone (client counts); the table that is full. */
  clientSlotsFor(
    database: string,
    user: string,
  ): { databaseSlot: number; userSlot: number } | FullTable {
    const db = this.databaseEntry(database)
    if (db === null) return 'databases'
    const userSlot = this.userSlot(db, user)
    if (userSlot < 0) return 'users'
    return { databaseSlot: db.slot, userSlot }
  }

  /** The slots a pool has, without giving any. */
  lookup(database: string, user: string): Slots | null {
    const db = this.databases.get(database)
    const pool = db?.pools.get(user)
    const userSlot = this.users.get(user)?.slot
    if (db === undefined || pool === undefined || userSlot === undefined) return null
    return { pool, databaseSlot: db.slot, userSlot }
  }

  database(name: string): DatabaseEntry | undefined {
    return this.databases.get(name)
  }

  /** Every database with a slot. */
  allDatabases(): IterableIterator<DatabaseEntry> {
    return this.databases.values()
  }

  /**
   * Takes a database's slots back: its own, its pools', and those of users
   * no other database holds. The caller has made sure no worker uses them.
   */
  release(name: string): Released | null {
    const db = this.databases.get(name)
    if (db === undefined) return null
    this.databases.delete(name)
    this.free.databases.give(db.slot)
    const pools: number[] = []
    for (const [user, pool] of db.pools) {
      this.pools.delete(poolKey(name, user))
      this.free.pools.give(pool)
      pools.push(pool)
    }
    const users: number[] = []
    for (const user of db.users) {
      const u = this.users.get(user)!
      if (--u.databases > 0) continue
      this.users.delete(user)
      this.free.users.give(u.slot)
      users.push(u.slot)
    }
    return { databaseSlot: db.slot, pools, users }
  }

  /** The slots of the users no other database holds: release(db) frees them with it. */
  usersOnlyOf(db: DatabaseEntry): number[] {
    const out: number[] = []
    for (const user of db.users) {
      const u = this.users.get(user)!
      if (u.databases === 1) out.push(u.slot)
    }
    return out
  }

  /** Slots of every pool, for the admin views. */
  entries(): IterableIterator<[string, number]> {
    return this.pools.entries()
  }

  /** Slots of every database, for /metrics and SHOW DATABASES' client counts. */
  databaseEntries(): IterableIterator<[string, number]> {
    return [...this.databases.values()].map((d) => [d.name, d.slot] as [string, number]).values()
  }

  /** Slots given and the capacity, per table (/metrics). */
  usage(): Record<FullTable, { used: number; max: number }> {
    return {
      databases: { used: this.databases.size, max: this.layout.maxDatabases },
      users: { used: this.users.size, max: this.layout.maxUsers },
      pools: { used: this.pools.size, max: this.layout.maxPools },
    }
  }

  private databaseEntry(name: string): DatabaseEntry | null {
    let db = this.databases.get(name)
    if (db === undefined) {
      const slot = this.free.databases.take(this.layout.maxDatabases)
      if (slot < 0) return null
      db = { name, slot, pools: new Map(), users: new Set(), idleSince: 0, releasing: false }
      this.databases.set(name, db)
    }
    return db
  }

  /** The user's slot, held by `db` from now on; -1 when the table is full. */
  private userSlot(db: DatabaseEntry, user: string): number {
    let u = this.users.get(user)
    if (u === undefined) {
      const slot = this.free.users.take(this.layout.maxUsers)
      if (slot < 0) return -1
      u = { slot, databases: 0 }
      this.users.set(user, u)
    }
    if (!db.users.has(user)) {
      db.users.add(user)
      u.databases++
    }
    return u.slot
  }

  /**
   * The console's client counts (max_db_client_connections and
   * max_user_client_connections apply to it too): the database slot past the
   * table's end, which shared memory has one more of, and the user's slot,
   * held for good once a console user had it; -1 where the users table is full.
   * The console takes no slot a database could use.
   */
  consoleSlots(user: string): { databaseSlot: number; userSlot: number } {
    const databaseSlot = this.consoleDatabaseSlot
    let u = this.users.get(user)
    if (u === undefined) {
      const slot = this.free.users.take(this.layout.maxUsers)
      if (slot < 0) return { databaseSlot, userSlot: -1 }
      u = { slot, databases: 0 }
      this.users.set(user, u)
    }
    if (!this.consoleUsers.has(user)) {
      this.consoleUsers.add(user)
      u.databases++
    }
    return { databaseSlot, userSlot: u.slot }
  }

  /** The console's database slot: one past the table (cluster.ts makes shared memory that big). */
  get consoleDatabaseSlot(): number {
    return this.layout.maxDatabases
  }

  /** Slots of every user, for SHOW USERS' client counts. */
  userEntries(): [string, number][] {
    return [...this.users].map(([name, u]) => [name, u.slot])
  }
}

/** The slots of one table not in use: those given back, then those never given. */
class FreeSlots {
  private readonly released: number[] = []
  private next = 0

  /** A slot below `max`, or -1. */
  take(max: number): number {
    const slot = this.released.pop()
    if (slot !== undefined) return slot
    return this.next < max ? this.next++ : -1
  }

  give(slot: number): void {
    this.released.push(slot)
  }
}
