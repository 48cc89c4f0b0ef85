// The memory and scale scenario: thousands of idle logged-in clients held
// open against each pooler, RSS before and with them, bytes per connection.
//
// Bytes per connection is what the second half of the clients adds: the first
// logins also bring in what any traffic brings in once (in a Node pooler, the
// optimizing compiler's code and what it compiles, in each worker's isolate),
// which the clients do not each cost. Held in steps, one pooler grew by about
// 12 KB per client over its first thousand, then 2.0-2.4 KB per client from
// two thousand on; with two workers the step came between one and two
// thousand. From rest, too, for the record.

import type { LoadGenerator } from './loadgen.ts'
import { rssBytes } from './proc-stats.ts'
import { fmtNumber } from './report.ts'
import { median } from './stats.ts'
import type { Target } from './targets.ts'

export interface MemorySample {
  target: string
  requested: number
  opened: number
  failed: number
  openS: number
  rssBeforeBytes: number
  /** With the first half of the clients held. */
  rssHalfBytes: number
  rssWithBytes: number
  rssAfterReleaseBytes: number
  /** (RSS with all − RSS with half) / the clients opened after the first half. */
  bytesPerConnection: number
  /** (RSS with all − RSS before) / all the clients opened. */
  bytesPerConnectionFromRest: number
  errors: string[]
}

export interface MemoryOptions {
  count: number
  /** Logins in flight at once. */
  batch: number
  /** Bound on the time spent opening connections, per target. */
  deadlineMs: number
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Median of a few RSS readings: a garbage-collected pooler's RSS moves between any two. */
export async function steadyRss(pids: readonly number[]): Promise<number> {
  const readings: number[] = []
  for (let i = 0; i < 5; i++) {
    if (i > 0) await settle(200)
    readings.push(rssBytes(pids))
  }
  return median(readings)
}

export async function memoryScenario(
  targets: readonly Target[],
  loadgen: LoadGenerator,
  o: MemoryOptions,
  onTarget?: (t: Target) => void,
): Promise<MemorySample[]> {
  const out: MemorySample[] = []
  for (const t of targets) {
    if (t.pids.length === 0 || t.status !== 'ready') continue
    onTarget?.(t)
    const before = await steadyRss(t.pids)
    const t0 = performance.now()
    const half = await loadgen.holdIdle(t.endpoint, Math.ceil(o.count / 2), o.batch, o.deadlineMs)
    await settle(500)
    const withHalf = await steadyRss(t.pids)
    const all = await loadgen.holdIdle(
      t.endpoint,
      o.count - half.opened,
      o.batch,
      Math.max(0, o.deadlineMs - (performance.now() - t0)),
    )
    await settle(500)
    const withConns = await steadyRss(t.pids)
    await loadgen.releaseIdle()
    await settle(500)
    // holdIdle counts every connection held so far
    const added = all.opened - half.opened
    out.push({
      target: t.id,
      requested: o.count,
      opened: all.opened,
      failed: half.failed + all.failed,
      openS: (half.ms + all.ms) / 1000,
      rssBeforeBytes: before,
      rssHalfBytes: withHalf,
      rssWithBytes: withConns,
      rssAfterReleaseBytes: await steadyRss(t.pids),
      bytesPerConnection: added > 0 ? (withConns - withHalf) / added : Number.NaN,
      bytesPerConnectionFromRest: all.opened > 0 ? (withConns - before) / all.opened : Number.NaN,
      errors: [...new Set([...half.errors, ...all.errors])],
    })
  }
  return out
}

export function memoryTable(samples: readonly MemorySample[], labels: Map<string, string>): string {
  const mb = (b: number) => fmtNumber(b / (1024 * 1024))
  const base = samples.find((s) => s.target === 'pgbouncer')
  const lines = [
    '| target | idle clients opened | open time s | RSS before MB | RSS with half MB | RSS with clients MB | RSS after close MB | bytes / connection | vs PgBouncer | from rest |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const s of samples) {
    // a collection inside the window can shrink RSS by more than the clients added
    const perConn = s.bytesPerConnection < 0 ? '≈0 (GC noise)' : fmtNumber(s.bytesPerConnection)
    const ratio =
      base && s !== base && base.bytesPerConnection > 0 && s.bytesPerConnection >= 0
        ? `${(s.bytesPerConnection / base.bytesPerConnection).toFixed(2)}×`
        : '–'
    const opened = `${s.opened}/${s.requested}${s.failed ? ` (${s.failed} failed: ${s.errors[0] ?? ''})` : ''}`
    lines.push(
      `| ${labels.get(s.target) ?? s.target} | ${opened.replaceAll('|', '\\|')} | ${s.openS.toFixed(1)} | ${mb(s.rssBeforeBytes)} | ${mb(s.rssHalfBytes)} | ${mb(s.rssWithBytes)} | ${mb(s.rssAfterReleaseBytes)} | ${perConn} | ${ratio} | ${fmtNumber(s.bytesPerConnectionFromRest)} |`,
    )
  }
  return lines.join('\n')
}

export interface RestSample {
  target: string
  rssBytes: number
}

/** Each pooler's RSS right after start, before any client: what it costs to have it running. */
export async function restRss(targets: readonly Target[]): Promise<RestSample[]> {
  const out: RestSample[] = []
  for (const t of targets) {
    if (t.pids.length === 0 || t.status !== 'ready') continue
    out.push({ target: t.id, rssBytes: await steadyRss(t.pids) })
  }
  return out
}

export function restTable(samples: readonly RestSample[], labels: Map<string, string>): string {
  const base = samples.find((s) => s.target === 'pgbouncer')
  const lines = ['| target | RSS at rest MB | vs PgBouncer |', '| --- | ---: | ---: |']
  for (const s of samples) {
    const ratio =
      base && s !== base && base.rssBytes > 0 ? `${(s.rssBytes / base.rssBytes).toFixed(1)}×` : '–'
    lines.push(
      `| ${labels.get(s.target) ?? s.target} | ${fmtNumber(s.rssBytes / (1024 * 1024))} | ${ratio} |`,
    )
  }
  return lines.join('\n')
}
