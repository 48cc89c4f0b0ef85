// Medians over rounds, ratios against PgBouncer and direct PostgreSQL, and
// the Markdown table printed at the end of a run.

import type { RunSample } from './measure.ts'
import { median } from './stats.ts'

export const METRICS = [
  'tps',
  'avgMs',
  'p50Ms',
  'p95Ms',
  'p99Ms',
  'cpuUsPerTx',
  'peakRssMb',
  'allocBPerTx',
  'gcMsPer100kTx',
] as const
export type Metric = (typeof METRICS)[number]
export type Figures = Record<Metric, number>

export interface Row {
  workload: string
  target: string
  rounds: number
  median: Figures
  /**
   * value / PgBouncer's value for the same workload: the median over rounds of
   * each round's ratio (NaN where there is none; see pairedRatio).
   */
  vsPgbouncer: Figures
  /** value / direct PostgreSQL's value for the same workload, paired the same way. */
  vsDirect: Figures
  failed: number
  abortedClients: number
  errors: string[]
}

export interface Skip {
  workload: string
  target: string
  reason: string
}

function figuresOf(s: RunSample): Figures {
  return {
    tps: s.tps,
    avgMs: s.latency.avg,
    p50Ms: s.latency.p50,
    p95Ms: s.latency.p95,
    p99Ms: s.latency.p99,
    cpuUsPerTx: s.cpuUsPerTx,
    peakRssMb: s.peakRssBytes / (1024 * 1024),
    allocBPerTx: s.allocBytesPerTx,
    gcMsPer100kTx: s.gcMsPer100kTx,
  }
}

/** One run's figures and the round it ran in. */
interface RoundFigures {
  round: number
  figures: Figures
}

/**
 * A target's ratio to a baseline: each round's ratio, from the two runs the
 * round put side by side, then their median. A machine's speed can drift
 * between rounds far more than within one (on the 2-core development host,
 * PgBouncer's CPU per transaction read 20.0, 20.4 and 36.8 µs in the three
 * rounds of one run), and a ratio of two medians would set one round's figure
 * against another's. Rounds that lack either side are left out; with no round
 * in common, the ratio of the medians stands in.
 */
function pairedRatio(
  own: readonly RoundFigures[],
  base: readonly RoundFigures[] | undefined,
  medianOwn: Figures,
  medianBase: Figures | undefined,
): Figures {
  const out = {} as Figures
  const byRound = new Map(base?.map((r) => [r.round, r.figures]))
  for (const m of METRICS) {
    const ratios: number[] = []
    for (const { round, figures } of own) {
      const b = byRound.get(round)?.[m]
      if (b !== undefined && b > 0 && Number.isFinite(figures[m])) ratios.push(figures[m] / b)
    }
    if (ratios.length > 0) out[m] = median(ratios)
    else out[m] = medianBase && medianBase[m] > 0 ? medianOwn[m] / medianBase[m] : Number.NaN
  }
  return out
}

export function aggregate(samples: readonly RunSample[]): Row[] {
  const groups = new Map<string, RunSample[]>()
  for (const s of samples) {
    const key = `${s.workload}\0${s.target}`
    const g = groups.get(key)
    if (g) g.push(s)
    else groups.set(key, [s])
  }
  const medians = new Map<string, Figures>()
  const runs = new Map<string, RoundFigures[]>()
  for (const [key, g] of groups) {
    const figs = g.map((s) => ({ round: s.round, figures: figuresOf(s) }))
    const m = {} as Figures
    for (const metric of METRICS) m[metric] = median(figs.map((f) => f.figures[metric]))
    medians.set(key, m)
    runs.set(key, figs)
  }
  const rows: Row[] = []
  for (const [key, g] of groups) {
    const [workload, target] = key.split('\0') as [string, string]
    const m = medians.get(key)!
    const pgb = `${workload}\0pgbouncer`
    const direct = `${workload}\0direct`
    rows.push({
      workload,
      target,
      rounds: g.length,
      median: m,
      vsPgbouncer: pairedRatio(runs.get(key)!, runs.get(pgb), m, medians.get(pgb)),
      vsDirect: pairedRatio(runs.get(key)!, runs.get(direct), m, medians.get(direct)),
      failed: g.reduce((n, s) => n + s.failed, 0),
      abortedClients: g.reduce((n, s) => n + s.abortedClients, 0),
      errors: [...new Set(g.flatMap((s) => s.errors))].slice(0, 3),
    })
  }
  return rows
}

