// What a pgbouncer-cluster target allocates and collects over one run: its
// threads write running totals into a directory given as PGBC_ALLOC_STATS
// (packages/worker/src/alloc-stats.ts); a window sums them at start and stop.

import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

export interface AllocTotals {
  allocatedBytes: number
  gcCount: number
  gcMs: number
}

/** The totals of every thread that wrote into `dir` so far (zeros when none did). */
export function readAllocTotals(dir: string): AllocTotals {
  const sum: AllocTotals = { allocatedBytes: 0, gcCount: 0, gcMs: 0 }
  let files: string[]
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.json'))
  } catch {
    return sum
  }
  for (const f of files) {
    try {
      const t = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Partial<AllocTotals>
      sum.allocatedBytes += t.allocatedBytes ?? 0
      sum.gcCount += t.gcCount ?? 0
      sum.gcMs += t.gcMs ?? 0
    } catch {
      // a file caught mid-write is read again at the next window
    }
  }
  return sum
}

export interface AllocWindow {
  allocatedBytes: number
  gcMs: number
}

/** The threads write their totals this often (alloc-stats.ts). */
const WRITE_INTERVAL_MS = 200

/** A run's allocation and GC time; a null dir (a target without the hook) yields NaN. */
export function startAllocWindow(dir: string | null): { stop(): Promise<AllocWindow> } {
  if (dir === null) {
    return { stop: async () => ({ allocatedBytes: Number.NaN, gcMs: Number.NaN }) }
  }
  const a = readAllocTotals(dir)
  return {
    async stop(): Promise<AllocWindow> {
      // the totals that include the run's last transactions are written after it
      await new Promise((r) => setTimeout(r, WRITE_INTERVAL_MS + 100))
      const b = readAllocTotals(dir)
      return { allocatedBytes: b.allocatedBytes - a.allocatedBytes, gcMs: b.gcMs - a.gcMs }
    },
  }
}
