import type {
  ConnectionInfo,
  ControlMessage,
  ControlOf,
  PeerPoolStats,
  ShutdownMode,
} from '@pgbouncer-cluster/protocol/control'
import type { Logger } from '@pgbouncer-cluster/worker/log'
import {
  ADMIN_DATABASE,
  averages,
  type ClientCounts,
  type ClusterStats,
  COLUMNS,
  mergePools,
  type StatLine,
  showClients,
  showConfig,
  showConnections,
  showDatabases,
  showHosts,
  showLists,
  showPeerPools,
  showPeers,
  showPools,
  showSessionState,
  showSockets,
  showState,
  showStats,
  showTotals,
  showUsers,
  statsLogLine,
  statTotals,
  userNames,
  type View,
  ZERO_STATS,
} from './admin-views.ts'
import type { Config } from './config/config.ts'
import type { HostRow } from './host-roles.ts'
import { VERSION_TEXT } from './version.ts'

/** What the console needs of the cluster it runs in. */
export interface AdminHost {
  readonly log: Logger
  config(): Config
  /** Ids of the workers with a live thread. */
  workers(): number[]
  send(worker: number, msg: ControlMessage): void
  /** The RELOAD command: false when the file could not be used (logged, nothing changed). */
  reload(): boolean
  /** The SET command (cluster.ts); throws when the setting or its value is refused. */
  set(name: string, value: string): { notice: string | null }
  /** The SHUTDOWN command: stop in that mode, then exit 0. */
  shutdown(mode: ShutdownMode): void
  /** A shutdown is under way (listeners closed). */
  draining(): boolean
  /** SHOW STATE counts SHUTDOWN WAIT_FOR_SERVERS as paused, as PgBouncer does. */
  waitingForServers(): boolean
  /** Pools the registry has handed slots to (databases the '*' entry made included). */
  pools(): Iterable<{ database: string; user: string }>
  /** Clients logged in per database and per user, across the cluster. */
  clientCounts(): ClientCounts
  port(): number
  /** SHOW HOSTS: each host of each database in use, its breaker and its role. */
  hosts(): HostRow[]
}

type Result = Omit<ControlOf<'admin-reply'>, 'type' | 'id'>

/**
 * What /metrics reads, gathered once: the console's own views (so every
 * exporter metric equals what SHOW answers at the same moment) and each
 * worker's report for the per-worker figures.
 */
export interface AdminSnapshot {
  /** Every live worker answered in time. */
  complete: boolean
  reports: ControlOf<'stats'>[]
  version: string
  pools: View
  stats: View
  databases: View
  lists: View
  config: View
  /** SHOW SESSION_STATE, and the clients pinned per pool (session_state_policy = pin). */
  sessionState: View
  pinned: { database: string; user: string; count: number }[]
}

/** How often a SUSPEND checks that a console session is left to RESUME it. */
const CONSOLE_WATCH_MS = 1000
/** How often WAIT_CLOSE asks the workers whether servers marked to close remain. */
const WAIT_CLOSE_POLL_MS = 200
/** A worker that does not answer a SHOW in time is left out of it rather than hanging the console. */
const GATHER_TIMEOUT_MS = 2000

/**
 * The coordinator's half of PgBouncer's admin console. A worker's admin
 * session sends each command here ('admin-request'); SHOW asks every worker
 * for its share ('stats-request' → 'stats') and answers one row per pool
 * summed over workers; PAUSE, RESUME, RECONNECT and KILL are broadcast, PAUSE
 * answering once every worker reports its servers gone ('paused').
 */
