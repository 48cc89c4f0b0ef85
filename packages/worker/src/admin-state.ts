import type {
  ConnectionInfo,
  ControlMessage,
  ControlOf,
  PoolStats,
} from '@pgbouncer-cluster/protocol/control'
import type { AdminReply } from './admin.ts'
import type { ClientSession } from './client.ts'
import { epochMs, preciseClock } from './clock.ts'
import { fatal } from './errors.ts'
import type { PeerForwarder } from './peer.ts'
import type { Pool } from './pool/pool.ts'
import type { Server } from './server.ts'
import { isSuspended, remoteOf, suspendReading, unsuspendReading } from './socket-io.ts'
import { tlsInfo } from './tls.ts'

/** What the console's worker side reads and acts on (worker.ts's PoolerWorker is one). */
export interface AdminStateHost {
  readonly id: number
  readonly pools: ReadonlyMap<string, Pool>
  readonly sessions: ReadonlyMap<number, ClientSession>
  /** Sessions still logging in. */
  readonly loggingIn: ReadonlySet<ClientSession>
  /** The worker's clock (clock.ts) and suspend_timeout, for SUSPEND. */
  readonly now: number
  readonly settings: { readonly suspendTimeout: number }
  /** Connections accepted while suspended get their session now. */
  releaseHeld(): void
  /** [peers]: SHOW PEER_POOLS' share of this worker. */
  readonly peers: Pick<PeerForwarder, 'stats'>
  /** The port clients connect to: a unix socket server's local_port, as in PgBouncer. */
  readonly listenPort: number
  /** The notification listeners this worker runs (notify/hub.ts). */
  readonly notifications: {
    readonly listeners: ReadonlyMap<string, { readonly server: Server | null }>
  }
}

/** PgBouncer's text for the clients of a database dropped by KILL. */
const DATABASE_REMOVED = 'database removed'
/** PgBouncer's text for a connection SUSPEND could not flush in time. */
const SUSPEND_TIMEOUT = 'suspend_timeout'

/**
 * The worker's side of the admin console: what PAUSE, RESUME, KILL and the
 * SHOW views need of this worker's pools and sessions, and the round trip of
 * an admin command to the coordinator, which runs it cluster-wide.
 */
export class WorkerAdmin {
  /** Queries run by this worker's admin sessions (SHOW STATS' pgbouncer row). */
  queries = 0
  private readonly worker: AdminStateHost
  private readonly send: (msg: ControlMessage) => void
  private pausedAll = false
  private readonly pausedDbs = new Set<string>()
  /** DISABLE db: their clients are refused after the login. */
  private readonly disabledDbs = new Set<string>()
  /** SUSPEND: when it came (the worker's clock), or -1; and whether 'suspended' was sent. */
  private suspendedAt = -1
  private suspendReported = false
  /** PAUSE scopes (a database, or null for all) still waiting for servers to close here. */
  private draining: (string | null)[] = []
  private readonly replies = new Map<number, (reply: AdminReply) => void>()
  private nextId = 1

  constructor(worker: AdminStateHost, send: (msg: ControlMessage) => void) {
    this.worker = worker
    this.send = send
  }

  isPaused(database: string): boolean {
    return this.pausedAll || this.pausedDbs.has(database)
  }

  isDisabled(database: string): boolean {
    return this.disabledDbs.has(database)
  }

  /** SUSPEND is on: new connections wait for RESUME. */
  get suspended(): boolean {
    return this.suspendedAt >= 0
  }

  disable(database: string, disabled: boolean): void {
    if (disabled) this.disabledDbs.add(database)
    else this.disabledDbs.delete(database)
  }

  suspend(): void {
    if (this.suspendedAt < 0) this.suspendedAt = this.worker.now
    this.suspendReported = false
    this.checkSuspended()
  }

