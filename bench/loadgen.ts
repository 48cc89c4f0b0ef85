// The runner's handle on the load-generator child process: a separate
// process so the generator's CPU never comes out of the runner's event loop.

import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { onCleanup, trackPid } from './cleanup.ts'
import type { Endpoint } from './endpoint.ts'
import type { HoldResult } from './idle-conns.ts'
import type { ChildRequest, LoadResult } from './loadgen-child.ts'
import type { LoadJob } from './loadgen-task.ts'
import { withNofile } from './pgbench.ts'

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void }
type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never

const CHILD = fileURLToPath(new URL('./loadgen-child.ts', import.meta.url))

export class LoadGenerator {
  #child: ChildProcess
  #pending = new Map<number, Pending>()
  #nextId = 1
  #closed = false

  private constructor(child: ChildProcess) {
    this.#child = child
    child.on('message', (msg: { id: number; ok: boolean; result?: unknown; error?: string }) => {
      const p = this.#pending.get(msg.id)
      if (!p) return
      this.#pending.delete(msg.id)
      if (msg.ok) p.resolve(msg.result)
      else p.reject(Object.assign(new Error(msg.error), { code: 'BENCH_LOADGEN_TASK' }))
    })
    child.on('exit', (code) => {
      for (const p of this.#pending.values()) {
        p.reject(
          Object.assign(new Error(`load generator exited (${code})`), {
            code: 'BENCH_LOADGEN_EXIT',
          }),
        )
      }
      this.#pending.clear()
    })
  }

  /** Spawns the child with a high open-file limit (10,000 idle connections need it). */
  static async start(): Promise<LoadGenerator> {
    const [cmd, argv] = withNofile(65536, process.execPath, [CHILD])
    const child = spawn(cmd, argv, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
    })
    if (child.pid !== undefined) trackPid(child.pid)
    const gen = new LoadGenerator(child)
    onCleanup(() => gen.close())
    await new Promise<void>((resolve, reject) => {
      gen.#pending.set(0, { resolve: () => resolve(), reject })
      setTimeout(() => reject(new Error('load generator did not start within 20s')), 20_000).unref()
    })
    return gen
  }

  #call<T>(req: DistributiveOmit<ChildRequest, 'id'>): Promise<T> {
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.#child.send({ ...req, id })
    })
  }

  run(job: LoadJob): Promise<LoadResult> {
    return this.#call({ cmd: 'run', job })
  }

  holdIdle(
    endpoint: Endpoint,
    count: number,
    batch: number,
    deadlineMs: number,
  ): Promise<HoldResult> {
    return this.#call({ cmd: 'hold', endpoint, count, batch, deadlineMs })
  }

  releaseIdle(): Promise<number> {
    return this.#call({ cmd: 'release' })
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return
    const exited = new Promise((r) => this.#child.once('exit', r))
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 5000)
    await this.#call({ cmd: 'exit' }).catch(() => {})
    await exited
    clearTimeout(timer)
  }
}
