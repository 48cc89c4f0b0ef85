import { rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { Worker } from 'node:worker_threads'
import {
  type ControlMessage,
  decodeControl,
  encodeControl,
} from '@pgbouncer-cluster/protocol/control'
import { createSharedMemory, SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import { type WorkerData, workerEntry } from '@pgbouncer-cluster/worker'
import type { Logger } from '@pgbouncer-cluster/worker/log'
import type { Config } from './config/config.ts'
import { SlotRegistry } from './registry.ts'

export interface ClusterOptions {
  config: Config
  workers: number
  logLevel: string
  pretty: boolean
  log: Logger
}

const LAYOUT = { maxWorkers: 64, maxPools: 4096, maxDatabases: 1024, maxUsers: 1024 }
/** A worker that keeps dying is restarted no faster than this, doubling up to the cap. */
const RESTART_BACKOFF_MS = { first: 100, max: 10_000 }
const GRACEFUL_TIMEOUT_MS = 30_000

interface WorkerSlot {
  thread: Worker | null
  ready: PromiseWithResolvers<void> | null
  restarts: number
  lastStart: number
  stopped: boolean
}

/**
 * The coordinator: owns the shared memory, the registry of pool slots, and the
 * worker threads; routes what crosses workers (pool slots, cancel requests)
 * and restarts a worker that dies, reclaiming its permits first.
 */
export class Cluster {
  readonly config: Config
  readonly log: Logger
  readonly sab = createSharedMemory(LAYOUT)
  readonly shared = new SharedMemory(this.sab)
  private readonly registry = new SlotRegistry(LAYOUT)
  private readonly options: ClusterOptions
  private readonly slots: WorkerSlot[] = []
  private listen = { host: '127.0.0.1', port: 6432 }
  private stopping: Promise<void> | null = null
  private readonly done = Promise.withResolvers<number>()

  constructor(options: ClusterOptions) {
    this.options = options
    this.config = options.config
    this.log = options.log
  }

  get port(): number {
    return this.listen.port
  }

  async start(): Promise<void> {
    const { listenAddr, listenPort } = this.config.settings
    const host =
      listenAddr === '*' || listenAddr === '' ? '0.0.0.0' : listenAddr.split(',')[0].trim()
    // Every worker must bind the same port; an ephemeral one is chosen once, here.
    const port = listenPort === 0 ? await freePort(host) : listenPort
    this.listen = { host, port }
    for (let id = 0; id < this.options.workers; id++) {
      this.slots.push({ thread: null, ready: null, restarts: 0, lastStart: 0, stopped: false })
      this.spawn(id)
    }
    await Promise.all(this.slots.map((s) => s.ready!.promise))
    const { pidfile } = this.config.settings as { pidfile?: string }
    if (pidfile) writeFileSync(pidfile, `${process.pid}\n`)
    this.log.info(
      { host, port, workers: this.options.workers, pool_mode: this.config.settings.poolMode },
      `listening on ${host}:${port}`,
    )
    process.on('SIGINT', this.onStopSignal)
    process.on('SIGTERM', this.onStopSignal)
  }

  /** Resolves with the exit status once the cluster has stopped. */
  run(): Promise<number> {
    return this.done.promise
  }

  private readonly onStopSignal = (signal: NodeJS.Signals): void => {
    this.log.info({ signal }, 'shutting down: letting transactions in flight finish')
    void this.stop('graceful', GRACEFUL_TIMEOUT_MS).then(() => this.done.resolve(0))
  }

  stop(mode: 'fast' | 'graceful', timeoutMs: number): Promise<void> {
    this.stopping ??= this.stopWorkers(mode, timeoutMs)
    return this.stopping
  }

  private async stopWorkers(mode: 'fast' | 'graceful', timeoutMs: number): Promise<void> {
    process.off('SIGINT', this.onStopSignal)
    process.off('SIGTERM', this.onStopSignal)
    const exits = this.slots.map((slot) => {
      slot.stopped = true
      const thread = slot.thread
      if (thread === null) return Promise.resolve()
      const exited = new Promise<void>((resolve) => thread.once('exit', () => resolve()))
      this.sendTo(thread, { type: 'shutdown', mode, timeoutMs })
      const kill = setTimeout(() => void thread.terminate(), timeoutMs + 2000)
      return exited.finally(() => clearTimeout(kill))
    })
    await Promise.all(exits)
    const { pidfile } = this.config.settings as { pidfile?: string }
    if (pidfile) rmSync(pidfile, { force: true })
    this.log.info('stopped')
  }

  private spawn(id: number): void {
    const slot = this.slots[id]
    const data: WorkerData = {
      id,
      sab: this.sab,
      config: this.config,
      listen: this.listen,
      logLevel: this.options.logLevel,
      pretty: this.options.pretty,
    }
    const thread = new Worker(workerEntry, {
      workerData: data,
      name: `pgbouncer-cluster worker ${id}`,
    })
    slot.thread = thread
    slot.ready ??= Promise.withResolvers<void>()
    slot.lastStart = Date.now()
    thread.on('message', (msg: Uint8Array) => this.onWorkerMessage(id, msg))
    thread.on('error', (err) => {
      this.log.error({ thread: id, err: err.message }, 'worker thread failed')
      slot.ready?.reject(err)
    })
    thread.on('exit', (code) => this.onWorkerExit(id, thread, code))
  }

  private onWorkerExit(id: number, thread: Worker, code: number): void {
    const slot = this.slots[id]
    if (slot.thread !== thread) return
    slot.thread = null
    // Invariant 2: whatever the dead worker held returns to the shared pool.
    const reclaimed = this.shared.reclaimWorker(id)
    if (slot.stopped) return
    this.log.error(
      { thread: id, code, reclaimed_permits: reclaimed },
      'worker exited; restarting it',
    )
    const quick = Date.now() - slot.lastStart < 5000
    slot.restarts = quick ? slot.restarts + 1 : 0
    const delay =
      slot.restarts === 0
        ? 0
        : Math.min(RESTART_BACKOFF_MS.max, RESTART_BACKOFF_MS.first * 2 ** (slot.restarts - 1))
    setTimeout(() => {
      if (!slot.stopped) this.spawn(id)
    }, delay)
  }

  private onWorkerMessage(id: number, data: Uint8Array): void {
    let msg: ControlMessage
    try {
      msg = decodeControl(data)
    } catch (err) {
      this.log.error({ thread: id, err: (err as Error).message }, 'rejected control message')
      return
    }
    switch (msg.type) {
      case 'worker-ready': {
        const slot = this.slots[id]
        slot.ready?.resolve()
        slot.ready = null
        return
      }
      case 'pool-slot-request': {
        const slots = this.registry.slotsFor(msg.database, msg.user)
        if (slots === null) {
          this.log.error({ database: msg.database, user: msg.user }, 'out of pool slots')
          return
        }
        this.sendTo(this.slots[id].thread, {
          type: 'pool-slot',
          database: msg.database,
          user: msg.user,
          ...slots,
        })
        return
      }
      case 'cancel': {
        const owner = (msg.pid >>> 24) - 1
        const thread = this.slots[owner]?.thread ?? null
        if (owner !== id) this.sendTo(thread, msg)
        return
      }
      case 'server-login-failed':
        this.log.warn(
          { database: msg.database, user: msg.user, sqlstate: msg.sqlstate, error: msg.message },
          'server login failed',
        )
        return
      default:
        return
    }
  }

  private sendTo(thread: Worker | null, msg: ControlMessage): void {
    if (thread === null) return
    const data = encodeControl(msg)
    thread.postMessage(data, [data.buffer as ArrayBuffer])
  }
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen({ host, port: 0 }, () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}