export function fmtNumber(v: number): string {
  if (!Number.isFinite(v)) return '–'
  const abs = Math.abs(v)
  if (abs >= 1000) return Math.round(v).toLocaleString('en-US')
  if (abs >= 100) return v.toFixed(0)
  if (abs >= 10) return v.toFixed(1)
  if (abs >= 1) return v.toFixed(2)
  return v.toFixed(3)
}

function fmtRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : '–'
}

function cell(row: Row, m: Metric): string {
  const v = row.median[m]
  if (!Number.isFinite(v)) return '–'
  const pb = row.target === 'pgbouncer' ? Number.NaN : row.vsPgbouncer[m]
  const pg = row.target === 'direct' ? Number.NaN : row.vsDirect[m]
  if (!Number.isFinite(pb) && !Number.isFinite(pg)) return fmtNumber(v)
  return `${fmtNumber(v)} (${fmtRatio(pb)} / ${fmtRatio(pg)})`
}

export interface TableInput {
  rows: readonly Row[]
  skips: readonly Skip[]
  workloads: readonly { name: string; title: string }[]
  targets: readonly { id: string; label: string }[]
}

const HEADER = [
  'workload',
  'target',
  'tps',
  'avg ms',
  'p50 ms',
  'p95 ms',
  'p99 ms',
  'CPU µs/tx',
  'peak RSS MB',
  'heap B/tx',
  'GC ms/100k tx',
  'failed',
]
const COLUMNS: Metric[] = [
  'tps',
  'avgMs',
  'p50Ms',
  'p95Ms',
  'p99Ms',
  'cpuUsPerTx',
  'peakRssMb',
  'allocBPerTx',
  'gcMsPer100kTx',
]

const esc = (s: string) => s.replaceAll('|', '\\|').replaceAll('\n', ' ')

export function markdownTable(input: TableInput): string {
  const lines = [
    `| ${HEADER.join(' | ')} |`,
    `|${HEADER.map((_, i) => (i < 2 ? ' --- ' : ' ---: ')).join('|')}|`,
  ]
  for (const w of input.workloads) {
    let first = true
    for (const t of input.targets) {
      const name = first ? w.name : ''
      const row = input.rows.find((r) => r.workload === w.name && r.target === t.id)
      const skip = input.skips.find((s) => s.workload === w.name && s.target === t.id)
      if (!row && !skip) continue
      first = false
      if (!row) {
        lines.push(
          `| ${name} | ${t.label} | ${esc(`not run: ${skip!.reason}`)} |${' |'.repeat(COLUMNS.length)}`,
        )
        continue
      }
      const failed =
        row.failed + (row.abortedClients > 0 ? ` (${row.abortedClients} clients aborted)` : '')
      lines.push(
        `| ${name} | ${t.label} | ${COLUMNS.map((m) => cell(row, m)).join(' | ')} | ${failed} |`,
      )
    }
  }
  return lines.join('\n')
}

export const TABLE_LEGEND =
  "Medians over rounds. In parentheses: ratio to PgBouncer / ratio to direct PostgreSQL, each the median of the rounds' own ratios (tps: higher is better; latency, CPU, RSS: lower is better). heap B/tx and GC ms/100k tx: what the pooler's V8 heaps allocated per transaction and the time its garbage collections took (pgbouncer-cluster only, from PGBC_ALLOC_STATS)."