export class AdminConsole {
  private readonly host: AdminHost
  /** PAUSE or SUSPEND of everything (PgBouncer's cf_pause_mode). */
  private mode: 'none' | 'pause' | 'suspend' = 'none'
  /** SUSPEND waits for these workers to report every socket stopped. */
  private suspending: { waiting: Set<number>; done: () => void } | null = null
  private readonly pausedDbs = new Set<string>()
  /** DISABLE db: new clients of these databases are refused. */
  private readonly disabledDbs = new Set<string>()
  private nextId = 1
  private readonly gathers = new Map<
    number,
    { waiting: Set<number>; reports: ControlOf<'stats'>[]; done: () => void }
  >()
  private pauses: { database: string | undefined; waiting: Set<number>; done: () => void }[] = []
  private readonly kills = new Map<number, (found: boolean) => void>()
  /** SHOW STATS averages: the totals at the start of the last stats_period, and its result. */
  private sample = { at: Date.now(), totals: new Map<string, StatLine>() }
  private averages = new Map<string, StatLine>()
  private sampler: NodeJS.Timeout | null = null

  constructor(host: AdminHost) {
    this.host = host
    this.scheduleSample()
  }

  close(): void {
    if (this.sampler !== null) clearTimeout(this.sampler)
    this.sampler = null
  }

  /** For a worker (re)started while PAUSE or KILL holds: the state it must start in. */
  stateMessages(): ControlMessage[] {
    const out: ControlMessage[] = []
    if (this.mode === 'pause') out.push({ type: 'pause' })
    if (this.mode === 'suspend') out.push({ type: 'pause', suspend: 1 })
    for (const database of this.pausedDbs) out.push({ type: 'pause', database })
    return out
  }

  // ---- messages from workers ---------------------------------------------------

  onRequest(msg: ControlOf<'admin-request'>): void {
    void this.run(msg.command, msg.arg).then(
      (result) => {
        if (result !== null)
          this.host.send(msg.worker, { type: 'admin-reply', id: msg.id, ...result })
      },
      (err: Error) => {
        this.host.log.error({ err: err.message, command: msg.command }, 'admin command failed')
        this.host.send(msg.worker, { type: 'admin-reply', id: msg.id, ...fail(err.message) })
      },
    )
  }

  onStats(msg: ControlOf<'stats'>): void {
    const gather = this.gathers.get(msg.id)
    if (gather === undefined) return
    gather.reports.push(msg)
    gather.waiting.delete(msg.worker)
    if (gather.waiting.size === 0) gather.done()
  }

  /** PAUSE or KILL of this very database is in force. */
  isPaused(database: string): boolean {
    return this.pausedDbs.has(database)
  }

  onPaused(msg: ControlOf<'paused'>): void {
    if (msg.suspended === 1) {
      this.onSuspended(msg.worker)
      return
    }
    for (const p of this.pauses) {
      if (p.database === msg.database && p.waiting.delete(msg.worker) && p.waiting.size === 0)
        p.done()
    }
    this.pauses = this.pauses.filter((p) => p.waiting.size > 0)
  }

  onClientKilled(msg: ControlOf<'client-killed'>): void {
    const done = this.kills.get(msg.id)
    this.kills.delete(msg.id)
    done?.(msg.found === 1)
  }

  /** A worker died: nothing it owed is coming; its clients and servers died with it. */
  workerGone(worker: number): void {
    for (const g of this.gathers.values()) {
      if (g.waiting.delete(worker) && g.waiting.size === 0) g.done()
    }
    for (const p of this.pauses) {
      if (p.waiting.delete(worker) && p.waiting.size === 0) p.done()
    }
    this.pauses = this.pauses.filter((p) => p.waiting.size > 0)
    this.onSuspended(worker)
  }

  // ---- commands -------------------------------------------------------------------

