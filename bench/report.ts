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
  /** value / PgBouncer's value for the same workload (NaN where there is none). */
  vsPgbouncer: Figures
  /** value / direct PostgreSQL's value for the same workload. */
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

function ratio(a: Figures, b: Figures | undefined): Figures {
  const out = {} as Figures
  for (const m of METRICS) out[m] = b && b[m] > 0 ? a[m] / b[m] : Number.NaN
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
  for (const [key, g] of groups) {
    const figs = g.map(figuresOf)
    const m = {} as Figures
    for (const metric of METRICS) m[metric] = median(figs.map((f) => f[metric]))
    medians.set(key, m)
  }
  const rows: Row[] = []
  for (const [key, g] of groups) {
    const [workload, target] = key.split('\0') as [string, string]
    const m = medians.get(key)!
    rows.push({
      workload,
      target,
      rounds: g.length,
      median: m,
      vsPgbouncer: ratio(m, medians.get(`${workload}\0pgbouncer`)),
      vsDirect: ratio(m, medians.get(`${workload}\0direct`)),
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
  "Medians over rounds. In parentheses: ratio to PgBouncer / ratio to direct PostgreSQL (tps: higher is better; latency, CPU, RSS: lower is better). heap B/tx and GC ms/100k tx: what the pooler's V8 heaps allocated per transaction and the time its garbage collections took (pgbouncer-cluster only, from PGBC_ALLOC_STATS)."
