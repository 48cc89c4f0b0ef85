import type { ControlMessage, ControlOf } from '@pgbouncer-cluster/protocol/control'
import { Counter } from '@pgbouncer-cluster/protocol/counters'
import type { SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import type { Logger } from '@pgbouncer-cluster/worker/log'
import type { DatabaseEntry, FullTable, SlotRegistry } from './registry.ts'

/** What the slot service needs of the coordinator. */
export interface PoolSlotsHost {
  readonly registry: SlotRegistry
  readonly shared: SharedMemory
  readonly log: Logger
  /** The name has a [databases] entry of its own: never freed, as in PgBouncer. */
  configured(database: string): boolean
  /** The name is the admin console's (no [databases] entry claims it). */
  console(database: string): boolean
  /** PAUSE (or KILL) of that database is in force: PgBouncer keeps a paused one too. */
  paused(database: string): boolean
  /** autodb_idle_timeout of the running configuration, in seconds; 0 or less: never by time. */
  idleTimeout(): number
  /** The workers alive now. */
  workers(): number[]
  send(worker: number, msg: ControlMessage): void
  /** A database's slot is freed: what the coordinator kept about it goes too (its breaker). */
  released(database: string): void
}

interface Request {
  kind: 'pool' | 'client'
  worker: number
  database: string
  user: string
  /** With a client request: the pool's user, whose pool slot comes with the answer. */
  poolUser?: string
}

/** How often automatic databases are looked at for autodb_idle_timeout. */
const SWEEP_MS = 1000
/** Unused automatic databases freed at once when a table is full. */
const ROOM_BATCH = 16
/** A release some worker has not answered within this is given up: the database stays. */
const ANSWER_MS = 5000
/** A database a worker would not let go is not asked again for room this soon. */
const REFUSED_MS = 1000
/** No such SQLSTATE in PgBouncer, which has no fixed tables: configuration_limit_exceeded. */
const TABLE_FULL = '53400'

/**
 * The coordinator's side of the pool slots: it answers the workers' requests
 * from the registry and frees automatic databases (made by the '*' entry)
 * that nobody uses, after autodb_idle_timeout as PgBouncer does, and at once
 * when a table is full, so that a process serves any number of databases over
 * its life on a fixed amount of shared memory.
 *
 * A slot is given to something else only once no worker can count against it
 * any more: every worker is asked to let the database go ('release-databases')
 * and does so only if nothing of it is in use there (a client, a login on its
 * way, a server, a permit, a wait); the database's requests meanwhile are held,
 * and answered once the release is over. Only when all have let go, and shared
 * memory shows no permit, waiter or client of it, are its slots zeroed
 * (semaphores, counter rows, histograms, breaker words) and released. If any
 * worker still uses it, it stays as it was and the workers that let go ask for
 * its slots again when they need them.
 */
export class PoolSlots {
  private readonly host: PoolSlotsHost
  /** Requests for a database being released, by name: answered once it is over. */
  private readonly held = new Map<string, Request[]>()
  /** Releases under way: the workers that have not answered, whether all let go, since when. */
  private readonly releases = new Map<
    string,
    { waiting: Set<number>; letGo: boolean; since: number }
  >()
  /** Requests that found a table full while releases under way may make room. */
  private waitingForRoom: Request[] = []
  /** When a worker last kept a database (no room is sought there for a while). */
  private readonly kept = new Map<string, number>()
  private readonly timer: NodeJS.Timeout
  /** Automatic databases freed so far (/metrics). */
  freed = 0

  constructor(host: PoolSlotsHost) {
    this.host = host
    this.timer = setInterval(() => this.sweep(Date.now()), SWEEP_MS)
    this.timer.unref()
  }

  close(): void {
    clearInterval(this.timer)
  }

  /** A worker's 'pool-slot-request' or 'client-slot-request'. */
  request(msg: ControlOf<'pool-slot-request'> | ControlOf<'client-slot-request'>): void {
    const req: Request = {
      kind: msg.type === 'pool-slot-request' ? 'pool' : 'client',
      worker: msg.worker,
      database: msg.database,
      user: msg.user,
    }
    if (msg.type === 'client-slot-request' && msg.poolUser !== undefined)
      req.poolUser = msg.poolUser
    this.serve(req)
  }

  /** A worker's answer to 'release-databases'. */
  onReleased(msg: ControlOf<'databases-released'>): void {
    for (const name of msg.kept) this.answered(String(name), msg.worker, false)
    for (const name of msg.released) this.answered(String(name), msg.worker, true)
  }

  private answered(name: string, worker: number, letGo: boolean): void {
    const release = this.releases.get(name)
    if (release === undefined || !release.waiting.delete(worker)) return
    if (!letGo) release.letGo = false
    if (release.waiting.size === 0) this.finish(name)
  }

  /** A worker died: it uses nothing any more, and will not answer. */
  workerGone(worker: number): void {
    for (const [name, release] of [...this.releases]) {
      if (release.waiting.delete(worker) && release.waiting.size === 0) this.finish(name)
    }
  }

  /**
   * Whether anything of the database is counted in shared memory: a client
   * (every login is counted), a server or a permit (one closing included), a
   * waiter on a semaphore or a queued client of any worker.
   */
  inUse(db: DatabaseEntry): boolean {
    const shared = this.host.shared
    if (shared.databaseClients(db.slot).used() > 0) return true
    const dbSem = shared.database(db.slot)
    if (dbSem.used() > 0 || dbSem.waiters() > 0) return true
    for (const pool of db.pools.values()) {
      const sem = shared.pool(pool)
      if (sem.used() > 0 || sem.waiters() > 0) return true
      if (shared.counters.sum(pool, Counter.cl_waiting) > 0) return true
    }
    return false
  }

  /** autodb_idle_timeout: an automatic database unused that long is freed. */
  sweep(now: number): void {
    for (const [name, at] of this.kept) if (now - at >= REFUSED_MS) this.kept.delete(name)
    // A worker that does not answer (stuck, or its answer lost) keeps the database.
    for (const [name, release] of [...this.releases]) {
      if (now - release.since < ANSWER_MS) continue
      release.letGo = false
      this.finish(name)
    }
    const timeout = this.host.idleTimeout() * 1000
    const due: DatabaseEntry[] = []
    for (const db of this.host.registry.allDatabases()) {
      if (db.releasing) continue
      if (!this.freeable(db) || this.inUse(db)) {
        db.idleSince = 0
        continue
      }
      if (db.idleSince === 0) db.idleSince = now
      else if (timeout > 0 && now - db.idleSince >= timeout) due.push(db)
    }
    if (due.length > 0) this.release(due, 'autodb_idle_timeout')
  }

  private freeable(db: DatabaseEntry): boolean {
    return !this.host.configured(db.name) && !this.host.paused(db.name)
  }

  private serve(req: Request): void {
    const registry = this.host.registry
    if (req.kind === 'client' && this.host.console(req.database)) {
      // The console's clients are counted outside the database table (registry.consoleSlots).
      const { database, user } = req
      const slots = registry.consoleSlots(user)
      this.host.send(req.worker, { type: 'client-slot', database, user, ...slots })
      return
    }
    const known = registry.database(req.database)
    if (known?.releasing) {
      let held = this.held.get(req.database)
      if (held === undefined) this.held.set(req.database, (held = []))
      held.push(req)
      return
    }
    const { database, user } = req
    let reply: ControlMessage | FullTable
    if (req.kind === 'pool') {
      const slots = registry.slotsFor(database, user)
      reply = typeof slots === 'string' ? slots : { type: 'pool-slot', database, user, ...slots }
    } else {
      const slots = registry.clientSlotsFor(database, user)
      if (typeof slots === 'string') reply = slots
      else {
        const answer: ControlOf<'client-slot'> = { type: 'client-slot', database, user, ...slots }
        // The pool's too, when there is room: else the worker asks when it opens the pool.
        const poolUser = req.poolUser
        const pool = poolUser === undefined ? 'none' : registry.slotsFor(database, poolUser)
        if (typeof pool !== 'string') {
          answer.poolUser = poolUser
          answer.pool = pool.pool
          answer.poolUserSlot = pool.userSlot
        }
        reply = answer
      }
    }
    if (typeof reply === 'string') {
      // Releases under way may make room; else unused automatic databases are freed for it.
      if (this.releases.size > 0 || this.makeRoom()) this.waitingForRoom.push(req)
      else this.refuse(req, reply)
      return
    }
    registry.database(database)!.idleSince = 0
    this.host.send(req.worker, reply)
  }

  /**
   * A table is full: the automatic databases nobody uses are freed now,
   * whatever autodb_idle_timeout says, those unused longest first. Whether
   * any was found.
   */
  private makeRoom(): boolean {
    const now = Date.now()
    const candidates: DatabaseEntry[] = []
    for (const db of this.host.registry.allDatabases()) {
      if (db.releasing || !this.freeable(db) || now - (this.kept.get(db.name) ?? 0) < REFUSED_MS)
        continue
      if (!this.inUse(db)) candidates.push(db)
    }
    // Unused since longest first; those not yet seen unused after them, oldest first.
    candidates.sort((a, b) => (a.idleSince || now) - (b.idleSince || now))
    if (candidates.length > 0) this.release(candidates.slice(0, ROOM_BATCH), 'tables full')
    return candidates.length > 0
  }

  /** Asks every worker, in one message each, to let these databases go. */
  private release(dbs: DatabaseEntry[], why: string): void {
    const workers = this.host.workers()
    const names = dbs.map((db) => db.name)
    for (const db of dbs) {
      db.releasing = true
      this.releases.set(db.name, { waiting: new Set(workers), letGo: true, since: Date.now() })
    }
    this.host.log.debug({ databases: names.length, reason: why }, 'releasing automatic databases')
    for (const worker of workers) {
      this.host.send(worker, { type: 'release-databases', databases: names })
    }
    if (workers.length === 0) for (const name of names) this.finish(name)
  }

  /** Every worker answered: free the database's slots if all let go, then serve who waited. */
  private finish(name: string): void {
    const release = this.releases.get(name)!
    this.releases.delete(name)
    const registry = this.host.registry
    const db = registry.database(name)!
    db.releasing = false
    if (release.letGo && !this.inUse(db) && this.clear(db)) {
      registry.release(name)
      this.freed++
      this.kept.delete(name)
      this.host.released(name)
      this.host.log.info({ database: name }, `automatic database ${name} freed: unused`)
    } else {
      db.idleSince = 0
      this.kept.set(name, Date.now())
    }
    const held = this.held.get(name)
    this.held.delete(name)
    for (const req of held ?? []) this.serve(req)
    const waiting = this.waitingForRoom
    this.waitingForRoom = []
    for (const req of waiting) this.serve(req)
  }

  /**
   * Zeroes what the database's slots hold, for whatever gets them next. No
   * worker refers to them any more; a semaphore that still counts something
   * (which would mean a worker does) is left alone, and so is the database.
   */
  private clear(db: DatabaseEntry): boolean {
    const shared = this.host.shared
    const registry = this.host.registry
    let clean = shared.clearDatabase(db.slot)
    for (const pool of db.pools.values()) clean = shared.clearPool(pool) && clean
    for (const user of registry.usersOnlyOf(db)) clean = shared.clearUser(user) && clean
    if (!clean) {
      this.host.log.error(
        { database: db.name },
        'automatic database kept: a slot of it still counts a permit or a waiter',
      )
    }
    return clean
  }

  private refuse(req: Request, table: FullTable): void {
    const { max } = this.host.registry.usage()[table]
    const what = table.slice(0, -1)
    const message = `no more ${table} allowed: all ${max} ${what} slots are in use`
    this.host.log.warn({ database: req.database, user: req.user, table, max }, message)
    this.host.send(req.worker, {
      type: 'pool-slot-error',
      database: req.database,
      user: req.user,
      sqlstate: TABLE_FULL,
      message,
    })
  }
}