  /** The result to send back, or null when there is no one left to send it to (SHUTDOWN). */
  private async run(command: string, arg: string | undefined): Promise<Result | null> {
    switch (command) {
      case 'SHOW':
        return this.show(arg ?? '')
      case 'PAUSE':
        return this.pause(arg)
      case 'RESUME':
        return this.resume(arg)
      case 'RECONNECT': {
        const refused = this.checkDatabase(arg, 'reconnect')
        if (refused !== null) return refused
        this.broadcast(
          arg === undefined ? { type: 'reconnect' } : { type: 'reconnect', database: arg },
        )
        return done('RECONNECT')
      }
      case 'KILL':
        return this.kill(arg)
      case 'SUSPEND':
        return this.suspend()
      case 'DISABLE':
      case 'ENABLE':
        return this.disable(arg, command === 'DISABLE')
      case 'WAIT_CLOSE':
        return this.waitClose(arg)
      case 'KILL_CLIENT':
        return this.killClient(arg ?? '')
      case 'RELOAD':
        this.host.log.info('RELOAD command issued')
        // PgBouncer 1.22+: the file's error is logged, the command fails.
        if (!this.host.reload())
          return fail('RELOAD failed, see logs for additional details', 'F0000')
        return done('RELOAD')
      case 'SET':
        return this.set(arg ?? '')
      case 'SHUTDOWN': {
        const wait = arg?.toUpperCase()
        if (wait === 'WAIT_FOR_CLIENTS' || wait === 'WAIT_FOR_SERVERS') {
          this.host.log.info(`SHUTDOWN ${wait} command issued`)
          this.host.shutdown(wait === 'WAIT_FOR_CLIENTS' ? 'wait-for-clients' : 'wait-for-servers')
          return done('SHUTDOWN')
        }
        this.host.log.info('SHUTDOWN command issued')
        this.host.shutdown('immediate')
        // As PgBouncer: no answer, the connection ends with the process.
        return null
      }
      default:
        return fail(`invalid command '${command}', use SHOW HELP;`)
    }
  }

  /**
   * KILL [db]: the database's clients and servers (every database's, without
   * one) are dropped now, and it stays paused until RESUME db.
   */
  private kill(database: string | undefined): Result {
    if (this.mode !== 'none') return fail('already suspended/paused')
    const refused = this.checkDatabase(database, 'kill')
    if (refused !== null) return refused
    const names =
      database !== undefined ? [database] : [...new Set(this.knownDatabaseNames())].sort()
    for (const name of names) {
      this.pausedDbs.add(name)
      this.broadcast({ type: 'database', database: name, command: 'kill' })
    }
    this.host.log.info({ database }, 'KILL: clients and servers dropped')
    return done('KILL')
  }

  /** DISABLE db / ENABLE db: whether the database takes new clients. */
  private disable(database: string | undefined, disabled: boolean): Result {
    if (database === undefined) return fail('a database is required')
    if (database === ADMIN_DATABASE) return fail(`cannot disable admin db: ${database}`)
    if (!this.knownDatabase(database)) return fail(`no such database: ${database}`)
    if (disabled) this.disabledDbs.add(database)
    else this.disabledDbs.delete(database)
    this.broadcast({ type: 'database', database, command: disabled ? 'disable' : 'enable' })
    this.host.log.info({ database }, disabled ? 'DISABLE' : 'ENABLE')
    return done(disabled ? 'DISABLE' : 'ENABLE')
  }

  /**
   * SUSPEND: every worker holds new connections and stops reading each socket
   * once what was written to it is out; the command answers once all have.
   * RESUME (or SIGUSR2) ends it, and so does the last console session leaving.
   */
  private async suspend(): Promise<Result> {
    if (this.mode !== 'none') return fail('already suspended/paused')
    if (this.pausedDbs.size > 0) return fail('cannot suspend with paused databases')
    this.host.log.info('SUSPEND command issued')
    this.mode = 'suspend'
    const workers = this.host.workers()
    const stopped = Promise.withResolvers<void>()
    if (workers.length === 0) stopped.resolve()
    else this.suspending = { waiting: new Set(workers), done: stopped.resolve }
    this.broadcast({ type: 'pause', suspend: 1 })
    this.watchConsoleSessions()
    await stopped.promise
    return done('SUSPEND')
  }

