// Exact order statistics over latency samples: runs are short enough that
// sorting every sample is cheaper than getting an HDR histogram right.

export interface LatencySummary {
  count: number
  avg: number
  p50: number
  p95: number
  p99: number
  p999: number
  max: number
}

/** Nearest-rank percentile of an ascending-sorted array (q in 0..100). */
export function percentileSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length
  if (n === 0) return Number.NaN
  if (q <= 0) return sorted[0]!
  if (q >= 100) return sorted[n - 1]!
  const rank = Math.ceil((q / 100) * n)
  return sorted[Math.min(n, Math.max(1, rank)) - 1]!
}

export function median(values: readonly number[]): number {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  const n = xs.length
  if (n === 0) return Number.NaN
  const mid = n >> 1
  return n % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2
}

/** Sorts a copy (Float64Array sort is numeric and fast) and summarises it. */
export function summarize(samples: ArrayLike<number>): LatencySummary {
  const sorted = Float64Array.from(samples).sort()
  let sum = 0
  for (let i = 0; i < sorted.length; i++) sum += sorted[i]!
  const count = sorted.length
  return {
    count,
    avg: count === 0 ? Number.NaN : sum / count,
    p50: percentileSorted(sorted, 50),
    p95: percentileSorted(sorted, 95),
    p99: percentileSorted(sorted, 99),
    p999: percentileSorted(sorted, 99.9),
    max: count === 0 ? Number.NaN : sorted[count - 1]!,
  }
}

/**
 * Log-spaced histogram (4 buckets per power of two) so the JSON keeps the
 * shape of each run's distribution without every transaction's latency:
 * [bucket lower bound, count] pairs, ascending, in the samples' unit.
 */
export function logHistogram(samples: ArrayLike<number>): [number, number][] {
  const counts = new Map<number, number>()
  for (let i = 0; i < samples.length; i++) {
    const v = samples[i]!
    const bucket = v <= 0 ? 0 : 2 ** (Math.floor(Math.log2(v) * 4) / 4)
    counts.set(bucket, (counts.get(bucket) ?? 0) + 1)
  }
  return [...counts].sort((a, b) => a[0] - b[0]).map(([k, c]) => [Number(k.toPrecision(4)), c])
}
