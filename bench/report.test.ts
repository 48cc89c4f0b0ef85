import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { RunSample } from './measure.ts'
import { aggregate, fmtNumber, markdownTable } from './report.ts'

function sample(
  target: string,
  round: number,
  tps: number,
  p99: number,
  cpu = Number.NaN,
): RunSample {
  return {
    workload: 'w',
    target,
    round,
    elapsedS: 1,
    tps,
    transactions: tps,
    failed: 0,
    abortedClients: 0,
    errors: [],
    latency: { avg: p99 / 2, p50: p99 / 3, p95: p99 * 0.9, p99, p999: p99, max: p99 },
    poolerCpuS: Number.NaN,
    cpuUsPerTx: cpu,
    peakRssBytes: Number.NaN,
    allocBytesPerTx: Number.NaN,
    gcMsPer100kTx: Number.NaN,
    histogramUs: [],
  }
}

const SAMPLES = [
  sample('direct', 1, 1000, 1),
  sample('pgbouncer', 1, 500, 2, 10),
  sample('cluster-2', 1, 750, 3, 20),
  sample('direct', 2, 1200, 1),
  sample('pgbouncer', 2, 600, 4, 12),
  sample('cluster-2', 2, 900, 3, 30),
  sample('direct', 3, 1100, 1),
  sample('pgbouncer', 3, 550, 3, 11),
  sample('cluster-2', 3, 100, 3, 25),
]

test('aggregate takes medians over rounds', () => {
  const rows = aggregate(SAMPLES)
  const byTarget = new Map(rows.map((r) => [r.target, r]))
  assert.equal(byTarget.get('direct')!.median.tps, 1100)
  assert.equal(byTarget.get('pgbouncer')!.median.tps, 550)
  assert.equal(byTarget.get('cluster-2')!.median.tps, 750) // the 100-tps outlier does not move it
  assert.equal(byTarget.get('pgbouncer')!.median.p99Ms, 3)
  assert.equal(byTarget.get('cluster-2')!.median.cpuUsPerTx, 25)
  assert.equal(byTarget.get('cluster-2')!.rounds, 3)
})

test('ratios are against PgBouncer and direct PostgreSQL of the same workload', () => {
  const rows = aggregate(SAMPLES)
  const cluster = rows.find((r) => r.target === 'cluster-2')!
  // rounds' ratios 1.5, 1.5 and 0.18: the median of the three
  assert.equal(cluster.vsPgbouncer.tps, 1.5)
  assert.equal(cluster.vsDirect.tps, 0.75)
  assert.equal(cluster.vsPgbouncer.p99Ms, 1)
  assert.equal(cluster.vsPgbouncer.cpuUsPerTx, 25 / 11)
  assert.ok(Number.isNaN(cluster.vsDirect.cpuUsPerTx)) // direct has no pooler CPU
  const pgb = rows.find((r) => r.target === 'pgbouncer')!
  assert.equal(pgb.vsPgbouncer.tps, 1)
})

test('a ratio pairs the runs of one round, so a round the machine slowed counts once', () => {
  // Round 2 ran at half speed for both targets: the ratio of the medians
  // (100 / 60) would mix round 2's pooler with another round's PgBouncer.
  const rows = aggregate([
    sample('pgbouncer', 1, 120, 1, 10),
    sample('cluster-1', 1, 100, 1, 12),
    sample('pgbouncer', 2, 60, 1, 20),
    sample('cluster-1', 2, 50, 1, 24),
    sample('pgbouncer', 3, 110, 1, 11),
    sample('cluster-1', 3, 110, 1, 11),
  ])
  const cluster = rows.find((r) => r.target === 'cluster-1')!
  assert.equal(cluster.median.tps, 100)
  assert.equal(cluster.vsPgbouncer.tps, 100 / 120)
  assert.equal(cluster.vsPgbouncer.cpuUsPerTx, 1.2)
})

test('a round without its PgBouncer run is left out of the ratio', () => {
  const rows = aggregate([
    sample('pgbouncer', 1, 100, 1),
    sample('cluster-1', 1, 90, 1),
    sample('cluster-1', 2, 10, 1),
  ])
  assert.equal(rows.find((r) => r.target === 'cluster-1')!.vsPgbouncer.tps, 0.9)
})

test('without a PgBouncer row the ratio is NaN, not Infinity', () => {
  const rows = aggregate([sample('direct', 1, 10, 1), sample('cluster-1', 1, 5, 1)])
  assert.ok(Number.isNaN(rows.find((r) => r.target === 'cluster-1')!.vsPgbouncer.tps))
})

test('markdownTable shows values with both ratios, skipped targets with their reason', () => {
  const md = markdownTable({
    rows: aggregate(SAMPLES),
    skips: [{ workload: 'w', target: 'cluster-1', reason: 'failed: CLI | missing' }],
    workloads: [{ name: 'w', title: 'W' }],
    targets: [
      { id: 'direct', label: 'PostgreSQL' },
      { id: 'pgbouncer', label: 'PgBouncer' },
      { id: 'cluster-1', label: 'cluster ×1' },
      { id: 'cluster-2', label: 'cluster ×2' },
    ],
  })
  const lines = md.split('\n')
  assert.equal(lines.length, 2 + 4)
  const cols = (l: string) => l.split(/(?<!\\)\|/).length
  for (const l of lines) assert.equal(cols(l), cols(lines[0]!), l)
  assert.match(md, /\| cluster ×2 \| 750 \(1\.50× \/ 0\.75×\)/)
  assert.match(md, /\| PgBouncer \| 550 \(– \/ 0\.50×\)/)
  assert.match(md, /not run: failed: CLI \\\| missing/)
  assert.match(lines[2]!, /^\| w \| PostgreSQL/)
  assert.match(lines[3]!, /^\| {2}\| PgBouncer/)
})

test('heap bytes and GC time per transaction show for the targets that report them', () => {
  const withAlloc = (round: number, b: number) => ({
    ...sample('cluster-1', round, 100, 1, 10),
    allocBytesPerTx: b,
    gcMsPer100kTx: b / 10,
  })
  const rows = aggregate([sample('pgbouncer', 1, 100, 1, 5), withAlloc(1, 120), withAlloc(2, 80)])
  const md = markdownTable({
    rows,
    skips: [],
    workloads: [{ name: 'w', title: 'W' }],
    targets: [
      { id: 'pgbouncer', label: 'PgBouncer' },
      { id: 'cluster-1', label: 'cluster ×1' },
    ],
  })
  const [, , pgb, cluster] = md.split('\n')
  assert.match(cluster!, /\| 100 \| 10\.0 \| 0 \|$/) // medians, no ratio: PgBouncer has none
  assert.match(pgb!, /\| – \| – \| 0 \|$/)
})

test('fmtNumber keeps about three significant digits', () => {
  assert.equal(fmtNumber(37012.4), '37,012')
  assert.equal(fmtNumber(123.4), '123')
  assert.equal(fmtNumber(12.34), '12.3')
  assert.equal(fmtNumber(1.234), '1.23')
  assert.equal(fmtNumber(0.1234), '0.123')
  assert.equal(fmtNumber(Number.NaN), '–')
})