  private onSuspended(worker: number): void {
    const s = this.suspending
    if (s === null || !s.waiting.delete(worker) || s.waiting.size > 0) return
    this.suspending = null
    s.done()
  }

  /**
   * While suspended, nobody but a console session can RESUME: with none left,
   * PgBouncer resumes by itself. Asked of the workers once a second.
   */
  private watchConsoleSessions(): void {
    const check = (): void => {
      if (this.mode !== 'suspend') return
      void this.clusterStats().then((stats) => {
        if (this.mode !== 'suspend') return
        if (stats.adminSessions > 0) {
          setTimeout(check, CONSOLE_WATCH_MS).unref()
          return
        }
        this.host.log.info('admin disappeared when suspended, doing RESUME')
        this.fullResume()
      })
    }
    setTimeout(check, CONSOLE_WATCH_MS).unref()
  }

  /** RESUME of everything: ends PAUSE or SUSPEND (a database paused by name stays). */
  private fullResume(): void {
    this.mode = 'none'
    const s = this.suspending
    this.suspending = null
    s?.done()
    this.broadcast({ type: 'resume' })
  }

  /**
   * WAIT_CLOSE [db]: answers once no server of the database (of any, without
   * one) is marked to close (close_needed, after RECONNECT or a RELOAD that
   * moved it). Asked of the workers every 200 ms meanwhile.
   */
  private async waitClose(database: string | undefined): Promise<Result> {
    if (database === ADMIN_DATABASE) return fail(`cannot wait in admin db: ${database}`)
    if (database !== undefined && !this.knownDatabase(database))
      return fail(`no such database: ${database}`)
    this.host.log.info({ database }, 'WAIT_CLOSE command issued')
    for (;;) {
      const reports = await this.gather('servers')
      const pending = reports
        .flatMap((r) => r.servers as ConnectionInfo[])
        .some((s) => s.closeNeeded && (database === undefined || s.database === database))
      if (!pending || this.host.draining()) return done('WAIT_CLOSE')
      await new Promise((r) => setTimeout(r, WAIT_CLOSE_POLL_MS))
    }
  }

  /** SET: the worker sends the name and the value, unquoted, with a NUL between them. */
  private set(arg: string): Result {
    const at = arg.indexOf('\u0000')
    const name = arg.slice(0, at)
    const value = arg.slice(at + 1)
    let notice: string | null
    try {
      ;({ notice } = this.host.set(name, value))
    } catch {
      return fail('SET failed')
    }
    const result = done(`SET ${name}=${value}`)
    return notice === null ? result : { ...result, notice }
  }

  /**
   * KILL_CLIENT: the id SHOW CLIENTS shows is the session's id, whose top
   * bits name the worker that holds it.
   */
  private async killClient(arg: string): Promise<Result> {
    const m = /^\s*(\d+)/.exec(arg)
    if (m === null) return fail('invalid client pointer supplied')
    const pid = Number(m[1])
    const worker = (pid >>> 24) - 1
    if (pid > 0x7fffffff || !this.host.workers().includes(worker)) return fail('client not found')
    const id = this.nextId++
    const answered = Promise.withResolvers<boolean>()
    this.kills.set(id, answered.resolve)
    const timer = setTimeout(() => {
      this.kills.delete(id)
      answered.resolve(false)
    }, GATHER_TIMEOUT_MS)
    this.host.send(worker, { type: 'kill-client', id, pid })
    const found = await answered.promise
    clearTimeout(timer)
    if (!found) return fail('client not found')
    this.host.log.info({ client: pid }, 'KILL_CLIENT: client dropped')
    return done('KILL_CLIENT')
  }

