// What a pgbouncer-cluster target allocates and collects over one run: its
// threads write running totals into a directory given as PGBC_ALLOC_STATS
// (packages/worker/src/alloc-stats.ts). A run is a window: the bench writes a
// new number to <dir>/window before and after it, and every thread closes its
// totals at that number; the run's figures are the difference.

import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

interface AllocTotals {
  allocatedBytes: number
  gcCount: number
  gcMs: number
}

interface ThreadTotals extends AllocTotals {
  window: number
}

/** Every thread's totals file in `dir` (none when the directory is gone). */
function readThreads(dir: string): ThreadTotals[] {
  let files: string[]
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.json'))
  } catch {
    return []
  }
  const out: ThreadTotals[] = []
  for (const f of files) {
    try {
      const t = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Partial<ThreadTotals>
      out.push({
        allocatedBytes: t.allocatedBytes ?? 0,
        gcCount: t.gcCount ?? 0,
        gcMs: t.gcMs ?? 0,
        window: t.window ?? 0,
      })
    } catch {
      // renamed into place, so never half written; a thread's first file may not be there yet
    }
  }
  return out
}

/** The sum of the threads' totals (zeros when none wrote). */
function sum(threads: readonly ThreadTotals[]): AllocTotals {
  const out: AllocTotals = { allocatedBytes: 0, gcCount: 0, gcMs: 0 }
  for (const t of threads) {
    out.allocatedBytes += t.allocatedBytes
    out.gcCount += t.gcCount
    out.gcMs += t.gcMs
  }
  return out
}

export interface AllocWindow {
  allocatedBytes: number
  gcMs: number
}

/** A thread looks for a new window every 50 ms; one that has not answered in this is gone. */
const CLOSE_TIMEOUT_MS = 2000
let lastWindow = 0

/** Opens a new window in `dir` and waits until every thread has closed the last one. */
async function closeWindow(dir: string): Promise<AllocTotals> {
  const window = ++lastWindow
  writeFileSync(join(dir, 'window'), String(window))
  const deadline = Date.now() + CLOSE_TIMEOUT_MS
  let threads = readThreads(dir)
  while (Date.now() < deadline && threads.some((t) => t.window < window)) {
    await new Promise((r) => setTimeout(r, 10))
    threads = readThreads(dir)
  }
  return sum(threads)
}

/**
 * A run's allocation and GC time; a null dir (a target without the hook)
 * yields NaN. Call before the run's CPU window opens and stop after it closes:
 * each thread runs a collection when it closes a window (alloc-stats.ts).
 */
export async function startAllocWindow(
  dir: string | null,
): Promise<{ stop(): Promise<AllocWindow> }> {
  if (dir === null) {
    return { stop: async () => ({ allocatedBytes: Number.NaN, gcMs: Number.NaN }) }
  }
  const a = await closeWindow(dir)
  return {
    async stop(): Promise<AllocWindow> {
      const b = await closeWindow(dir)
      return { allocatedBytes: b.allocatedBytes - a.allocatedBytes, gcMs: b.gcMs - a.gcMs }
    },
  }
}
