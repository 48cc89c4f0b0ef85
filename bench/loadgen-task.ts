// A piscina task: hold K lanes (concurrent connections), run the scenario
// until its iterations or duration are done, return every latency sample.

import pg from 'pg'
import type { Endpoint } from './endpoint.ts'

export interface RampProfile {
  min: number
  max: number
  /** Full up-and-down ramps over the duration. */
  periods: number
}

export interface LoadTask {
  mode: 'churn' | 'dynamic'
  endpoint: Endpoint
  /** Global lane numbers this task drives; a dynamic lane runs while lane < target concurrency. */
  lanes: number[]
  /** churn: how many connect/SELECT 1/close cycles this task runs in all. */
  iterations: number
  /** dynamic: how long the ramp lasts. */
  durationMs: number
  profile: RampProfile
  /** Date.now() at which every task of the job starts, so ramps line up. */
  startAt: number
}

export interface LoadTaskResult {
  latenciesUs: Float64Array
  ok: number
  failed: number
  errors: string[]
  elapsedMs: number
}

/** What loadgen.ts asks of the child process; split into one LoadTask per thread. */
export interface LoadJob {
  mode: 'churn' | 'dynamic'
  endpoint: Endpoint
  /** churn: the concurrency; dynamic: the ramp's maximum. */
  lanes: number
  iterations: number
  durationMs: number
  profile: RampProfile
}

/** Deals lanes (and churn iterations) out to one task per thread. */
export function splitJob(job: LoadJob, parts: number, startAt: number): LoadTask[] {
  const n = Math.max(1, Math.min(parts, job.lanes))
  const tasks: LoadTask[] = []
  for (let t = 0; t < n; t++) {
    const lanes: number[] = []
    for (let l = t; l < job.lanes; l += n) lanes.push(l)
    const iterations = Math.floor(job.iterations / n) + (t < job.iterations % n ? 1 : 0)
    tasks.push({
      mode: job.mode,
      endpoint: job.endpoint,
      lanes,
      iterations,
      durationMs: job.durationMs,
      profile: job.profile,
      startAt,
    })
  }
  return tasks
}

/** Target concurrency at `t` (0..1 of the run): a triangle wave min→max→min. */
export function rampConcurrency(p: RampProfile, t: number): number {
  const phase = (Math.min(Math.max(t, 0), 1) * p.periods) % 1
  const tri = phase < 0.5 ? phase * 2 : (1 - phase) * 2
  return Math.round(p.min + (p.max - p.min) * tri)
}

async function connectQueryClose(ep: Endpoint): Promise<void> {
  const client = new pg.Client({
    host: ep.host,
    port: ep.port,
    user: ep.user,
    database: ep.database,
    connectionTimeoutMillis: 10_000,
  })
  // a socket error after connect() is emitted, not thrown: keep it from crashing the thread
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('SELECT 1')
  } finally {
    await client.end().catch(() => {})
  }
}

export default async function runLoadTask(task: LoadTask): Promise<LoadTaskResult> {
  const wait = task.startAt - Date.now()
  if (wait > 0) await new Promise((r) => setTimeout(r, wait))
  const latencies: number[] = []
  const errors = new Set<string>()
  let ok = 0
  let failed = 0
  let remaining = task.iterations
  const t0 = performance.now()
  const endAt = t0 + task.durationMs

  const once = async () => {
    const s = performance.now()
    try {
      await connectQueryClose(task.endpoint)
      latencies.push((performance.now() - s) * 1000)
      ok++
    } catch (err) {
      failed++
      if (errors.size < 5) errors.add(String((err as Error).message ?? err))
    }
  }

  const lane = async (laneNo: number) => {
    if (task.mode === 'churn') {
      while (remaining > 0) {
        remaining--
        await once()
      }
      return
    }
    for (let now = performance.now(); now < endAt; now = performance.now()) {
      const target = rampConcurrency(task.profile, (now - t0) / task.durationMs)
      if (laneNo < target) await once()
      else await new Promise((r) => setTimeout(r, 10))
    }
  }

  await Promise.all(task.lanes.map(lane))
  return {
    latenciesUs: Float64Array.from(latencies),
    ok,
    failed,
    errors: [...errors],
    elapsedMs: performance.now() - t0,
  }
}