  private async pause(database: string | undefined): Promise<Result> {
    const refused = this.checkDatabase(database, 'pause')
    if (refused !== null) return refused
    if (this.mode !== 'none') return fail('already suspended/paused')
    if (database === undefined) this.mode = 'pause'
    else this.pausedDbs.add(database)
    const workers = this.host.workers()
    const drained = Promise.withResolvers<void>()
    if (workers.length === 0) drained.resolve()
    else this.pauses.push({ database, waiting: new Set(workers), done: drained.resolve })
    this.broadcast(database === undefined ? { type: 'pause' } : { type: 'pause', database })
    this.host.log.info({ database }, 'PAUSE: waiting for servers to be released')
    // As PgBouncer, the command returns once every server of the scope is closed.
    await drained.promise
    return done('PAUSE')
  }

  /** SIGUSR1, PgBouncer's PAUSE by signal: nobody waits for the servers to go. */
  pauseSignal(): void {
    if (this.mode !== 'none') {
      this.host.log.info('got SIGUSR1, but already paused/suspended')
      return
    }
    this.host.log.info('got SIGUSR1, pausing all activity')
    this.mode = 'pause'
    this.broadcast({ type: 'pause' })
  }

  /** SIGUSR2, PgBouncer's RESUME by signal: ends a PAUSE of everything (a database's stays). */
  resumeSignal(): void {
    if (this.host.draining()) {
      this.host.log.info('got SIGUSR2 while shutting down, ignoring')
      return
    }
    if (this.mode === 'none') {
      this.host.log.info('got SIGUSR2, but not paused/suspended')
      return
    }
    this.host.log.info(
      `got SIGUSR2, continuing from ${this.mode === 'pause' ? 'PAUSE' : 'SUSPEND'}`,
    )
    this.fullResume()
  }

  private resume(database: string | undefined): Result {
    if (database === undefined) {
      if (this.host.draining()) return fail('pooler is shutting down')
      if (this.mode === 'none') return fail('pooler is not paused/suspended')
      this.fullResume()
    } else {
      if (database !== ADMIN_DATABASE && !this.knownDatabase(database))
        return fail(`no such database: ${database}`)
      if (!this.pausedDbs.delete(database)) return fail(`database ${database} is not paused`)
      this.broadcast({ type: 'resume', database })
    }
    this.host.log.info({ database }, 'RESUME')
    return done('RESUME')
  }

  private checkDatabase(database: string | undefined, verb: string): Result | null {
    if (database === undefined) return null
    if (database === ADMIN_DATABASE) return fail(`cannot ${verb} admin db: ${database}`)
    if (!this.knownDatabase(database)) return fail(`no such database: ${database}`)
    return null
  }

  private knownDatabaseNames(): string[] {
    return [
      ...Object.keys(this.host.config().databases),
      ...[...this.host.pools()].map((p) => p.database),
    ]
  }

  private knownDatabase(name: string): boolean {
    if (Object.hasOwn(this.host.config().databases, name)) return true
    for (const p of this.host.pools()) if (p.database === name) return true
    return false
  }

  private broadcast(msg: ControlMessage): void {
    for (const worker of this.host.workers()) this.host.send(worker, msg)
  }

  // ---- SHOW -------------------------------------------------------------------------

