// The load generator's own process: a piscina pool of worker threads for the
// pg scenarios and the idle-connection holder, driven over IPC by loadgen.ts.

import { availableParallelism } from 'node:os'
import { Piscina } from 'piscina'
import type { Endpoint } from './endpoint.ts'
import { holdIdle, releaseIdle } from './idle-conns.ts'
import { type LoadJob, type LoadTaskResult, splitJob } from './loadgen-task.ts'

export type ChildRequest =
  | { id: number; cmd: 'run'; job: LoadJob }
  | {
      id: number
      cmd: 'hold'
      endpoint: Endpoint
      count: number
      batch: number
      deadlineMs: number
    }
  | { id: number; cmd: 'release' }
  | { id: number; cmd: 'exit' }

export interface LoadResult extends LoadTaskResult {
  threads: number
}

const threads = availableParallelism()
// created lazily: the idle-connection scenario needs no threads
let pool: Piscina | undefined
const getPool = () =>
  (pool ??= new Piscina({
    filename: new URL('./loadgen-task.ts', import.meta.url).href,
    minThreads: threads,
    maxThreads: threads,
    idleTimeout: 60_000,
  }))

async function runJob(job: LoadJob): Promise<LoadResult> {
  const tasks = splitJob(job, threads, Date.now() + 100)
  const results: LoadTaskResult[] = await Promise.all(tasks.map((t) => getPool().run(t)))
  const total = results.reduce((n, r) => n + r.latenciesUs.length, 0)
  const latenciesUs = new Float64Array(total)
  let at = 0
  for (const r of results) {
    latenciesUs.set(r.latenciesUs, at)
    at += r.latenciesUs.length
  }
  return {
    latenciesUs,
    ok: results.reduce((n, r) => n + r.ok, 0),
    failed: results.reduce((n, r) => n + r.failed, 0),
    errors: [...new Set(results.flatMap((r) => r.errors))].slice(0, 5),
    elapsedMs: Math.max(...results.map((r) => r.elapsedMs)),
    threads: tasks.length,
  }
}

async function handle(req: ChildRequest): Promise<unknown> {
  switch (req.cmd) {
    case 'run':
      return runJob(req.job)
    case 'hold':
      return holdIdle(req.endpoint, req.count, req.batch, req.deadlineMs)
    case 'release':
      return releaseIdle()
    case 'exit':
      await releaseIdle()
      await pool?.destroy()
      setImmediate(() => process.exit(0))
      return null
  }
}

if (process.send) {
  process.on('message', (req: ChildRequest) => {
    handle(req).then(
      (result) => process.send!({ id: req.id, ok: true, result }),
      (err: Error) => process.send!({ id: req.id, ok: false, error: err.message }),
    )
  })
  // the runner going away must not leave this process holding connections
  process.on('disconnect', () => process.exit(0))
  process.send({ id: 0, ok: true, result: 'ready' })
}
