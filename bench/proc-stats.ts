// The pooler's own cost, read from /proc: CPU time of the whole process (all
// threads: /proc/PID/stat of the group leader sums them) and its memory.

import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'

let clockTicks: number | undefined

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  return clockTicks
}

/** utime and stime in clock ticks from the text of /proc/PID/stat. */
export function parseStatTicks(stat: string): { utime: number; stime: number } {
  // comm (field 2) may hold spaces and parentheses: count from the last ')'
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // rest[0] is field 3 (state); utime is field 14, stime field 15
  return { utime: Number(rest[11]), stime: Number(rest[12]) }
}

/** CPU seconds (user + system) the process has used so far, or NaN if gone. */
export function cpuSeconds(pid: number): number {
  try {
    const { utime, stime } = parseStatTicks(readFileSync(`/proc/${pid}/stat`, 'utf8'))
    return (utime + stime) / ticksPerSecond()
  } catch {
    return Number.NaN
  }
}

/** A field of /proc/PID/status in bytes (VmRSS, VmHWM, ...). */
export function parseStatusKb(status: string, field: string): number {
  const m = new RegExp(`^${field}:\\s*(\\d+) kB`, 'm').exec(status)
  return m ? Number(m[1]) * 1024 : Number.NaN
}

export function memoryBytes(pid: number): { rss: number; hwm: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    return { rss: parseStatusKb(status, 'VmRSS'), hwm: parseStatusKb(status, 'VmHWM') }
  } catch {
    return { rss: Number.NaN, hwm: Number.NaN }
  }
}

/** Resets VmHWM to the current RSS so each run reports its own peak. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

export interface ProcWindow {
  /** CPU seconds used between start() and stop(). */
  cpuS: number
  peakRssBytes: number
}

/**
 * Measures a pooler over one run: its processes' CPU and their peaks summed
 * (a pooler of two processes costs both); no pid (direct PostgreSQL) yields NaN.
 */
export function startWindow(pids: number | null | readonly number[]): { stop(): ProcWindow } {
  const list = pids === null ? [] : typeof pids === 'number' ? [pids] : pids
  if (list.length === 0) {
    return { stop: () => ({ cpuS: Number.NaN, peakRssBytes: Number.NaN }) }
  }
  const windows = list.map(startOne)
  return {
    stop(): ProcWindow {
      const each = windows.map((w) => w.stop())
      return {
        cpuS: each.reduce((s, w) => s + w.cpuS, 0),
        peakRssBytes: each.reduce((s, w) => s + w.peakRssBytes, 0),
      }
    },
  }
}

function startOne(pid: number): { stop(): ProcWindow } {
  const peakResettable = resetPeakRss(pid)
  const cpu0 = cpuSeconds(pid)
  let sampledPeak = memoryBytes(pid).rss
  // Where clear_refs is refused VmHWM is the lifetime peak: sample RSS instead
  const timer = peakResettable
    ? undefined
    : setInterval(() => {
        sampledPeak = Math.max(sampledPeak, memoryBytes(pid).rss)
      }, 200)
  return {
    stop(): ProcWindow {
      if (timer) clearInterval(timer)
      const mem = memoryBytes(pid)
      return {
        cpuS: cpuSeconds(pid) - cpu0,
        peakRssBytes: peakResettable ? mem.hwm : Math.max(sampledPeak, mem.rss),
      }
    },
  }
}

/** The RSS of a pooler's processes, summed. */
export function rssBytes(pids: readonly number[]): number {
  return pids.reduce((s, pid) => s + memoryBytes(pid).rss, 0)
}
