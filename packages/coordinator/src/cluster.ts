import { existsSync, fchownSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { MessageChannel, Worker } from 'node:worker_threads'
import { keyWorker } from '@pgbouncer-cluster/protocol/cancel-key'
import {
  type ControlMessage,
  decodeControl,
  encodeControl,
  type ShutdownMode,
} from '@pgbouncer-cluster/protocol/control'
import { splitPoolKey } from '@pgbouncer-cluster/protocol/pool-key'
import { createSharedMemory, SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import { type WorkerData, workerEntry } from '@pgbouncer-cluster/worker'
import type { LineSink, LogFile, Logger } from '@pgbouncer-cluster/worker/log'
import { AdminConsole } from './admin.ts'
import { ADMIN_DATABASE, type ClusterStats } from './admin-views.ts'
import { Breakers, type HostOf } from './breaker.ts'
import { type Config, ConfigError, resolveDatabase, withSetting } from './config/config.ts'
import { type HostedDatabase, hostRows } from './host-roles.ts'
import type { MetricsServer } from './metrics-server.ts'
import { NotifyRouter } from './notify.ts'
import { PoolSlots } from './pool-slots.ts'
import { dropPrivileges, type RunAs } from './privileges.ts'
import { SLOT_TABLES, SlotRegistry } from './registry.ts'
import { nextConfig } from './reload.ts'

export interface ClusterOptions {
  config: Config
  workers: number
  logLevel: string
  /**
   * Where the workers' lines go besides the logfile: stdout as JSON (default)
   * or one human line each, or a program's own sink, which they reach through
   * the coordinator's thread.
   */
  logConsole?: 'json' | 'pretty' | LineSink | null
  /** The logfile, opened once for every thread (LogFile). */
  logfile?: LogFile | null
  /** Bindings of a program's own logger, for every worker's lines. */
  logBase?: Record<string, unknown>
  log: Logger
  /** `user =`: the account the process becomes once every worker listens (privileges.ts). */
  runAs?: RunAs | null
  /** Reads the config file again with the same command-line overrides (SIGHUP); throws ConfigError. */
  load?: () => Config
  /** Answer SIGINT/SIGTERM/SIGQUIT/SIGHUP/SIGUSR1/SIGUSR2 (the command); a program embedding the pooler keeps its own. */
  signals?: boolean
  /** `--metrics HOST:PORT`: serve /metrics, /health and /ready there. */
  metrics?: { host: string; port: number } | null
}

/**
 * A worker's young generation. V8's default lets it grow to tens of MB while
 * thousands of clients log in, and it stays that large: 10,000 idle clients
 * then cost about 4,300 bytes each instead of about 2,600 with this bound.
 * The pass-through path allocates little and briefly, so collections stay
 * cheap (one scavenge per about a thousand transactions either way).
 * Started from the bin, the process-wide 1 MB semi-space it sets bounds it
 * further (to 2 MB of semi-spaces).
 */
const WORKER_YOUNG_GENERATION_MB = 6
/** A worker that keeps dying is restarted no faster than this, doubling up to the cap. */
const RESTART_BACKOFF_MS = { first: 100, max: 10_000 }
/** An immediate stop gives a worker thread this long to close its sockets before it is terminated. */
const IMMEDIATE_GRACE_MS = 2000
/** What each shutdown mode logs once its wait is over (PgBouncer's lines). */
const DRAINED_LINE: Record<ShutdownMode, string | null> = {
  'wait-for-clients': 'client connections dropped, exiting',
  'wait-for-servers': 'server connections dropped, exiting',
  immediate: null,
}

interface WorkerSlot {
  thread: Worker | null
  ready: PromiseWithResolvers<void> | null
  /** Set until the first worker-ready: a failure then fails start(), later ones restart. */
  starting: boolean
  restarts: number
  lastStart: number
  stopped: boolean
  /** The worker's listening TCP socket, as its worker-ready said (`user =` hands it over). */
  listenFd: number | null
}

/**
 * The coordinator: owns the shared memory, the registry of pool slots, the
 * circuit breakers and the worker threads; routes what crosses workers (pool
 * slots, cancel requests), restarts a worker that dies (reclaiming its
 * permits first), and answers signals as PgBouncer 1.23+ does: SIGTERM waits
 * for the clients to leave, SIGINT for the servers to be released, SIGQUIT
 * (or either of them a second time) stops at once; SIGHUP reloads; SIGUSR1
 * pauses and SIGUSR2 resumes, and neither ever stops the process.
 */
export class Cluster {
  config: Config
  readonly log: Logger
  readonly sab: SharedArrayBuffer
  readonly shared: SharedMemory
  private readonly registry: SlotRegistry
  private readonly poolSlots: PoolSlots
  private readonly options: ClusterOptions
  private readonly slots: WorkerSlot[] = []
  /**
   * CancelRequests routed from one worker to the worker owning the key, not
   * yet answered: for each owner, the asking worker of each `ref`. A worker
   * that dies answers for none of its own, so the coordinator answers them
   * for it: the asking clients' cancel connections close at once, not at
   * cancel_wait_timeout or client_login_timeout.
   */
  private readonly routedCancels = new Map<number, Map<string, { from: number; ref: number }>>()
  private listen = { host: '127.0.0.1', port: 6432 }
  private unixSocket: { path: string; mode: number; gid: number } | null = null
  private stopping: Promise<void> | null = null
  /** start() got as far as listening: a failed start says why once, its caller does. */
  private started = false
  private shutdownMode: ShutdownMode | null = null
  /** The wait a shutdown started with was cut short (a second signal, SHUTDOWN). */
  private hurried = false
  /** Under 'wait-for-servers': the workers with no transaction in flight any more. */
  private readonly released = new Set<number>()
  /** Per worker, the timer that terminates a thread an immediate stop did not end. */
  private readonly killTimers = new Map<number, NodeJS.Timeout>()
  private readonly done = Promise.withResolvers<number>()
  private readonly breakers: Breakers
  private readonly admin: AdminConsole
  /** LISTEN/NOTIFY in transaction and statement mode: channels, listener workers, fan-out. */
  private readonly notify: NotifyRouter
  private metricsServer: MetricsServer | null = null
  private metricsAddress: { host: string; port: number } | null = null

  constructor(options: ClusterOptions) {
    this.options = options
    this.config = options.config
    this.log = options.log
    const layout = slotLayout(process.env.PGBOUNCER_CLUSTER_SLOTS, SLOT_TABLES)
    this.registry = new SlotRegistry(layout)
    // One counter row per worker: readers sum exactly the workers there are.
    // One database slot more than the registry gives: the console's client counts (registry.ts).
    this.sab = createSharedMemory({
      ...layout,
      maxDatabases: layout.maxDatabases + 1,
      maxWorkers: options.workers,
    })
    this.shared = new SharedMemory(this.sab)
    this.breakers = new Breakers({
      shared: this.shared,
      log: this.log,
      retrySeconds: () => this.config.settings.serverLoginRetry,
      broadcast: (msg) => {
        for (const slot of this.slots) this.sendTo(slot.thread, msg)
      },
    })
    this.admin = new AdminConsole({
      log: this.log,
      config: () => this.config,
      workers: () => this.slots.flatMap((s, id) => (s.thread === null ? [] : [id])),
      send: (worker, msg) => this.sendTo(this.slots[worker]?.thread ?? null, msg),
      reload: () => this.reload(),
      set: (name, value) => this.set(name, value),
      shutdown: (mode) => this.shutdown(mode),
      draining: () => this.draining,
      waitingForServers: () => this.shutdownMode === 'wait-for-servers',
      pools: () =>
        [...this.registry.entries()].map(([key]) => {
          const [database, user] = splitPoolKey(key)
          return { database, user }
        }),
      port: () => this.listen.port,
      hosts: () => hostRows(this.shared, this.hostedDatabases()),
      clientCounts: () => ({
        databases: new Map([
          ...[...this.registry.databaseEntries()].map(([name, slot]): [string, number] => [
            name,
            this.shared.databaseClients(slot).used(),
          ]),
          [ADMIN_DATABASE, this.shared.databaseClients(this.registry.consoleDatabaseSlot).used()],
        ]),
        users: new Map(
          [...this.registry.userEntries()].map(([name, slot]) => [
            name,
            this.shared.userClients(slot).used(),
          ]),
        ),
      }),
    })
    this.notify = new NotifyRouter(
      (worker, msg) => this.sendTo(this.slots[worker]?.thread ?? null, msg),
      this.log,
    )
    this.poolSlots = new PoolSlots({
      registry: this.registry,
      shared: this.shared,
      log: this.log,
      configured: (database) => Object.hasOwn(this.config.databases, database),
      console: (database) =>
        database === ADMIN_DATABASE && !Object.hasOwn(this.config.databases, database),
      paused: (database) => this.admin.isPaused(database),
      idleTimeout: () => this.config.settings.autodbIdleTimeout,
      workers: () => this.slots.flatMap((s, id) => (s.thread === null ? [] : [id])),
      send: (worker, msg) => this.sendTo(this.slots[worker]?.thread ?? null, msg),
      released: (database) => this.breakers.forget(database),
    })
  }

  get host(): string {
    return this.listen.host
  }

  get port(): number {
    return this.listen.port
  }

  /**
   * True from the first SIGTERM or SIGINT (or the console's SHUTDOWN, in any
   * mode) on: the listeners are closed, no new client will be served, and the
   * process exits once the shutdown's wait is over. A readiness probe answers
   * "not ready" from here; `draining` never goes back to false.
   */
  get draining(): boolean {
    return this.shutdownMode !== null
  }

  /** How the cluster is stopping (the strongest mode asked for so far), or null while it runs. */
  get stoppingMode(): ShutdownMode | null {
    return this.shutdownMode
  }

  /** Where /metrics listens (its port resolved when 0 was asked), or null without --metrics. */
  get metricsListen(): { host: string; port: number } | null {
    return this.metricsAddress
  }

  /** Accepting clients: from the start's end until the first SIGINT/SIGTERM (or SHUTDOWN), as /ready says. */
  get accepting(): boolean {
    return this.started && !this.draining
  }

  /** The live thread of worker `id` (null while it is being replaced): for supervision tests. */
  workerThread(id: number): Worker | null {
    return this.slots[id]?.thread ?? null
  }

  /** Resolves once worker `id` listens (again, after a restart). */
  workerReady(id: number): Promise<void> {
    return this.slots[id]?.ready?.promise ?? Promise.resolve()
  }

  async start(): Promise<void> {
    const { listenAddr, listenPort } = this.config.settings
    const host =
      listenAddr === '*' || listenAddr === '' ? '0.0.0.0' : listenAddr.split(',')[0].trim()
    // Every worker must bind the same port; an ephemeral one is chosen once, here.
    const port = listenPort === 0 ? await freePort(host) : listenPort
    // Our workers always share the port (SO_REUSEPORT), which would also let
    // them join another process already listening there. Unless so_reuseport
    // asks for exactly that, a port in use is an error, as it is for PgBouncer.
    if (listenPort !== 0 && !this.config.settings.soReuseport) await assertPortFree(host, port)
    this.listen = { host, port }
    const { unixSocketDir, unixSocketMode, unixSocketGroup } = this.config.settings
    if (unixSocketDir !== '') {
      const path = join(unixSocketDir, `.s.PGSQL.${port}`)
      const gid = unixSocketGroup === '' ? -1 : groupId(unixSocketGroup)
      await assertUnixSocketFree(path)
      this.unixSocket = { path, mode: unixSocketMode, gid }
    }
    // Before the workers: a metrics port in use stops the start with nothing to undo.
    if (this.options.metrics) await this.startMetrics(this.options.metrics)
    for (let id = 0; id < this.options.workers; id++) {
      this.slots.push({
        thread: null,
        ready: null,
        starting: true,
        restarts: 0,
        lastStart: 0,
        stopped: false,
        listenFd: null,
      })
      this.spawn(id)
    }
    await Promise.all(this.slots.map((s) => s.ready!.promise))
    // Every socket is bound and every file read: the rest runs as `user =`,
    // and the pidfile is that user's, as PgBouncer's is.
    if (this.options.runAs) {
      this.handListenersTo(this.options.runAs)
      dropPrivileges(this.options.runAs)
    }
    const { pidfile } = this.config.settings as { pidfile?: string }
    if (pidfile) writeFileSync(pidfile, `${process.pid}\n`)
    this.started = true
    const unix = this.unixSocket?.path ?? null
    this.log.info(
      {
        host,
        port,
        unix_socket: unix,
        workers: this.options.workers,
        pool_mode: this.config.settings.poolMode,
      },
      `listening on ${host}:${port}${unix === null ? '' : ` and ${unix}`}`,
    )
    if (this.config.settings.soReuseport) {
      const problem = migrateReqProblem()
      if (problem !== null) this.log.warn(problem)
    }
    if (this.options.signals === false) return
    process.on('SIGINT', this.onStopSignal)
    process.on('SIGTERM', this.onStopSignal)
    process.on('SIGQUIT', this.onStopSignal)
    process.on('SIGHUP', this.onReloadSignal)
    // A listener of its own also keeps Node's inspector off SIGUSR1 (README, Signals).
    process.on('SIGUSR1', this.onPauseSignal)
    process.on('SIGUSR2', this.onResumeSignal)
  }

  /** What the workers report, summed per pool: SHOW POOLS and STATS, and the API's stats(). */
  stats(): Promise<ClusterStats> {
    return this.admin.clusterStats()
  }

  /** The databases with a slot, with what SHOW HOSTS and /metrics show of their hosts. */
  private hostedDatabases(): HostedDatabase[] {
    return [...this.registry.databaseEntries()].map(([name, slot]) => {
      const db = resolveDatabase(this.config, name)
      return {
        name,
        slot,
        hosts: db?.hosts ?? [],
        targetSessionAttrs: db?.targetSessionAttrs,
      }
    })
  }

  private async startMetrics(at: { host: string; port: number }): Promise<void> {
    // prom-client is loaded only by a pooler that serves metrics.
    const { Metrics } = await import('./metrics.ts')
    const { MetricsServer } = await import('./metrics-server.ts')
    const metrics = new Metrics({
      shared: this.shared,
      snapshot: () => this.admin.snapshot(),
      pools: () =>
        [...this.registry.entries()].map(([key, slot]) => {
          const [database, user] = splitPoolKey(key)
          return { database, user, slot }
        }),
      databases: () => this.hostedDatabases(),
      workers: () => this.slots.flatMap((s, id) => (s.thread === null ? [] : [id])),
      slots: () => this.registry.usage(),
      databasesFreed: () => this.poolSlots.freed,
      notify: () => this.notify.stats(),
    })
    this.metricsServer = new MetricsServer({
      host: at.host,
      port: at.port,
      metrics,
      log: this.log,
      ready: () => this.accepting,
    })
    const address = await this.metricsServer.listen()
    this.metricsAddress = { host: at.host, port: address.port }
    this.log.info(
      { host: at.host, port: address.port },
      `metrics on http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${address.port}/metrics`,
    )
  }

  /** Resolves with the exit status once the cluster has stopped. */
  run(): Promise<number> {
    return this.done.promise
  }

  /** PgBouncer 1.23+'s signals and log lines (1.18's SIGTERM stopped at once). */
  private readonly onStopSignal = (signal: NodeJS.Signals): void => {
    if (signal === 'SIGQUIT') {
      this.log.info({ signal }, 'got SIGQUIT, fast exit')
      this.shutdown('immediate')
    } else if (this.shutdownMode !== null) {
      // The operator does not want to wait: end the transactions now.
      this.log.info({ signal }, `got ${signal} while shutting down, fast exit`)
      this.shutdown('immediate')
    } else if (signal === 'SIGTERM') {
      this.log.info({ signal }, 'got SIGTERM, shutting down, waiting for all clients disconnect')
      this.shutdown('wait-for-clients')
    } else {
      this.log.info(
        { signal },
        'got SIGINT, shutting down, waiting for all servers connections to be released',
      )
      this.shutdown('wait-for-servers')
    }
  }

  private readonly onReloadSignal = (): void => {
    this.reload()
  }

  /** SIGUSR1: PAUSE, as PgBouncer. */
  private readonly onPauseSignal = (): void => {
    if (this.stopping !== null) return
    this.admin.pauseSignal()
  }

  /** SIGUSR2: RESUME, as PgBouncer. */
  private readonly onResumeSignal = (): void => {
    this.admin.resumeSignal()
  }

  /**
   * Reads the config file again and hands it to every worker; connected
   * clients stay. A broken file changes nothing: the error is logged with its
   * file, line and key and the running configuration stays (PgBouncer's RELOAD).
   */
  reload(): boolean {
    const load = this.options.load
    if (load === undefined || this.stopping !== null) return false
    let loaded: Config
    try {
      loaded = load()
    } catch (err) {
      const e = err as Error
      const fields =
        e instanceof ConfigError
          ? { file: e.file, line: e.line, key: e.key, reason: e.reason }
          : { err: e.message }
      this.log.error(
        fields,
        `configuration reload failed, keeping the running configuration: ${e.message}`,
      )
      return false
    }
    const { config, ignored, changedDatabases } = nextConfig(
      this.config,
      loaded,
      this.breakers.databases(),
    )
    for (const warning of config.warnings) this.log.warn(warning)
    if (ignored.length > 0) {
      this.log.warn({ settings: ignored }, 'these settings change only with a restart, ignored')
    }
    this.apply(config)
    // A reload is how an operator says a database was fixed: probe again now.
    this.breakers.reset([...this.breakers.databases()])
    this.log.info({ changed_databases: changedDatabases }, 'configuration file reloaded')
    return true
  }

  /**
   * The console's `SET name = value`: one setting changed at runtime, checked
   * as the file's are and handed to every worker as a reload is. A setting
   * only a restart changes keeps its value (PgBouncer ignores it without a
   * word); the next RELOAD reads the file again, and the file wins. Throws a
   * ConfigError for an unknown setting or a bad value; a TLS setting that does
   * not make a working setup yet is kept, and `notice` says the running TLS
   * stays (PgBouncer's answer).
   */
  set(name: string, value: string): { notice: string | null } {
    let next: ReturnType<typeof withSetting>
    try {
      next = withSetting(this.config, name, value)
    } catch (err) {
      const e = err as Error
      this.log.error({ setting: name, err: e.message }, `SET ${name} failed: ${e.message}`)
      throw err
    }
    const { config, ignored } = nextConfig(this.config, next.config)
    for (const warning of config.warnings) this.log.warn(warning)
    if (ignored.length > 0) {
      this.log.info(
        { settings: ignored },
        'SET of a setting that changes only with a restart, ignored',
      )
    }
    if (next.tlsError !== null) {
      this.log.warn(
        { setting: name, err: next.tlsError },
        'TLS settings could not be applied, still using old configuration',
      )
    }
    this.apply(config)
    this.log.info({ setting: name, value }, 'SET command issued')
    return {
      notice:
        next.tlsError === null
          ? null
          : 'TLS settings could not be applied, still using old configuration',
    }
  }

  /** What the cluster runs with from now on, for the coordinator and every worker. */
  private apply(config: Config): void {
    this.config = config
    for (const slot of this.slots) this.sendTo(slot.thread, { type: 'config', config })
  }

  /** Signals and the console's SHUTDOWN: stop in `mode`, then the process exits 0. */
  shutdown(mode: ShutdownMode = 'immediate'): void {
    void this.stop(mode).then(() => this.done.resolve(0))
  }

  /**
   * Stops the cluster. A second call while a wait is on can only make it
   * immediate (the second signal); otherwise it joins the stop in progress.
   */
  stop(mode: ShutdownMode = 'immediate'): Promise<void> {
    if (this.stopping === null) {
      this.shutdownMode = mode
      this.stopping = this.stopWorkers(mode)
    } else if (mode === 'immediate' && this.shutdownMode !== 'immediate') {
      this.shutdownMode = 'immediate'
      this.hurried = true
      this.endWait()
    }
    return this.stopping
  }

  /** Every worker stops waiting and drops what it still has. */
  private endWait(): void {
    this.slots.forEach((slot, id) => {
      if (slot.thread !== null) this.stopWorker(id, slot.thread, 'immediate')
    })
  }

  /** 'wait-for-servers' is over once no worker has a transaction in flight. */
  private checkReleased(): void {
    if (this.shutdownMode !== 'wait-for-servers') return
    const live = this.slots.flatMap((s, id) => (s.thread === null ? [] : [id]))
    if (live.every((id) => this.released.has(id))) this.endWait()
  }

  private stopWorker(id: number, thread: Worker, mode: ShutdownMode): void {
    this.sendTo(thread, { type: 'shutdown', mode })
    if (mode !== 'immediate' || this.killTimers.has(id)) return
    const kill = setTimeout(() => void thread.terminate(), IMMEDIATE_GRACE_MS)
    this.killTimers.set(id, kill)
    thread.once('exit', () => clearTimeout(kill))
  }

  private async stopWorkers(mode: ShutdownMode): Promise<void> {
    process.off('SIGHUP', this.onReloadSignal)
    this.breakers.close()
    this.poolSlots.close()
    // The console's sampler keeps running: log_stats and SHOW STATS stay live while clients drain.
    if (mode === 'immediate') this.admin.close()
    const exits = this.slots.map((slot, id) => {
      slot.stopped = true
      const thread = slot.thread
      if (thread === null) return Promise.resolve()
      const exited = new Promise<void>((resolve) => thread.once('exit', () => resolve()))
      this.stopWorker(id, thread, mode)
      return exited
    })
    await Promise.all(exits)
    this.admin.close()
    const drained = DRAINED_LINE[mode]
    if (drained !== null && !this.hurried) this.log.info(drained)
    process.off('SIGINT', this.onStopSignal)
    process.off('SIGTERM', this.onStopSignal)
    process.off('SIGQUIT', this.onStopSignal)
    const { pidfile } = this.config.settings as { pidfile?: string }
    if (pidfile && this.started) this.remove(pidfile)
    if (this.unixSocket !== null) this.remove(this.unixSocket.path)
    await this.metricsServer?.close()
    if (this.started) this.log.info('stopped')
  }

  /**
   * The workers' listening sockets become the user's, as if it had made them.
   * The kernel puts SO_REUSEPORT sockets in one group (among which it spreads
   * connections) only when they belong to the same user when each binds: so
   * this waits until every worker has bound as root, and a worker started
   * after the switch, binding as the user, joins them.
   */
  private handListenersTo(to: RunAs): void {
    for (const slot of this.slots) {
      if (slot.listenFd !== null) fchownSync(slot.listenFd, to.uid, to.gid)
    }
  }

  /** A file the pooler made, gone at the end; one it may no longer remove is said, not thrown. */
  private remove(path: string): void {
    try {
      rmSync(path, { force: true })
    } catch (err) {
      this.log.warn({ path, err: (err as Error).message }, 'could not remove a file at exit')
    }
  }

  private spawn(id: number): void {
    const slot = this.slots[id]
    const { logConsole = 'json', logfile = null, runAs = null } = this.options
    // A program's sink lives on this thread: a worker posts its lines here.
    let console: WorkerData['log']['console']
    const transferList = []
    if (logConsole === null || typeof logConsole === 'string') console = logConsole
    else {
      const { port1, port2 } = new MessageChannel()
      port1.on('message', (line: string) => logConsole.write(line))
      port1.unref()
      console = port2
      transferList.push(port2)
    }
    const data: WorkerData = {
      id,
      sab: this.sab,
      config: this.config,
      listen: this.listen,
      unixSocket: this.unixSocket,
      listenOwner: runAs === null ? null : { uid: runAs.uid, gid: runAs.gid },
      log: {
        level: this.options.logLevel,
        console,
        logfileFd: logfile?.fd ?? null,
        base: this.options.logBase,
      },
    }
    const thread = new Worker(workerEntry, {
      workerData: data,
      transferList,
      name: `pgbouncer-cluster worker ${id}`,
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    })
    slot.thread = thread
    slot.ready ??= Promise.withResolvers<void>()
    slot.lastStart = Date.now()
    thread.on('message', (msg: Uint8Array) => this.onWorkerMessage(id, msg))
    thread.on('error', (err) => {
      // A worker that cannot start fails start(), whose caller says why in one line.
      if (slot.starting) {
        this.log.debug({ thread: id, err: err.message, stack: err.stack }, 'worker did not start')
        slot.ready?.reject(err)
        return
      }
      // A restarted worker that fails is restarted again.
      this.log.error({ thread: id, err: err.message, stack: err.stack }, 'worker thread failed')
    })
    thread.on('exit', (code) => this.onWorkerExit(id, thread, code))
    // Queued until the thread listens: the breakers open right now.
    for (const msg of this.breakers.messages()) this.sendTo(thread, msg)
    // A worker (re)started under PAUSE or KILL starts paused too.
    for (const msg of this.admin.stateMessages()) this.sendTo(thread, msg)
  }

  /** The routed cancels a dead worker will never answer: told done, so their clients may go. */
  private answerCancelsOf(id: number): void {
    const waiting = this.routedCancels.get(id)
    if (waiting === undefined) return
    this.routedCancels.delete(id)
    for (const { from, ref } of waiting.values())
      this.sendTo(this.slots[from]?.thread ?? null, { type: 'cancel-done', worker: from, ref })
  }

  private onWorkerExit(id: number, thread: Worker, code: number): void {
    const slot = this.slots[id]
    if (slot.thread !== thread) return
    slot.thread = null
    // Invariant 2: whatever the dead worker held returns to the shared pool.
    // Its clients and servers died with its sockets; none was handed to anyone.
    const reclaimed = this.shared.reclaimWorker(id)
    this.poolSlots.workerGone(id)
    this.answerCancelsOf(id)
    this.breakers.workerDied()
    this.admin.workerGone(id)
    this.notify.workerGone(id)
    if (slot.stopped) {
      this.checkReleased()
      return
    }
    if (slot.starting) {
      slot.ready?.reject(new Error(`worker ${id} exited with code ${code} before it listened`))
      return
    }
    // A worker that keeps dying soon after its start is restarted with backoff, not in a hot loop.
    const quick = Date.now() - slot.lastStart < 5000
    slot.restarts = quick ? slot.restarts + 1 : 0
    const delay =
      slot.restarts === 0
        ? 0
        : Math.min(RESTART_BACKOFF_MS.max, RESTART_BACKOFF_MS.first * 2 ** (slot.restarts - 1))
    this.log.error(
      { thread: id, code, reclaimed_permits: reclaimed, restarts: slot.restarts, delay_ms: delay },
      'worker exited; restarting it',
    )
    slot.ready ??= Promise.withResolvers<void>()
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
        slot.listenFd = msg.fd ?? null
        if (!slot.starting) this.log.info({ thread: id }, 'worker restarted')
        slot.starting = false
        slot.ready?.resolve()
        slot.ready = null
        return
      }
      case 'pool-slot-request':
      case 'client-slot-request':
        this.poolSlots.request({ ...msg, worker: id })
        return
      case 'databases-released':
        this.poolSlots.onReleased({ ...msg, worker: id })
        return
      case 'cancel': {
        const owner = keyWorker(msg.pid)
        const thread = this.slots[owner]?.thread ?? null
        if (owner === id) return
        if (thread === null) {
          // No such worker (or it is restarting): the cancel is lost, its client may go.
          this.sendTo(this.slots[id]?.thread ?? null, {
            type: 'cancel-done',
            worker: id,
            ref: msg.ref,
          })
          return
        }
        let waiting = this.routedCancels.get(owner)
        if (waiting === undefined) this.routedCancels.set(owner, (waiting = new Map()))
        waiting.set(`${msg.from}:${msg.ref}`, { from: msg.from, ref: msg.ref })
        this.sendTo(thread, msg)
        return
      }
      case 'cancel-done':
        this.routedCancels.get(id)?.delete(`${msg.worker}:${msg.ref}`)
        this.sendTo(this.slots[msg.worker]?.thread ?? null, msg)
        return
      case 'server-login-failed': {
        // The worker that failed logged it, with the host. A database freed
        // since (pool-slots.ts) has no breaker to feed.
        const slots = this.registry.lookup(msg.database, msg.user)
        if (slots !== null)
          this.breakers.loginFailed(
            slots.databaseSlot,
            msg.database,
            msg.sqlstate,
            msg.message,
            hostOf(msg),
            msg.kind,
          )
        return
      }
      case 'admin-request':
        this.admin.onRequest(msg)
        return
      case 'servers-released':
        this.released.add(id)
        this.checkReleased()
        return
      case 'stats':
        this.admin.onStats(msg)
        return
      case 'client-killed':
        this.admin.onClientKilled(msg)
        return
      case 'paused':
        this.admin.onPaused(msg)
        return
      case 'server-restarting': {
        // A database freed since (pool-slots.ts) has no breaker to feed.
        const slots = this.registry.lookup(msg.database, msg.user)
        if (slots !== null)
          this.breakers.restarting(slots.databaseSlot, msg.database, msg.sqlstate, msg.message)
        return
      }
      case 'server-login-ok': {
        const slots = this.registry.lookup(msg.database, msg.user)
        if (slots !== null)
          this.breakers.loginSucceeded(slots.databaseSlot, msg.database, hostOf(msg))
        return
      }
      case 'notify-listen':
        this.notify.onListen(id, msg)
        return
      case 'notify-ready':
        this.notify.onReady(msg)
        return
      case 'notification':
        this.notify.onNotification(msg)
        return
      case 'notify-listener':
        this.notify.onListenerState(id, msg)
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

/** The slot tables, or those `databases=N,users=N,pools=N` asks for (each 1..2^20). */
function slotLayout(
  spec: string | undefined,
  defaults: { maxPools: number; maxDatabases: number; maxUsers: number },
): { maxPools: number; maxDatabases: number; maxUsers: number } {
  const layout = { ...defaults }
  if (spec === undefined || spec.trim() === '') return layout
  const keys = { databases: 'maxDatabases', users: 'maxUsers', pools: 'maxPools' } as const
  for (const part of spec.split(',')) {
    const [name, value] = part.split('=').map((x) => x.trim())
    const key = keys[name as keyof typeof keys]
    const n = Number(value)
    if (key === undefined || !Number.isInteger(n) || n < 1 || n > 1 << 20) {
      throw new Error(
        `PGBOUNCER_CLUSTER_SLOTS: expected databases=N,users=N,pools=N (1..${1 << 20}), got "${spec}"`,
      )
    }
    layout[key] = n
  }
  return layout
}

/** unix_socket_group: a group name from /etc/group, or a number. */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group)
  let lines: string[] = []
  try {
    lines = readFileSync('/etc/group', 'utf8').split('\n')
  } catch {}
  for (const line of lines) {
    const [name, , gid] = line.split(':')
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid)
  }
  throw new Error(`unix_socket_group: no such group: ${group}`)
}

