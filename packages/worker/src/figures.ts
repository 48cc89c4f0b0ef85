import { readFileSync } from 'node:fs'
import { type ELDHistogram, monitorEventLoopDelay } from 'node:perf_hooks'
import { getHeapStatistics } from 'node:v8'
import { WorkerFigure, type WorkerFigures } from '@pgbouncer-cluster/protocol/latency'
import { epochMs } from './clock.ts'

/** How often the janitor's tick publishes (ticks are 100 ms apart). */
const PUBLISH_EVERY_TICKS = 10

/**
 * This worker's own figures for /metrics: event-loop delay, the thread's CPU
 * time and heap, written to its row of shared memory about once a second by
 * the janitor. The coordinator reads them on scrape; no message is sent.
 */
export class FigurePublisher {
  private readonly figures: WorkerFigures
  private readonly worker: number
  private readonly delay: ELDHistogram
  private ticks = 0

  constructor(figures: WorkerFigures, worker: number) {
    this.figures = figures
    this.worker = worker
    // 20 ms resolution: the delays that matter to clients are larger.
    this.delay = monitorEventLoopDelay({ resolution: 20 })
    this.delay.enable()
  }

  /** `now` is the worker's clock (clock.ts). */
  tick(now: number): void {
    if (++this.ticks < PUBLISH_EVERY_TICKS) return
    this.ticks = 0
    const f = this.figures
    const w = this.worker
    const d = this.delay
    // The histogram holds nanoseconds; a period without samples reads NaN.
    f.set(w, WorkerFigure.loop_delay_mean_us, d.count > 0 ? d.mean / 1000 : 0)
    f.set(w, WorkerFigure.loop_delay_p99_us, d.count > 0 ? d.percentile(99) / 1000 : 0)
    f.set(w, WorkerFigure.loop_delay_max_us, d.count > 0 ? d.max / 1000 : 0)
    d.reset()
    const cpu = threadCpuUsage()
    f.set(w, WorkerFigure.cpu_user_us, cpu.user)
    f.set(w, WorkerFigure.cpu_system_us, cpu.system)
    // This isolate's heap (process.memoryUsage() would also read the process's RSS).
    const heap = getHeapStatistics()
    f.set(w, WorkerFigure.heap_used_bytes, heap.used_heap_size)
    f.set(w, WorkerFigure.heap_total_bytes, heap.total_heap_size)
    f.set(w, WorkerFigure.published_at, epochMs(now))
  }

  close(): void {
    this.delay.disable()
  }
}

/**
 * This thread's CPU time in µs. process.threadCpuUsage came in Node.js 23.9
 * (and a later 22); on the 22 releases before it, which the package supports
 * from 22.12, the kernel's count for the calling thread is read instead, in
 * clock ticks of 10 ms.
 */
function threadCpuUsage(): { user: number; system: number } {
  if (typeof process.threadCpuUsage === 'function') return process.threadCpuUsage()
  try {
    const stat = readFileSync('/proc/thread-self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { user: Number(fields[11]) * 10_000, system: Number(fields[12]) * 10_000 }
  } catch {
    return { user: 0, system: 0 }
  }
}
