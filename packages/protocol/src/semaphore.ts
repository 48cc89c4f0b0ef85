/**
 * Counting semaphore in shared memory, with a per-holder ledger so the
 * coordinator can take back every permit of a worker that died.
 *
 *   i32[base + 0]            used      permits taken, all holders together
 *   i32[base + 1]            waiters   callers parked in acquire(), all holders
 *   i32[base + 2]            lock      0, or holder + 1 while it updates used+ledger
 *   i32[base + 3]            journal   `used` before that update
 *   i32[base + 4]            journal   the holder's ledger before that update
 *   i32[base + 5 + holder]   ledger    permits held by that holder (worker id)
 *   i32[base + 5 + H + holder]           that holder's share of `waiters`, so a
 *                                      dead holder's parked acquire()s are
 *                                      taken off `waiters` by reclaim()
 *
 * `used` and a ledger word always change together, inside a tiny lock whose
 * journal records both words' previous values. A thread can be terminated
 * between any two instructions (V8 takes interrupts at stack checks, builtins
 * included); if it dies holding the lock, reclaim() rolls the pair back from
 * the journal, so no permit is ever lost or double-counted (invariant 2).
 * Waiters park on the `used` word with Atomics.waitAsync and are woken by
 * Atomics.notify on that same word. The limit is not stored: every caller passes its own, so a
 * reload can change pool_size and a client that has waited past
 * reserve_pool_timeout can ask for pool_size + reserve_pool_size.
 *
 * A pending Atomics.waitAsync does not keep the event loop alive. A thread
 * whose only pending work is an acquire() may exit (or a test may end) with the
 * promise unsettled; keeping the loop alive is the caller's business.
 */

export class SemaphoreError extends Error {
  readonly code: 'ERR_SEMAPHORE'

  constructor(message: string) {
    super(message)
    this.name = 'SemaphoreError'
    this.code = 'ERR_SEMAPHORE'
  }
}

export interface AcquireOptions {
  /** Give up after this long and resolve false. Absent: wait forever. */
  timeoutMs?: number
  /** Abort the wait: the promise rejects with `signal.reason`. */
  signal?: AbortSignal
}

const USED = 0
const WAITERS = 1
const LOCK = 2
const JOURNAL_USED = 3
const JOURNAL_LEDGER = 4
const LEDGER = 5
/** Spins before a contended locker sleeps a little (the lock is held for nanoseconds). */
const SPINS = 64
const ABORTED: unique symbol = Symbol('aborted')

export class Semaphore {
  readonly #i32: Int32Array
  readonly #used: number
  readonly #waiters: number
  readonly #lock: number
  readonly #ledger: number
  readonly #maxHolders: number

  /** Int32 words one semaphore occupies. */
  static words(maxHolders: number): number {
    return LEDGER + 2 * maxHolders
  }

  constructor(i32: Int32Array, base: number, maxHolders: number) {
    if (!(i32.buffer instanceof SharedArrayBuffer)) {
      throw new SemaphoreError('semaphore needs an Int32Array over a SharedArrayBuffer')
    }
    if (!Number.isInteger(maxHolders) || maxHolders < 1) {
      throw new SemaphoreError(`maxHolders must be a positive integer, got ${maxHolders}`)
    }
    if (!Number.isInteger(base) || base < 0 || base + Semaphore.words(maxHolders) > i32.length) {
      throw new SemaphoreError(`semaphore at word ${base} does not fit in ${i32.length} words`)
    }
    this.#i32 = i32
    this.#used = base + USED
    this.#waiters = base + WAITERS
    this.#lock = base + LOCK
    this.#ledger = base + LEDGER
    this.#maxHolders = maxHolders
  }