/**
 * A socket file a live process answers on is an error, as a TCP port in use
 * is; one nobody answers on was left by a process that died, and is removed.
 */
async function assertUnixSocketFree(path: string): Promise<void> {
  if (!existsSync(path)) return
  const answered = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path })
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (answered) {
    throw Object.assign(
      new Error(`cannot listen on unix socket ${path}: it is in use by another process`),
      { code: 'EADDRINUSE' },
    )
  }
  rmSync(path, { force: true })
}

function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? Object.assign(new Error(`cannot listen on ${host}:${port}: the port is in use`), {
              code: err.code,
            })
          : err,
      ),
    )
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()))
  })
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

/** The host of a login report, when its database has a host list. */
function hostOf(msg: { host?: number; hosts?: number }): HostOf | undefined {
  if (msg.host === undefined || msg.hosts === undefined || msg.host >= msg.hosts) return undefined
  return { index: msg.host, count: msg.hosts }
}

const MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req'

/**
 * With so_reuseport several processes share the port, and one of them stopping
 * closes its listening sockets. Unless net.ipv4.tcp_migrate_req is 1 (Linux
 * 5.14+), the kernel resets the connections still queued on those sockets
 * instead of handing them to another listener: a client that connected in that
 * instant of a rolling restart gets ECONNRESET. Only the host can fix that.
 */
function migrateReqProblem(): string | null {
  let value: string
  try {
    value = readFileSync(MIGRATE_REQ, 'utf8').trim()
  } catch {
    return 'so_reuseport: this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+): a client connecting while another process on the port stops may get its connection reset'
  }
  if (value !== '0') return null
  return 'so_reuseport: net.ipv4.tcp_migrate_req is 0, so a client connecting while another process on the port stops may get its connection reset; sysctl -w net.ipv4.tcp_migrate_req=1 hands such connections to the processes that stay'
}