  /**
   * From the janitor, as PgBouncer's per-loop step: each client stops being
   * read once everything written to it is out (a client waiting for a server
   * still gets one, and counts as busy); once every client is stopped, each
   * server the same way. After suspend_timeout what could not be flushed is
   * dropped. Reports 'suspended' when nothing is left busy.
   */
  checkSuspended(): void {
    if (this.suspendedAt < 0 || this.suspendReported) return
    const timeout = this.worker.settings.suspendTimeout
    const force = timeout > 0 && this.worker.now - this.suspendedAt >= timeout * 1000
    let busy = 0
    for (const session of [...this.worker.sessions.values()]) {
      if (session.state === 'admin' || session.state === 'closed') continue
      if (this.worker.loggingIn.has(session)) {
        if (force) session.fail(fatal(SUSPEND_TIMEOUT))
        else busy++
        continue
      }
      if (isSuspended(session.socket)) continue
      const waiting = session.waitingSince !== 0 && session.server === null
      if (!waiting && session.queuedWrites === 0) suspendReading(session.socket)
      else if (force) session.fail(fatal(SUSPEND_TIMEOUT))
      else busy++
    }
    if (busy === 0) {
      for (const pool of this.worker.pools.values()) {
        for (const server of [...pool.servers]) {
          if (isSuspended(server.socket)) continue
          if (server.queuedWrites === 0) suspendReading(server.socket)
          else if (force) server.close()
          else busy++
        }
      }
    }
    if (busy > 0) return
    this.suspendReported = true
    this.send({ type: 'paused', worker: this.worker.id, suspended: 1 })
  }

  /** RESUME after SUSPEND: every socket reads again, held connections get their sessions. */
  private unsuspend(): void {
    if (this.suspendedAt < 0) return
    this.suspendedAt = -1
    for (const session of this.worker.sessions.values()) unsuspendReading(session.socket)
    for (const pool of this.worker.pools.values()) {
      for (const server of pool.servers) unsuspendReading(server.socket)
    }
    this.worker.releaseHeld()
  }

  // ---- commands the coordinator broadcasts ---------------------------------------

  pause(database: string | undefined): void {
    const scope = database ?? null
    if (scope === null) this.pausedAll = true
    else this.pausedDbs.add(scope)
    for (const pool of this.worker.pools.values()) {
      if (inScope(pool, scope)) pool.pause()
    }
    this.draining.push(scope)
    this.checkDrained()
  }

  resume(database: string | undefined): void {
    if (database === undefined) {
      this.pausedAll = false
      this.unsuspend()
    } else this.pausedDbs.delete(database)
    for (const pool of this.worker.pools.values()) {
      if (pool.paused && !this.isPaused(pool.database.name)) pool.resume()
    }
    // A PAUSE resumed before it drained is over: its command must not hang.
    const over = this.draining.filter((s) => !(s === null ? this.pausedAll : this.isPaused(s)))
    this.draining = this.draining.filter((s) => !over.includes(s))
    for (const scope of over) this.reportDrained(scope)
  }

  /** KILL: the database's clients get PgBouncer's error, its servers close now, it stays paused. */
  kill(database: string): void {
    this.pausedDbs.add(database)
    for (const session of [...this.worker.sessions.values()]) {
      if (session.pool !== null && session.pool.database.name === database) {
        session.fail(fatal(DATABASE_REMOVED))
      }
    }
    for (const pool of this.worker.pools.values()) {
      if (pool.database.name !== database) continue
      pool.paused = true
      pool.closeNow()
    }
  }

  /** From the janitor: reports the PAUSE scopes whose servers are all gone. */
  checkDrained(): void {
    if (this.draining.length === 0) return
    const pools = [...this.worker.pools.values()]
    const done = this.draining.filter((scope) =>
      pools.every((p) => !inScope(p, scope) || p.servers.size === 0),
    )
    if (done.length === 0) return
    this.draining = this.draining.filter((s) => !done.includes(s))
    for (const scope of done) this.reportDrained(scope)
  }

  private reportDrained(scope: string | null): void {
    this.send(
      scope === null
        ? { type: 'paused', worker: this.worker.id }
        : { type: 'paused', worker: this.worker.id, database: scope },
    )
  }

  // ---- the round trip of a command -------------------------------------------------

