// Opt-in accounting of what a thread allocates and how long its garbage
// collector runs, for the benchmark (bench/): with PGBC_ALLOC_STATS=<dir>
// each thread writes its running totals to <dir>/<pid>-<name>.json. Unset
// (every real deployment), nothing is loaded or started.
//
// The bench opens and closes a window around each run by writing a number to
// <dir>/window. A thread that sees a new number ends its v8.GCProfiler there,
// adds what it recorded, writes its totals with that number, and starts
// another. A GCProfiler cannot be restarted, and one that has stopped goes on
// recording every collection until its wrapper is collected, which a worker's
// small old generation rarely is: the thread collects right after stopping
// one, so only one records at a time. Those collections fall between the
// bench's runs, outside what it measures.

import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import v8 from 'node:v8'
import { exposedGc } from './startup-memory.ts'

/** What a thread has allocated and collected since it started accounting. */
export interface AllocTotals {
  /** Bytes of V8 heap allocated: heap growth between collections, summed. */
  allocatedBytes: number
  gcCount: number
  /** Time spent in collections (V8's own cost figure per collection). */
  gcMs: number
  /** The bench's last window these totals close; 0 before the first. */
  window: number
}

/** How often a thread looks for a new window. */
const POLL_MS = 50

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

/** The window number the bench wrote last; 0 while it has written none. */
function currentWindow(file: string): number {
  try {
    return Number(readFileSync(file, 'latin1')) || 0
  } catch {
    return 0
  }
}

/** Starts the accounting when `dir` is set (the PGBC_ALLOC_STATS variable); else does nothing. */
export function startAllocStats(dir: string | undefined, name: string): void {
  if (!dir) return
  const file = join(dir, `${process.pid}-${name}.json`)
  const windowFile = join(dir, 'window')
  const gc = exposedGc()
  const totals: AllocTotals = { allocatedBytes: 0, gcCount: 0, gcMs: 0, window: 0 }
  let profiler = new v8.GCProfiler()
  let used = v8.getHeapStatistics().used_heap_size
  profiler.start()
  const write = () => {
    try {
      // renamed into place: a reader never sees half a file
      writeFileSync(`${file}.tmp`, JSON.stringify(totals))
      renameSync(`${file}.tmp`, file)
    } catch {
      // the benchmark removed its directory: nothing reads these any more
    }
  }
  write()
  const timer = setInterval(() => {
    const window = currentWindow(windowFile)
    if (window === totals.window) return
    const result = profiler.stop() as unknown as { statistics: GcRecord[] } | undefined
    addWindow(totals, used, result?.statistics ?? [], v8.getHeapStatistics().used_heap_size)
    totals.window = window
    // the stopped profiler's wrapper goes now, and with it its recording;
    // before the totals are written, so the bench's wait covers it
    gc?.({ type: 'major', execution: 'sync' })
    profiler = new v8.GCProfiler()
    used = v8.getHeapStatistics().used_heap_size
    profiler.start()
    write()
  }, POLL_MS)
  timer.unref()
}
