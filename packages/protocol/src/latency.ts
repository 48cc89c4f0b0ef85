/**
 * Latency histograms and per-worker figures in shared memory, for /metrics.
 *
 * Histograms: one row per (worker, database slot); only that worker writes
 * its row, the coordinator sums the rows of a database over workers on scrape:
 *
 *   byteOffset ─► ┌ worker 0 ┬ database 0: f64[128]  (1 KiB) ┐
 *                 │          └ ... maxDatabases rows         │
 *                 └ ... maxWorkers blocks                    ┘
 *
 *   row word   0..40    query time        40 bucket counts, then the sum in µs
 *   row word  41..81    transaction time  same
 *   row word  82..122   client wait time  same
 *   row word 123..127   spare
 *
 * Buckets (not cumulative here; the reader accumulates) have upper bounds of
 * 2^k and 1.5·2^k µs, from 32 µs to 2^24 µs (16.8 s), then +Inf: a bound at
 * most 1.5× the one before, so p50/p95/p99 read to within that step from
 * sub-millisecond to seconds. The bucket of a time is found with one
 * Math.clz32 and a bit test, no loop; recording is two Float64 adds, no
 * allocation (one writer per row, as counters.ts explains).
 *
 * Figures: f64[16] per worker, written by that worker about once a second
 * (WorkerFigure below), read by the coordinator on scrape.
 */

export const Latency = { query: 0, xact: 1, wait: 2 } as const
export type LatencyKind = (typeof Latency)[keyof typeof Latency]

/** Index of the first finite bound (32 µs) in the 2^k / 1.5·2^k series. */
const FIRST = 9
/** Index of the last finite bound (2^24 µs). */
const LAST = 47
export const FINITE_BUCKETS = LAST - FIRST + 1
const INF_BUCKET = FINITE_BUCKETS
const HIST_WORDS = FINITE_BUCKETS + 2 // buckets, +Inf, sum
const SUM = FINITE_BUCKETS + 1
const MAX_US = 2 ** 24
const ROW_WORDS = 128
const ROW_BYTES = ROW_WORDS * 8

/** The finite upper bounds, in µs: 32, 48, 64, 96, 128, ... 2^24. */
export const BUCKET_BOUNDS_US: readonly number[] = Array.from(
  { length: FINITE_BUCKETS },
  (_, b) => {
    const i = b + FIRST
    return i % 2 === 0 ? 1.5 * 2 ** (i / 2) : 2 ** ((i + 1) / 2)
  },
)

/** The bucket of a time in µs: the first whose bound is >= it. */
export function bucketOf(us: number): number {
  if (!(us > 32)) return 0 // NaN and a clock that went back land here too
  if (us > MAX_US) return INF_BUCKET
  const x = Math.ceil(us) - 1
  const k = 31 - Math.clz32(x)
  return 2 * k + ((x >>> (k - 1)) & 1) - FIRST
}

/** One histogram summed over workers: cumulative counts per bound (last = +Inf), sum in µs. */
export interface HistogramSnapshot {
  cumulative: number[]
  sumUs: number
}

export class LatencyHistograms {
  readonly maxDatabases: number
  readonly maxWorkers: number
  readonly #f64: Float64Array

  static byteLength(maxDatabases: number, maxWorkers: number): number {
    return maxDatabases * maxWorkers * ROW_BYTES
  }

  constructor(
    sab: SharedArrayBuffer,
    byteOffset: number,
    maxDatabases: number,
    maxWorkers: number,
  ) {
    this.maxDatabases = maxDatabases
    this.maxWorkers = maxWorkers
    this.#f64 = new Float64Array(sab, byteOffset, maxDatabases * maxWorkers * ROW_WORDS)
  }

  /** Hot path: only for the calling worker's own row. O(1), allocation-free. */
  record(database: number, worker: number, kind: number, us: number): void {
    const base = (worker * this.maxDatabases + database) * ROW_WORDS + kind * HIST_WORDS
    this.#f64[base + bucketOf(us)] += 1
    this.#f64[base + SUM] += us
  }

  /** A database's histogram summed over all workers. */
  snapshot(database: number, kind: number): HistogramSnapshot {
    const f64 = this.#f64
    const cumulative = new Array<number>(FINITE_BUCKETS + 1).fill(0)
    let sumUs = 0
    for (let w = 0; w < this.maxWorkers; w++) {
      const base = (w * this.maxDatabases + database) * ROW_WORDS + kind * HIST_WORDS
      for (let b = 0; b <= FINITE_BUCKETS; b++) cumulative[b] += f64[base + b]
      sumUs += f64[base + SUM]
    }
    for (let b = 1; b <= FINITE_BUCKETS; b++) cumulative[b] += cumulative[b - 1]
    return { cumulative, sumUs }
  }

  /** Coordinator only, when a database slot no worker uses is given to another database. */
  resetDatabase(database: number): void {
    for (let w = 0; w < this.maxWorkers; w++) {
      const start = (w * this.maxDatabases + database) * ROW_WORDS
      this.#f64.fill(0, start, start + ROW_WORDS)
    }
  }
}

/** What a worker publishes about itself, f64 words of its figures row. */
export const WorkerFigure = {
  /** Event-loop delay over the last period, µs. */
  loop_delay_mean_us: 0,
  loop_delay_p99_us: 1,
  loop_delay_max_us: 2,
  /** The thread's own CPU time since it started, µs. */
  cpu_user_us: 3,
  cpu_system_us: 4,
  /** The thread's V8 heap. */
  heap_used_bytes: 5,
  heap_total_bytes: 6,
  /** When (epoch ms) the row was last written; 0 before the first time. */
  published_at: 7,
} as const

const FIGURE_WORDS = 16

export class WorkerFigures {
  readonly maxWorkers: number
  readonly #f64: Float64Array

  static byteLength(maxWorkers: number): number {
    return maxWorkers * FIGURE_WORDS * 8
  }

  constructor(sab: SharedArrayBuffer, byteOffset: number, maxWorkers: number) {
    this.maxWorkers = maxWorkers
    this.#f64 = new Float64Array(sab, byteOffset, maxWorkers * FIGURE_WORDS)
  }

  set(worker: number, figure: number, value: number): void {
    this.#f64[worker * FIGURE_WORDS + figure] = value
  }

  read(worker: number, figure: number): number {
    return this.#f64[worker * FIGURE_WORDS + figure]
  }
}