  /** Runs a command through the coordinator; resolves with its result. */
  request(command: string, arg: string | undefined): Promise<AdminReply> {
    const id = this.nextId++
    const { promise, resolve } = Promise.withResolvers<AdminReply>()
    this.replies.set(id, resolve)
    this.send(
      arg === undefined
        ? { type: 'admin-request', worker: this.worker.id, id, command }
        : { type: 'admin-request', worker: this.worker.id, id, command, arg },
    )
    return promise
  }

  onReply(msg: ControlOf<'admin-reply'>): void {
    const resolve = this.replies.get(msg.id)
    this.replies.delete(msg.id)
    resolve?.({
      tag: msg.tag,
      columns: msg.columns,
      rows: msg.rows,
      error: msg.error,
      sqlstate: msg.sqlstate,
      notice: msg.notice,
    })
  }

  // ---- SHOW: this worker's share ----------------------------------------------------

  /** Counted from the worker's own objects now: nothing of this runs per transaction. */
  stats(request: ControlOf<'stats-request'>): ControlOf<'stats'> {
    // Waits are read against the clock their start was taken from (clock.ts).
    const now = preciseClock()
    const byPool = new Map<Pool, PoolStats>()
    for (const pool of this.worker.pools.values()) byPool.set(pool, poolStats(pool, now))
    const clients: ConnectionInfo[] = []
    let adminSessions = 0
    const sockets = request.view === 'sockets'
    for (const session of this.worker.sessions.values()) {
      const admin = session.state === 'admin'
      if (admin) adminSessions++
      const pool = session.pool
      if (
        !admin &&
        (pool === null || (session.state !== 'active' && session.state !== 'welcome'))
      ) {
        // SHOW SOCKETS lists the clients still logging in too.
        if (sockets && this.worker.loggingIn.has(session))
          clients.push({ ...this.clientInfo(session, false, now), state: 'cl_login' })
        continue
      }
      if (pool !== null) {
        const s = byPool.get(pool)
        if (s !== undefined) {
          s.clActive++
          s.xactCount += session.xactCount
          s.queryCount += session.queryCount
          s.bytesReceived += session.bytesReceived
          s.bytesSent += session.bytesSent
          s.clientParseCount += session.clientParseCount
          s.bindCount += session.bindCount
          if (session.pinnedBy !== '') s.pinned!++
        }
      }
      if (request.view === 'clients') clients.push(this.clientInfo(session, admin, now))
      else if (sockets) {
        const info = this.clientInfo(session, admin, now)
        clients.push({
          ...info,
          state: info.state === 'waiting' ? 'cl_waiting' : 'cl_active',
          busy: session.queuedWrites > 0,
        })
      }
    }
    const pools = [...byPool.values()]
    // Waiting clients were counted as connected above: active is the rest.
    for (const s of pools) s.clActive = Math.max(0, s.clActive - s.clWaiting)
    const servers: ConnectionInfo[] = []
    if (request.view === 'servers' || sockets) {
      for (const pool of this.worker.pools.values()) {
        for (const server of pool.servers) {
          const info = this.serverInfo(server)
          // PgBouncer's socket lists: sv_active, sv_idle, sv_login (a server being canceled is busy).
          if (sockets) {
            info.state = `sv_${info.state === 'idle' || info.state === 'login' ? info.state : 'active'}`
            info.busy = server.queuedWrites > 0
          }
          servers.push(info)
        }
      }
      // A database's notification listener: a server of no pool, in a state of its own.
      for (const listener of this.worker.notifications.listeners.values()) {
        const server = listener.server
        if (server === null) continue
        const info = this.serverInfo(server)
        if (server.state === 'active') info.state = sockets ? 'sv_active' : 'listen'
        else if (sockets) info.state = `sv_${server.state === 'closed' ? 'active' : server.state}`
        servers.push(info)
      }
    }
    return {
      type: 'stats',
      id: request.id,
      worker: this.worker.id,
      clients,
      servers,
      pools,
      admin: { sessions: adminSessions, queries: this.queries },
      peerPools: this.worker.peers.stats(),
    }
  }

