import type { Semaphore } from '@pgbouncer-cluster/protocol/semaphore'

export const PERMIT_POOL = 1
export const PERMIT_DATABASE = 2
export const PERMIT_USER = 4

/**
 * The right to hold a server, shared by every worker: a permit of the pool's
 * semaphore, and of its database's and user's where max_db_connections or
 * max_user_connections is set (invariant 1). A server keeps the mask of what
 * it took and gives back exactly those, whatever a reload changes meanwhile.
 */
export class Permits {
  /** The limit that refused the last permit (PERMIT_POOL, _DATABASE or _USER): the one to wait on. */
  refusedBy = PERMIT_POOL
  private readonly pool: Semaphore
  private readonly database: Semaphore
  private readonly user: Semaphore
  /** This worker, as the semaphores' holder (a dead worker's permits are given back by it). */
  private readonly holder: number

  constructor(pool: Semaphore, database: Semaphore, user: Semaphore, holder: number) {
    this.pool = pool
    this.database = database
    this.user = user
    this.holder = holder
  }

  /**
   * Takes one permit of the pool, and of its database and user where those
   * are limited (a limit of 0), or none at all. Returns which it took, 0 if
   * a limit is reached (refusedBy says which).
   */
  take(poolLimit: number, maxDb: number, maxUser: number): number {
    const holder = this.holder
    if (!this.pool.tryAcquire(poolLimit, holder)) return this.refused(PERMIT_POOL, 0)
    let mask = PERMIT_POOL
    if (maxDb > 0) {
      if (!this.database.tryAcquire(maxDb, holder)) return this.refused(PERMIT_DATABASE, mask)
      mask |= PERMIT_DATABASE
    }
    if (maxUser > 0) {
      if (!this.user.tryAcquire(maxUser, holder)) return this.refused(PERMIT_USER, mask)
      mask |= PERMIT_USER
    }
    return mask
  }

  /** `limit` refused: what was taken before it goes back, and a wait must be on the one that is full. */
  private refused(limit: number, taken: number): 0 {
    if (taken !== 0) this.release(taken)
    this.refusedBy = limit
    return 0
  }

  release(mask: number): void {
    const holder = this.holder
    if (mask & PERMIT_USER) this.user.release(holder)
    if (mask & PERMIT_DATABASE) this.database.release(holder)
    if (mask & PERMIT_POOL) this.pool.release(holder)
  }

  /** The semaphore behind a PERMIT_* bit. */
  semaphore(permit: number): Semaphore {
    if (permit === PERMIT_DATABASE) return this.database
    if (permit === PERMIT_USER) return this.user
    return this.pool
  }

  /** Servers of the pool in every worker. */
  used(): number {
    return this.pool.used()
  }

  /** Permits this worker holds of the pool. */
  held(): number {
    return this.pool.held(this.holder)
  }

  /** Which of the database's and user's limits another pool waits at, in any worker: PERMIT_* bits. */
  waitingLimits(): number {
    return (
      (this.database.waiters() > 0 ? PERMIT_DATABASE : 0) |
      (this.user.waiters() > 0 ? PERMIT_USER : 0)
    )
  }
}
