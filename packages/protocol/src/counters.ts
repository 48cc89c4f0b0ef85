/**
 * Per-pool statistics in shared memory, for SHOW POOLS / SHOW STATS.
 *
 * One row per (worker, pool); only that worker writes its row, readers sum the
 * rows of a pool over all workers:
 *
 *   byteOffset ─► ┌ worker 0 ┬ pool 0: f64[16]  (128 bytes, two cache lines) ┐
 *                 │          ├ pool 1: f64[16]                              │
 *                 │          └ ... maxPools rows                            │
 *                 ├ worker 1 ┬ pool 0 ...                                   │
 *                 └ ... maxWorkers blocks                                   ┘
 *
 *   row word  0..5   gauges  cl_active cl_waiting sv_active sv_idle sv_used sv_login
 *   row word  6..13  totals  xact_count query_count bytes_received bytes_sent
 *                            xact_time_us query_time_us wait_time_us server_connects
 *   row word 14      oldest_wait  since when (epoch ms) this worker's longest-waiting
 *                                 client of the pool waits; 0 when none does
 *   row word 15      handovers   servers this worker closed so that another worker's
 *                                 waiting clients get the permit (rebalance), a total
 *
 * Why Float64 and plain `+=` rather than Atomics: with one writer per row
 * there is no read-modify-write race, and on Node 24 (x64) a plain Float64
 * add costs ~1.8 ns against ~21 ns for Atomics.add on Int32 and ~35 ns for
 * Atomics.add on BigInt64 (which also allocates a BigInt per call). Float64
 * counts integers exactly up to 2^53. The price: the JS memory model allows a
 * racing reader to see a torn 8-byte value; V8 on x64/arm64 emits single
 * aligned 8-byte moves, and a reader here only feeds statistics.
 */

export const Counter = {
  cl_active: 0,
  cl_waiting: 1,
  sv_active: 2,
  sv_idle: 3,
  sv_used: 4,
  sv_login: 5,
  xact_count: 6,
  query_count: 7,
  bytes_received: 8,
  bytes_sent: 9,
  xact_time_us: 10,
  query_time_us: 11,
  wait_time_us: 12,
  server_connects: 13,
  handovers: 15,
} as const

export type CounterName = keyof typeof Counter
export type CounterIndex = (typeof Counter)[CounterName]

/** Counters below this index are gauges (current state), the rest totals. */
export const GAUGE_COUNT = 6
export const COUNTER_COUNT = 14
const ROW_WORDS = 16
const OLDEST_WAIT = 14
const ROW_BYTES = ROW_WORDS * 8

export class PoolCounters {
  readonly maxPools: number
  readonly maxWorkers: number
  readonly #f64: Float64Array

  /** Bytes the counter region needs; a multiple of 64. */
  static byteLength(maxPools: number, maxWorkers: number): number {
    return maxPools * maxWorkers * ROW_BYTES
  }

  constructor(sab: SharedArrayBuffer, byteOffset: number, maxPools: number, maxWorkers: number) {
    this.maxPools = maxPools
    this.maxWorkers = maxWorkers
    this.#f64 = new Float64Array(sab, byteOffset, maxPools * maxWorkers * ROW_WORDS)
  }

  /**
   * Hot path: allocation-free for a number delta. Call only for the calling
   * worker's own row; no bounds checks beyond the typed array's own (an
   * out-of-range write is silently dropped), slots come from the coordinator.
   */
  add(pool: number, worker: number, c: number, delta: number | bigint): void {
    this.#f64[(worker * this.maxPools + pool) * ROW_WORDS + c] +=
      typeof delta === 'number' ? delta : Number(delta)
  }

  /** Overwrite one counter of the caller's own row (e.g. a gauge recounted). */
  set(pool: number, worker: number, c: number, value: number): void {
    this.#f64[(worker * this.maxPools + pool) * ROW_WORDS + c] = value
  }

  /** One worker's value, for per-worker views. */
  read(pool: number, worker: number, c: number): number {
    return this.#f64[(worker * this.maxPools + pool) * ROW_WORDS + c]
  }

  /** Since when (epoch ms) the worker's longest-waiting client waits, 0 for none. */
  setOldestWait(pool: number, worker: number, since: number): void {
    this.#f64[(worker * this.maxPools + pool) * ROW_WORDS + OLDEST_WAIT] = since
  }

  /** The earliest oldest-wait of the other workers, 0 when none of them has a client waiting. */
  oldestWaitOfOthers(pool: number, worker: number): number {
    const f64 = this.#f64
    const stride = this.maxPools * ROW_WORDS
    let oldest = 0
    for (let i = pool * ROW_WORDS + OLDEST_WAIT, w = 0; w < this.maxWorkers; w++, i += stride) {
      const since = f64[i]
      if (w !== worker && since !== 0 && (oldest === 0 || since < oldest)) oldest = since
    }
    return oldest
  }

  /** Sum over all workers, as a number. */
  sum(pool: number, c: number): number {
    const f64 = this.#f64
    const stride = this.maxPools * ROW_WORDS
    let total = 0
    for (let i = pool * ROW_WORDS + c, w = 0; w < this.maxWorkers; w++, i += stride) total += f64[i]
    return total
  }

  /** Sum over all workers. Fractional deltas (e.g. times) are rounded here. */
  get(pool: number, c: number): bigint {
    return BigInt(Math.round(this.sum(pool, c)))
  }

  /** Every counter of a pool summed over workers, keyed by name. */
  snapshot(pool: number): Record<CounterName, bigint> {
    const out = {} as Record<CounterName, bigint>
    for (const name of Object.keys(Counter) as CounterName[])
      out[name] = this.get(pool, Counter[name])
    return out
  }

  /**
   * Coordinator only, once `worker` is dead: its gauges describe connections
   * that no longer exist. Its totals stay, as they count work that was done.
   */
  resetWorker(worker: number): void {
    const f64 = this.#f64
    const start = worker * this.maxPools * ROW_WORDS
    for (let p = 0; p < this.maxPools; p++) {
      const row = start + p * ROW_WORDS
      // Rows never written stay unwritten: their pages are not committed for nothing.
      let zero = f64[row + OLDEST_WAIT] === 0
      for (let c = 0; zero && c < GAUGE_COUNT; c++) zero = f64[row + c] === 0
      if (zero) continue
      f64.fill(0, row, row + GAUGE_COUNT)
      f64[row + OLDEST_WAIT] = 0
    }
  }

  /** Coordinator only, when a pool slot no worker uses is given to another (database, user). */
  resetPool(pool: number): void {
    const stride = this.maxPools * ROW_WORDS
    for (let w = 0; w < this.maxWorkers; w++) {
      const start = w * stride + pool * ROW_WORDS
      this.#f64.fill(0, start, start + ROW_WORDS)
    }
  }
}