  private async show(what: string): Promise<Result> {
    const config = this.host.config()
    switch (what) {
      case 'VERSION':
        return view({ columns: COLUMNS.version, rows: [[VERSION_TEXT]] })
      case 'CONFIG':
        return view(showConfig(config))
      case 'DNS_HOSTS':
        return view({ columns: COLUMNS.dnsHosts, rows: [] })
      case 'DNS_ZONES':
        return view({ columns: COLUMNS.dnsZones, rows: [] })
      case 'STATE':
        return view(
          showState(
            this.mode === 'pause' || this.host.waitingForServers(),
            this.mode === 'suspend',
          ),
        )
      case 'PEERS':
        return view(showPeers(config))
      case 'HOSTS':
        return view(showHosts(this.host.hosts()))
      case 'PEER_POOLS': {
        const reports = await this.gather(undefined)
        return view(showPeerPools(reports.map((r) => (r.peerPools ?? []) as PeerPoolStats[])))
      }
      case 'SOCKETS':
      case 'ACTIVE_SOCKETS': {
        // ACTIVE_SOCKETS: those with bytes waiting to be written (PgBouncer: in their buffers).
        const keep = (c: ConnectionInfo) => what === 'SOCKETS' || c.busy === true
        const reports = await this.gather('sockets')
        return view(
          showSockets(
            reports.flatMap((r) => (r.clients as ConnectionInfo[]).filter(keep)),
            reports.flatMap((r) => (r.servers as ConnectionInfo[]).filter(keep)),
          ),
        )
      }
      case 'MEM':
        // PgBouncer lists its slab caches; a worker's objects live in V8's heap (/metrics).
        return view({ columns: COLUMNS.mem, rows: [] })
      case 'CLIENTS':
      case 'SERVERS': {
        const reports = await this.gather(what === 'CLIENTS' ? 'clients' : 'servers')
        const list = reports.flatMap((r) => (what === 'CLIENTS' ? r.clients : r.servers))
        if (what === 'CLIENTS') return view(showClients(list as ConnectionInfo[]))
        return view(showConnections('S', list as ConnectionInfo[]))
      }
      default:
        break
    }
    const stats = await this.clusterStats()
    switch (what) {
      case 'POOLS':
        return view(showPools(config, stats))
      case 'STATS':
      case 'STATS_TOTALS':
      case 'STATS_AVERAGES': {
        const kind = what === 'STATS' ? 'stats' : what === 'STATS_TOTALS' ? 'totals' : 'averages'
        return view(showStats(statTotals(stats), this.averages, kind))
      }
      case 'TOTALS': {
        const all = statTotals(stats).get('') ?? ZERO_STATS
        return view(showTotals(all, this.averages.get('') ?? ZERO_STATS))
      }
      case 'DATABASES':
        return view(this.databasesView(stats))
      case 'USERS':
        return view(showUsers(config, this.userNames(stats), stats.pools, this.host.clientCounts()))
      case 'LISTS':
        return view(this.listsView(stats))
      case 'SESSION_STATE':
        return view(showSessionState(stats))
      default:
        return fail(`invalid command 'SHOW ${what}', use SHOW HELP;`)
    }
  }

  /** For /metrics: SHOW POOLS, STATS, DATABASES, LISTS and CONFIG from one gather. */
  async snapshot(): Promise<AdminSnapshot> {
    const asked = this.host.workers().length
    const reports = await this.gather(undefined)
    const stats = clusterStatsOf(reports)
    return {
      complete: reports.length === asked,
      reports,
      version: VERSION_TEXT,
      pools: showPools(this.host.config(), stats),
      stats: showStats(statTotals(stats), this.averages, 'stats'),
      databases: this.databasesView(stats),
      lists: this.listsView(stats),
      config: showConfig(this.host.config()),
      sessionState: showSessionState(stats),
      pinned: stats.pools.map((p) => ({
        database: p.database,
        user: p.user,
        count: p.pinned ?? 0,
      })),
    }
  }

  private databasesView(stats: ClusterStats): View {
    return showDatabases(
      this.host.config(),
      this.databaseNames(stats),
      stats.pools,
      this.pausedDbs,
      this.disabledDbs,
      this.host.clientCounts(),
      this.host.port(),
    )
  }

  private listsView(stats: ClusterStats): View {
    let clients = stats.adminSessions
    let servers = 0
    for (const p of stats.pools) {
      clients += p.clActive + p.clWaiting
      servers += p.svActive + p.svIdle + p.svUsed + p.svLogin + p.svBeingCanceled
    }
    return showLists({
      databases: new Set(this.databaseNames(stats)).size + 1,
      users: this.userNames(stats).length,
      peers: Object.keys(this.host.config().peers).length,
      pools: stats.pools.length + 1,
      peerPools: stats.peerPools,
      clients,
      servers,
    })
  }

