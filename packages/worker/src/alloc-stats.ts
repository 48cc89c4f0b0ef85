// Opt-in accounting of what a thread allocates and how long its garbage
// collector runs, for the benchmark (bench/): with PGBC_ALLOC_STATS=<dir>
// each thread writes its running totals to <dir>/<pid>-<name>.json a few times
// a second. Unset (every real deployment), nothing is loaded or started.

import { renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import v8 from 'node:v8'

/** What a thread has allocated and collected since it started accounting. */
export interface AllocTotals {
  /** Bytes of V8 heap allocated: heap growth between collections, summed. */
  allocatedBytes: number
  gcCount: number
  /** Time spent in collections (V8's own cost figure per collection). */
  gcMs: number
}

const INTERVAL_MS = 200

interface GcRecord {
  cost: number
  beforeGC: { heapStatistics: { usedHeapSize: number } }
  afterGC: { heapStatistics: { usedHeapSize: number } }
}

/**
 * Totals from one GCProfiler window: what the heap grew by before each
 * collection (from where the previous one left it) is what was allocated.
 */
export function addWindow(
  totals: AllocTotals,
  usedAtStart: number,
  gcs: readonly GcRecord[],
  usedAtEnd: number,
): void {
  let base = usedAtStart
  for (const gc of gcs) {
    totals.allocatedBytes += Math.max(0, gc.beforeGC.heapStatistics.usedHeapSize - base)
    base = gc.afterGC.heapStatistics.usedHeapSize
    totals.gcCount++
    totals.gcMs += gc.cost / 1000
  }
  totals.allocatedBytes += Math.max(0, usedAtEnd - base)
}

/** Starts the accounting when `dir` is set (the PGBC_ALLOC_STATS variable); else does nothing. */
export function startAllocStats(dir: string | undefined, name: string): void {
  if (!dir) return
  const file = join(dir, `${process.pid}-${name}.json`)
  const totals: AllocTotals = { allocatedBytes: 0, gcCount: 0, gcMs: 0 }
  let profiler = new v8.GCProfiler()
  let used = v8.getHeapStatistics().used_heap_size
  profiler.start()
  const timer = setInterval(() => {
    const result = profiler.stop() as unknown as { statistics: GcRecord[] } | undefined
    const now = v8.getHeapStatistics().used_heap_size
    addWindow(totals, used, result?.statistics ?? [], now)
    used = now
    profiler = new v8.GCProfiler()
    profiler.start()
    try {
      // renamed into place: a reader never sees half a file
      writeFileSync(`${file}.tmp`, JSON.stringify(totals))
      renameSync(`${file}.tmp`, file)
    } catch {
      // the benchmark removed its directory: nothing reads these any more
    }
  }, INTERVAL_MS)
  timer.unref()
}
