// One measured run: one workload against one target, with the pooler's CPU
// and peak memory taken over exactly that run.

import { startAllocWindow } from './alloc.ts'
import type { LoadGenerator } from './loadgen.ts'
import { type PgbenchResult, runPgbench } from './pgbench.ts'
import { startWindow } from './proc-stats.ts'
import type { Skip } from './report.ts'
import { logHistogram, summarize } from './stats.ts'
import type { Target } from './targets.ts'
import type { Workload } from './workloads.ts'

export interface RunSample {
  workload: string
  target: string
  round: number
  elapsedS: number
  tps: number
  transactions: number
  failed: number
  /** pgbench clients that gave up after an error (their later transactions never ran). */
  abortedClients: number
  errors: string[]
  /** Milliseconds, from every transaction's own latency. */
  latency: { avg: number; p50: number; p95: number; p99: number; p999: number; max: number }
  /** pgbench's own "latency average" (ms), kept to cross-check the log files. */
  reportedLatencyAvgMs?: number
  poolerCpuS: number
  cpuUsPerTx: number
  peakRssBytes: number
  /** V8 heap bytes the pooler's threads allocated per transaction (pgbouncer-cluster only). */
  allocBytesPerTx: number
  /** Milliseconds the pooler's threads spent collecting garbage, per 100,000 transactions. */
  gcMsPer100kTx: number
  /** [lower bound µs, count] pairs, 4 log buckets per power of two. */
  histogramUs: [number, number][]
}

/** Why a target cannot run a workload at all (not a failure of the target). */
export function skipReason(w: Workload, t: Target, pgMaxConnections: number): string | null {
  if (w.kind === 'pgbench' && w.tls) {
    if (t.kind === 'direct') return 'the PostgreSQL here runs without TLS'
    if (!t.clientTls) return 'no client TLS: the certificate could not be made (openssl)'
  }
  if (t.kind === 'direct' || t.kind === 'relay') {
    const clients =
      w.kind === 'pgbench' ? w.clients : w.kind === 'pg-dynamic' ? w.maxConcurrency : w.concurrency
    // the poolers keep up to 3 × pool_size server connections open meanwhile
    if (clients > pgMaxConnections - 70) {
      return `${clients} clients exceed PostgreSQL's max_connections (${pgMaxConnections})`
    }
  }
  return null
}

/** The workloads the bare Node relay runs: those the speed targets are stated for. */
export const RELAY_WORKLOADS: ReadonlySet<string> = new Set(['select-simple'])

export interface PlannedRun {
  w: Workload
  round: number
  t: Target
}

/**
 * The order of the runs: workload by workload, and within one, the targets
 * round-robin (A B C D A B C D ...) so drift of the machine hits each alike.
 */
export function planRuns(
  workloads: readonly Workload[],
  targets: readonly Target[],
  rounds: number,
  pgMaxConnections: number,
): { plan: PlannedRun[]; skips: Skip[] } {
  const plan: PlannedRun[] = []
  const skips: Skip[] = []
  for (const w of workloads) {
    const runnable: Target[] = []
    for (const t of targets) {
      // The relay is a yardstick for the speed targets, not a contender.
      if (t.kind === 'relay' && !RELAY_WORKLOADS.has(w.name)) continue
      const reason =
        t.status === 'ready'
          ? skipReason(w, t, pgMaxConnections)
          : `${t.status}: ${t.reason?.split('\n')[0] ?? ''}`
      if (reason) skips.push({ workload: w.name, target: t.id, reason })
      else runnable.push(t)
    }
    for (let round = 1; round <= rounds; round++) {
      for (const t of runnable) plan.push({ w, round, t })
    }
  }
  return { plan, skips }
}

/** Fills a pooler's pool and the caches before anything is measured. */
export function warmUp(
  t: Target,
  pgbenchBin: string,
  onSpawn?: (pid: number) => void,
): Promise<PgbenchResult> {
  // The select workloads' shape (32 clients, so some queue for the pool of 20),
  // for as long as it takes a pooler's JIT to compile what they run: a first
  // round must not pay for it.
  const w: Workload = {
    kind: 'pgbench',
    name: 'warm-up',
    title: 'warm-up',
    clients: 32,
    threads: 2,
    mode: 'simple',
    reconnect: false,
    tls: false,
    durationS: 3,
  }
  return runPgbench(w, t.endpoint, { bin: pgbenchBin, onSpawn })
}

export interface MeasureContext {
  pgbenchBin: string
  loadgen: LoadGenerator
  onSpawn?: (pid: number) => void
}

export async function measure(
  w: Workload,
  t: Target,
  round: number,
  ctx: MeasureContext,
): Promise<RunSample> {
  // the allocation window first: its threads collect as they open it (alloc.ts)
  const alloc = await startAllocWindow(t.allocDir)
  const win = startWindow(t.pids)
  let latenciesUs: Float64Array
  let transactions: number
  let failed: number
  let abortedClients = 0
  let errors: string[]
  let elapsedS: number
  let tps: number
  let reportedLatencyAvgMs: number | undefined
  if (w.kind === 'pgbench') {
    const r = await runPgbench(w, t.endpoint, { bin: ctx.pgbenchBin, onSpawn: ctx.onSpawn })
    latenciesUs = r.latenciesUs
    transactions = Number.isFinite(r.transactions) ? r.transactions : r.latenciesUs.length
    failed = Math.max(r.failed, r.logFailed)
    abortedClients = r.abortedClients
    errors = r.errors
    elapsedS = r.elapsedS
    tps = Number.isFinite(r.tps) ? r.tps : 0
    reportedLatencyAvgMs = r.latencyAvgMs
  } else {
    const r = await ctx.loadgen.run({
      mode: w.kind === 'pg-churn' ? 'churn' : 'dynamic',
      endpoint: t.endpoint,
      lanes: w.kind === 'pg-churn' ? w.concurrency : w.maxConcurrency,
      iterations: w.kind === 'pg-churn' ? w.iterations : 0,
      durationMs: w.kind === 'pg-dynamic' ? w.durationS * 1000 : 0,
      profile:
        w.kind === 'pg-dynamic'
          ? { min: w.minConcurrency, max: w.maxConcurrency, periods: w.periods }
          : { min: 0, max: 0, periods: 0 },
    })
    latenciesUs = r.latenciesUs
    transactions = r.ok
    failed = r.failed
    errors = r.errors
    elapsedS = r.elapsedMs / 1000
    tps = elapsedS > 0 ? r.ok / elapsedS : 0
  }
  const proc = win.stop()
  const heap = await alloc.stop()
  const s = summarize(latenciesUs)
  const ms = (us: number) => us / 1000
  return {
    workload: w.name,
    target: t.id,
    round,
    elapsedS,
    tps,
    transactions,
    failed,
    abortedClients,
    errors,
    latency: {
      avg: ms(s.avg),
      p50: ms(s.p50),
      p95: ms(s.p95),
      p99: ms(s.p99),
      p999: ms(s.p999),
      max: ms(s.max),
    },
    reportedLatencyAvgMs,
    poolerCpuS: proc.cpuS,
    cpuUsPerTx: transactions > 0 ? (proc.cpuS * 1e6) / transactions : Number.NaN,
    peakRssBytes: proc.peakRssBytes,
    allocBytesPerTx: transactions > 0 ? heap.allocatedBytes / transactions : Number.NaN,
    gcMsPer100kTx: transactions > 0 ? (heap.gcMs * 100_000) / transactions : Number.NaN,
    histogramUs: logHistogram(latenciesUs),
  }
}
