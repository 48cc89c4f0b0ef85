import { Counter, type PoolCounters } from '@pgbouncer-cluster/protocol/counters'
import { epochMs, fromEpochMs, preciseClock } from '../clock.ts'

/** What rebalancing reads of its pool (pool.ts's Pool). */
export interface RebalancedPool {
  readonly waitingCount: number
  /** When our longest-waiting client began to wait (preciseClock()), 0 if none waits. */
  readonly oldestWaitingSince: number
  /** Idle servers, the one idle longest first. */
  readonly idle: { readonly length: number; shift(): { close(): void } | undefined }
}

/**
 * Invariant 3 between workers: a pool's servers belong to the worker that
 * opened them, so a worker whose clients wait less gives a permit back (by
 * closing a server) to one whose clients wait more. The pool's row of the
 * shared counters says how many clients wait in each worker and since when.
 */
export class Rebalance {
  private readonly pool: RebalancedPool
  private readonly counters: PoolCounters
  private readonly slot: number
  private readonly workerId: number
  private giveBackTimer: NodeJS.Timeout | null = null
  /**
   * The fewest servers the pool held idle since the give-back timer was
   * armed: that many stayed idle the whole delay, so our own clients did not
   * need them (scheduleGiveBack).
   */
  private idleLow = 0
  /** When this worker last handed a busy pool's server over (preciseClock ms). */
  private lastHandover = 0

  constructor(pool: RebalancedPool, counters: PoolCounters, slot: number, workerId: number) {
    this.pool = pool
    this.counters = counters
    this.slot = slot
    this.workerId = workerId
  }

  /**
   * Our waiting clients, in this worker's counter row: other workers read the
   * sum to decide to give a permit back, and a dead worker's row is zeroed.
   */
  publishWaiting(): void {
    this.counters.set(this.slot, this.workerId, Counter.cl_waiting, this.pool.waitingCount)
    // Other threads read it: in epoch milliseconds, as their clocks start elsewhere.
    const since = this.pool.oldestWaitingSince
    this.counters.setOldestWait(this.slot, this.workerId, since === 0 ? 0 : epochMs(since))
  }

  /** Clients of other workers waiting for this pool. */
  othersWaiting(): number {
    return this.counters.sum(this.slot, Counter.cl_waiting) - this.pool.waitingCount
  }

  /** A server was closed so that another worker may open one (SHOW STATS' handovers). */
  handedOver(): void {
    this.counters.add(this.slot, this.workerId, Counter.handovers, 1)
  }

  /**
   * Fairness between workers: a server just freed goes back to the shared
   * pool (closed, its permit released) when another worker's longest-waiting
   * client has waited more than twice as long as ours, and STARVATION_MS
   * longer. Comparing wait times, not queue lengths, lets no worker's clients
   * starve behind another worker's queue. The factor keeps an overloaded but
   * balanced pool free of reconnect churn: with hundreds of clients queued on
   * every worker, waits of a few hundred milliseconds differ by more than
   * STARVATION_MS by chance, and each hand-over (a close, a PostgreSQL fork, a
   * login) lengthens the giver's queue until the server is handed back. For
   * the same reason one worker hands over at most one server of a pool per
   * HANDOVER_INTERVAL_MS: the receiver's new server needs that long to log in
   * and shorten the waits this decision reads.
   */
  owesPermit(): boolean {
    if (this.pool.waitingCount === 0 || this.othersWaiting() <= 0) return false
    const oldest = this.counters.oldestWaitOfOthers(this.slot, this.workerId)
    if (oldest === 0) return false
    const theirs = fromEpochMs(oldest)
    const now = preciseClock()
    if (now - this.lastHandover < HANDOVER_INTERVAL_MS) return false
    if (now - theirs <= 2 * (now - this.pool.oldestWaitingSince) + STARVATION_MS) return false
    this.lastHandover = now
    return true
  }

  /**
   * After a hand-over the pool takes no permit for HANDOVER_INTERVAL_MS while
   * another worker's clients still wait: the closed server's permit is meant
   * for them, and our own waiting clients would otherwise take it back at
   * once (serverGone grows the pool), leaving the other worker starved and
   * PostgreSQL forking for nothing. Milliseconds left, 0 when not yielding.
   */
  yieldMs(): number {
    if (this.lastHandover === 0) return 0
    const left = this.lastHandover + HANDOVER_INTERVAL_MS - preciseClock()
    return left > 0 && this.othersWaiting() > 0 ? left : 0
  }

  /** An idle server left the list: it did not stay idle through the give-back delay. */
  idleTaken(): void {
    if (this.pool.idle.length < this.idleLow) this.idleLow = this.pool.idle.length
  }

  /**
   * Another worker's clients wait while we keep a server idle. Our own
   * clients may want it again within moments (closing and reopening costs
   * PostgreSQL a fork), so a server goes back only if one stayed idle the
   * whole of about the time a new connection takes. In a busy pool some
   * server is idle at almost any instant, between two transactions: giving
   * that one back would close and reopen servers many times a second while
   * both workers' clients queue. The one timer of a pool, armed only while
   * other workers' clients wait (not per transaction).
   */
  scheduleGiveBack(): void {
    if (this.giveBackTimer !== null) return
    const idle = this.pool.idle
    this.idleLow = idle.length
    this.giveBackTimer = setTimeout(() => {
      this.giveBackTimer = null
      if (Math.min(this.idleLow, idle.length) === 0 || this.othersWaiting() <= 0) return
      this.handedOver()
      idle.shift()!.close()
      if (idle.length > 0) this.scheduleGiveBack()
    }, GIVE_BACK_DELAY_MS)
  }

  /** The pool is let go: no timer of it may run on. */
  dispose(): void {
    if (this.giveBackTimer !== null) clearTimeout(this.giveBackTimer)
    this.giveBackTimer = null
  }
}

/** How much longer than twice ours another worker's client must have waited before we hand over a server. */
const STARVATION_MS = 100
/** About what opening a server connection takes: an idle server wanted elsewhere waits this long. */
const GIVE_BACK_DELAY_MS = 10
/** At most one hand-over of a busy pool's server per worker this often. */
const HANDOVER_INTERVAL_MS = 100