  private clientInfo(session: ClientSession, admin: boolean, now: number): ConnectionInfo {
    const socket = session.socket
    const peer = remoteOf(socket)
    const server = session.server
    const waiting = session.waitingSince !== 0 && server === null
    return {
      user: session.user === '' ? '(nouser)' : session.user,
      database: admin ? 'pgbouncer' : session.database === '' ? '(nodb)' : session.database,
      replication: session.replication,
      // 1.25: a client without a server is idle.
      state: waiting ? 'waiting' : server === null ? 'idle' : 'active',
      addr: session.unix ? 'unix' : (peer.address ?? ''),
      port: peer.port ?? 0,
      localAddr: socket.localAddress ?? '',
      localPort: socket.localPort ?? 0,
      connectTime: epochMs(session.connectedAt),
      requestTime: epochMs(
        waiting ? session.waitingSince : server !== null ? server.lastUsed : session.connectedAt,
      ),
      waitUs: waiting ? (now - session.waitingSince) * 1000 : 0,
      closeNeeded: false,
      ptr: clientPtr(session),
      link: server === null ? '' : this.serverPtr(server),
      remotePid: 0,
      tls: tlsInfo(socket),
      applicationName: session.vars.application_name ?? '',
      preparedStatements: session.preparedCount,
      id: session.id,
      pinned: session.pinnedBy,
    }
  }

  private serverInfo(server: Server): ConnectionInfo {
    const db = server.pool.database
    const client = server.client
    return {
      user: server.pool.user,
      database: db.name,
      replication: server.dedicated?.replication ?? 'none',
      state: server.parked ? 'being_canceled' : server.state,
      // Through a unix socket PgBouncer shows `unix`, the database's port and its own.
      addr: server.unix ? 'unix' : server.host,
      port: server.port,
      localAddr: server.unix ? 'unix' : (server.socket.localAddress ?? ''),
      localPort: server.unix ? this.worker.listenPort : (server.socket.localPort ?? 0),
      connectTime: epochMs(server.createdAt),
      requestTime: epochMs(server.lastUsed),
      waitUs: 0,
      closeNeeded: server.closeNeeded,
      ptr: this.serverPtr(server),
      link: client === null ? '' : clientPtr(client),
      remotePid: server.pid,
      tls: tlsInfo(server.socket),
      applicationName: server.vars.application_name ?? '',
      preparedStatements: server.preparedCount,
      id: server.id,
    }
  }

  /** Clients and servers share the worker's ids (worker.ts, nextSocketId): unique in the cluster. */
  private serverPtr(server: Server): string {
    return `0x${server.id.toString(16)}`
  }
}

function inScope(pool: Pool, scope: string | null): boolean {
  return scope === null || pool.database.name === scope
}

/** A client's id already carries its worker's number: unique in the cluster. */
function clientPtr(session: { id: number }): string {
  return `0x${session.id.toString(16)}`
}

function poolStats(pool: Pool, now: number): PoolStats {
  let svActive = 0
  let svIdle = 0
  let svBeingCanceled = 0
  for (const server of pool.servers) {
    if (server.parked) svBeingCanceled++
    else if (server.state === 'active') svActive++
    else if (server.state === 'idle') svIdle++
  }
  const since = pool.oldestWaitingSince
  const t = pool.totals
  return {
    database: pool.database.name,
    user: pool.user,
    mode: pool.mode,
    clActive: 0,
    clWaiting: pool.waitingCount,
    svActive,
    svIdle,
    svUsed: 0,
    svLogin: pool.loginCount,
    svBeingCanceled,
    maxWaitUs: since === 0 ? 0 : Math.max(0, now - since) * 1000,
    xactCount: t.xactCount,
    queryCount: t.queryCount,
    bytesReceived: t.bytesReceived,
    bytesSent: t.bytesSent,
    xactUs: t.xactUs,
    queryUs: t.queryUs,
    waitUs: t.waitUs,
    serverAssignmentCount: t.serverAssignmentCount,
    clientParseCount: t.clientParseCount,
    serverParseCount: t.serverParseCount,
    bindCount: t.bindCount,
    sessionState: Array.from(pool.sessionState),
    pinned: 0,
  }
}