  private databaseNames(stats: ClusterStats): string[] {
    return [
      ...Object.keys(this.host.config().databases),
      ...[...this.host.pools()].map((p) => p.database),
      ...stats.pools.map((p) => p.database),
    ]
  }

  private userNames(stats: ClusterStats): string[] {
    // Logged-in users too (console users, trust): one who only failed a login is not listed.
    const loggedIn = [...this.host.clientCounts().users].filter(([, n]) => n > 0).map(([u]) => u)
    const users = [
      ...[...this.host.pools()].map((p) => p.user),
      ...stats.pools.map((p) => p.user),
      ...loggedIn,
    ]
    return userNames(this.host.config(), users)
  }

  async clusterStats(): Promise<ClusterStats> {
    return clusterStatsOf(await this.gather(undefined))
  }

  /** Every live worker's share, or what arrived within the timeout. */
  private gather(
    view: 'clients' | 'servers' | 'sockets' | undefined,
  ): Promise<ControlOf<'stats'>[]> {
    const workers = this.host.workers()
    if (workers.length === 0) return Promise.resolve([])
    const id = this.nextId++
    const { promise, resolve } = Promise.withResolvers<ControlOf<'stats'>[]>()
    const reports: ControlOf<'stats'>[] = []
    const timer = setTimeout(() => {
      this.host.log.warn({ missing: [...gather.waiting] }, 'admin: workers did not answer in time')
      gather.done()
    }, GATHER_TIMEOUT_MS)
    const gather = {
      waiting: new Set(workers),
      reports,
      done: () => {
        clearTimeout(timer)
        this.gathers.delete(id)
        resolve(reports)
      },
    }
    this.gathers.set(id, gather)
    const request: ControlMessage =
      view === undefined ? { type: 'stats-request', id } : { type: 'stats-request', id, view }
    for (const worker of workers) this.host.send(worker, request)
    return promise
  }

  // ---- averages over stats_period -----------------------------------------------------

  private scheduleSample(): void {
    const period = Math.max(1, this.host.config().settings.statsPeriod) * 1000
    this.sampler = setTimeout(() => {
      void this.takeSample().finally(() => {
        if (this.sampler !== null) this.scheduleSample()
      })
    }, period)
    this.sampler.unref()
  }

  private async takeSample(): Promise<void> {
    const totals = statTotals(await this.clusterStats())
    const at = Date.now()
    const before = this.sample
    this.sample = { at, totals }
    const seconds = Math.max(0.001, (at - before.at) / 1000)
    const next = new Map<string, StatLine>()
    for (const [name, now] of totals) {
      next.set(name, averages(now, before.totals.get(name) ?? ZERO_STATS, seconds))
    }
    this.averages = next
    // log_stats: one line per stats_period, over every database, as PgBouncer.
    if (this.host.config().settings.logStats)
      this.host.log.info(statsLogLine(next.get('') ?? ZERO_STATS))
  }
}

function view(v: View): Result {
  return { tag: 'SHOW', columns: v.columns, rows: v.rows }
}

function done(tag: string): Result {
  return { tag, columns: [], rows: [] }
}

function fail(message: string, sqlstate?: string): Result {
  const result: Result = { tag: '', columns: [], rows: [], error: message }
  if (sqlstate !== undefined) result.sqlstate = sqlstate
  return result
}

function clusterStatsOf(reports: ControlOf<'stats'>[]): ClusterStats {
  let adminSessions = 0
  let adminQueries = 0
  const peers = new Set<number>()
  for (const r of reports) {
    adminSessions += r.admin?.sessions ?? 0
    adminQueries += r.admin?.queries ?? 0
    for (const p of (r.peerPools ?? []) as PeerPoolStats[]) peers.add(p.peerId)
  }
  return {
    pools: mergePools(reports.map((r) => r.pools ?? [])),
    adminSessions,
    adminQueries,
    peerPools: peers.size,
  }
}