  /** Take one permit if fewer than `limit` are in use. Never waits for a permit. */
  tryAcquire(limit: number, holder: number): boolean {
    const ledger = this.#ledgerIndex(holder)
    const i32 = this.#i32
    // Refuse without the lock when full: the common answer under load.
    if (!(Atomics.load(i32, this.#used) < limit)) return false // also refuses a NaN limit
    this.#enter(holder, ledger)
    const current = Atomics.load(i32, this.#used)
    const ok = current < limit
    if (ok) {
      Atomics.store(i32, this.#used, current + 1)
      Atomics.add(i32, ledger, 1)
    }
    Atomics.store(i32, this.#lock, 0)
    return ok
  }

  /** Give back `n` permits of `holder` and wake up to `n` waiters. */
  release(holder: number, n = 1): void {
    const ledger = this.#ledgerIndex(holder)
    if (!Number.isInteger(n) || n < 1) {
      throw new SemaphoreError(`release count must be a positive integer, got ${n}`)
    }
    const i32 = this.#i32
    this.#enter(holder, ledger)
    const held = Atomics.load(i32, ledger)
    if (held < n) {
      Atomics.store(i32, this.#lock, 0)
      throw new SemaphoreError(`holder ${holder} releases ${n} permit(s) but holds ${held}`)
    }
    Atomics.sub(i32, ledger, n)
    Atomics.sub(i32, this.#used, n)
    Atomics.store(i32, this.#lock, 0)
    // Skipping notify is safe: a waiter bumps `waiters` before it re-reads
    // `used`, and Atomics are sequentially consistent, so if we read 0 here
    // that waiter is bound to see the permits we just returned.
    if (Atomics.load(i32, this.#waiters) > 0) Atomics.notify(i32, this.#used, n)
  }

  /** Takes the lock for `holder` and journals `used` and its ledger word. */
  #enter(holder: number, ledger: number): void {
    const i32 = this.#i32
    const lock = this.#lock
    const tag = holder + 1
    for (let spins = 0; Atomics.compareExchange(i32, lock, 0, tag) !== 0; spins++) {
      // Held for a few instructions, unless its holder died inside: then only
      // reclaim() frees it. Sleep briefly rather than burn the core meanwhile
      // (Atomics.wait is allowed in worker threads and in Node's main thread).
      if (spins > SPINS) Atomics.wait(i32, lock, Atomics.load(i32, lock), 1)
    }
    Atomics.store(i32, this.#lock + (JOURNAL_USED - LOCK), Atomics.load(i32, this.#used))
    Atomics.store(i32, this.#lock + (JOURNAL_LEDGER - LOCK), Atomics.load(i32, ledger))
  }

  /**
   * Take one permit, waiting until one is free, `timeoutMs` passes (false) or
   * `signal` aborts (rejects with its reason). See the file comment about the
   * event loop.
   */
  async acquire(limit: number, holder: number, opts?: AcquireOptions): Promise<boolean> {
    const signal = opts?.signal
    signal?.throwIfAborted()
    if (this.tryAcquire(limit, holder)) return true
    const timeoutMs = opts?.timeoutMs
    const deadline = timeoutMs === undefined ? Infinity : performance.now() + timeoutMs
    if (timeoutMs !== undefined && !(timeoutMs > 0)) return false

    let onAbort: (() => void) | undefined
    const aborted =
      signal === undefined
        ? undefined
        : new Promise<typeof ABORTED>((resolve) => {
            onAbort = () => resolve(ABORTED)
            signal.addEventListener('abort', onAbort, { once: true })
          })
    // `waiters` is a hint that lets release() skip notify; a holder's share is
    // kept beside it so reclaim() can take back what a dead holder left.
    const share = this.#ledger + this.#maxHolders + holder
    Atomics.add(this.#i32, share, 1)
    Atomics.add(this.#i32, this.#waiters, 1)
    try {
      return await this.#waitLoop(limit, holder, deadline, aborted, signal)
    } finally {
      Atomics.sub(this.#i32, this.#waiters, 1)
      Atomics.sub(this.#i32, share, 1)
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
    }
  }

  async #waitLoop(
    limit: number,
    holder: number,
    deadline: number,
    aborted: Promise<typeof ABORTED> | undefined,
    signal: AbortSignal | undefined,
  ): Promise<boolean> {
    const i32 = this.#i32
    const used = this.#used
    for (;;) {
      if (this.tryAcquire(limit, holder)) return true
      const observed = Atomics.load(i32, used)
      if (observed < limit) continue // a permit came back between the CAS and the load
      const remaining = deadline - performance.now()
      if (remaining <= 0) return false
      const wait = Atomics.waitAsync(i32, used, observed, remaining)
      if (!wait.async) {
        if (wait.value === 'timed-out') return false
        continue // 'not-equal': `used` moved, look again
      }
      const outcome =
        aborted === undefined ? await wait.value : await Promise.race([wait.value, aborted])
      if (outcome === ABORTED) {
        // The waitAsync cannot be withdrawn: it stays queued on `used` until
        // notified or its timeout. If a release wakes it, hand the wake-up on
        // so that permit is not left with nobody told about it.
        wait.value.then((late) => {
          if (late === 'ok') Atomics.notify(i32, used, 1)
        })
        throw signal!.reason
      }
      if (signal?.aborted) {
        if (outcome === 'ok') Atomics.notify(i32, used, 1)
        throw signal.reason
      }
      if (this.tryAcquire(limit, holder)) return true
      if (outcome === 'timed-out') return false
      // Woken for a permit we could not take. If `used` did drop, it is above
      // our limit but maybe not above a waiter with a larger one (reserve
      // pool): pass the wake-up on. Bounded, as each waiter passes at most
      // once per drop of `used`.
      if (Atomics.load(i32, used) < observed) Atomics.notify(i32, used, 1)
    }
  }

  used(): number {
    return Atomics.load(this.#i32, this.#used)
  }

  waiters(): number {
    return Atomics.load(this.#i32, this.#waiters)
  }

  held(holder: number): number {
    return Atomics.load(this.#i32, this.#ledgerIndex(holder))
  }

  /**
   * Coordinator only, once `holder` is dead: return all its permits and wake
   * as many waiters. Returns how many permits came back. If it died inside
   * the lock, its half-done update is first rolled back from the journal.
   */
  reclaim(holder: number): number {
    const ledger = this.#ledgerIndex(holder)
    const i32 = this.#i32
    const lock = this.#lock
    const share = this.#ledger + this.#maxHolders + holder
    // Nothing of the dead holder's here: no write, so a page of shared memory
    // nobody used is not committed by a sweep over every semaphore.
    if (
      Atomics.load(i32, lock) !== holder + 1 &&
      Atomics.load(i32, ledger) === 0 &&
      Atomics.load(i32, share) === 0
    )
      return 0
    if (Atomics.load(i32, lock) === holder + 1) {
      Atomics.store(i32, this.#used, Atomics.load(i32, lock + (JOURNAL_USED - LOCK)))
      Atomics.store(i32, ledger, Atomics.load(i32, lock + (JOURNAL_LEDGER - LOCK)))
      Atomics.store(i32, lock, 0)
    }
    // Take the lock as an outside holder id so live workers cannot interleave.
    this.#enterAs(this.#maxHolders + 1)
    const n = Atomics.exchange(i32, ledger, 0)
    if (n > 0) Atomics.sub(i32, this.#used, n)
    Atomics.store(i32, lock, 0)
    const parked = Atomics.exchange(i32, share, 0)
    if (parked > 0) Atomics.sub(i32, this.#waiters, parked)
    if (n > 0) Atomics.notify(i32, this.#used, n)
    return n
  }

  /**
   * Coordinator only, when the slot is to count for something else and no
   * holder refers to it any more: every word back to zero. Refuses (false,
   * nothing changed) while a permit is taken, a caller waits or the lock is
   * held: then a holder still uses it. A clean semaphore is left unwritten.
   */
  clear(): boolean {
    const i32 = this.#i32
    if (
      Atomics.load(i32, this.#used) !== 0 ||
      Atomics.load(i32, this.#waiters) !== 0 ||
      Atomics.load(i32, this.#lock) !== 0
    )
      return false
    const base = this.#used
    const end = this.#ledger + 2 * this.#maxHolders
    for (let i = base; i < end; i++) if (Atomics.load(i32, i) !== 0) Atomics.store(i32, i, 0)
    return true
  }

  #enterAs(tag: number): void {
    const i32 = this.#i32
    while (Atomics.compareExchange(i32, this.#lock, 0, tag) !== 0) {
      Atomics.wait(i32, this.#lock, Atomics.load(i32, this.#lock), 1)
    }
  }

  #ledgerIndex(holder: number): number {
    if (!(holder >= 0 && holder < this.#maxHolders) || !Number.isInteger(holder)) {
      throw new SemaphoreError(`holder ${holder} out of range 0..${this.#maxHolders - 1}`)
    }
    return this.#ledger + holder
  }
}
