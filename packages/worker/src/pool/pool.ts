import { setTimeout as sleep } from 'node:timers/promises'
import { isMd5Hash } from '@pgbouncer-cluster/protocol/auth/md5'
import { isScramSecret } from '@pgbouncer-cluster/protocol/auth/scram'
import { SessionAttrs } from '@pgbouncer-cluster/protocol/host-role'
import { Latency, type LatencyHistograms } from '@pgbouncer-cluster/protocol/latency'
import { poolKey } from '@pgbouncer-cluster/protocol/pool-key'
import type { Semaphore } from '@pgbouncer-cluster/protocol/semaphore'
import {
  BreakerState,
  type BreakerWords,
  type SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import { preciseClock } from '../clock.ts'
import type { DatabaseConfig, PoolMode, UserConfig } from '../config-types.ts'
import { fatal, Texts } from '../errors.ts'
import type { Logger } from '../log.ts'
import {
  type LinkedClient,
  type LoginFailure,
  Server,
  type Dedicated as ServerDedicated,
  type ServerHost,
  type ServerSecret,
} from '../server.ts'
import { LoginFailureKind, loginFailureKind } from '../server-restart.ts'
import { KIND_COUNT } from '../session-state/classify.ts'
import { checkStatement, needsCheck } from './health-check.ts'
import { HostChoice, hostOf } from './hosts.ts'
import { clientError } from './login-failure.ts'
import { PERMIT_DATABASE, PERMIT_POOL, PERMIT_USER, Permits } from './permits.ts'
import { Rebalance } from './rebalance.ts'
import { TargetSession } from './target-session.ts'
import { WaitQueue } from './waiting.ts'

export { PERMIT_DATABASE, PERMIT_POOL, PERMIT_USER } from './permits.ts'

/**
 * Whoever a server is linked to: a client session (client.ts), or the
 * pooler's own auth_query (auth-query.ts). The server sees only its
 * LinkedClient part.
 */
export interface PoolClient extends LinkedClient {
  /** The user it logged in as, for [users] overrides; the pool's user when absent. */
  readonly user?: string
  /** When it started waiting for a server (the worker's clock, clock.ts); 0 when not waiting. */
  waitingSince: number
  xactCount: number
  queryCount: number
  bytesReceived: number
  /** Named Parses and Binds of them (max_prepared_statements), for SHOW STATS. */
  clientParseCount: number
  bindCount: number
  /** The pool links a server to it. */
  attachServer(server: Server): void
  /** A FATAL error, and the end of it (query_wait_timeout, breaker). */
  fail(error: Buffer): void
}

/** A replication client and the parameters its own server is opened with. */
export interface Dedicated extends ServerDedicated {
  readonly client: PoolClient
}

/** What a pool needs of its worker thread (worker.ts's PoolerWorker is one). */
export interface PoolHost extends ServerHost {
  readonly id: number
  readonly closing: boolean
  readonly log: Logger
  readonly shared: SharedMemory
  /** /metrics' latency histograms, or null when they are off. */
  readonly latency: LatencyHistograms | null
  readonly authUsers: Record<string, string>
  userConfig(user: string): UserConfig | undefined
  queriedSecret(database: string, user: string): string | undefined
  /** The error clients get while the database's breaker is open. */
  breakerError(database: string, seq: number): Buffer
  breakerText(database: string): { sqlstate: string; message: string }
  /**
   * `host`: the index in the database's host list, -1 for the whole database;
   * `kind`: what the failure says of the server (server-restart.ts).
   */
  reportLoginFailure(
    pool: Pool,
    sqlstate: string,
    message: string,
    host?: number,
    kind?: number,
  ): void
  reportLoginOk(pool: Pool, host?: number): void
  /** A server of `pool` was ended by PostgreSQL's shutdown or crash. */
  reportRestart(pool: Pool, sqlstate: string, message: string): void
  /**
   * `pool` is at its database's (PERMIT_DATABASE) or user's (PERMIT_USER)
   * limit: close an idle server of another of this worker's pools that counts
   * against the same limit, as PgBouncer's eviction does. Whether one was closed.
   */
  evictFor(pool: Pool, limit: number): boolean
}

export interface PoolSlots {
  pool: number
  databaseSlot: number
  userSlot: number
}

/**
 * The servers of one (database, user) pair in this worker, and the clients of
 * this worker waiting for one. Its size is not its own: every server holds a
 * permit of the pool's semaphore in shared memory, so the limit holds across
 * all workers (invariant 1).
 */
export class Pool {
  readonly key: string
  /** `db/user`, as PgBouncer names a pool in its log lines. */
  readonly label: string
  readonly worker: PoolHost
  /** Replaced on reload (reconfigure), so limits set in [databases] follow the file. */
  database: DatabaseConfig
  /** The user servers log in as: the database entry's forced user, or the client's. */
  readonly user: string
  mode: PoolMode
  /** ParameterStatus of a logged-in server: served to clients in the welcome. */
  welcomeParams: Map<string, string> | null = null
  /** Welcomes without a key (welcomeTemplate), by the client's vars key. */
  readonly welcomeTemplates = new Map<string, Buffer>()
  /** Recovered from a client's SCRAM exchange when auth_file holds only a secret. */
  scramKeys: { clientKey: Buffer; serverKey: Buffer } | null = null
  lastLoginFailure: { at: number; failure: LoginFailure } | null = null
  /** PAUSE (or KILL) of the admin console: no server is handed out or opened until RESUME. */
  paused = false
  /** target_session_attrs: which hosts' servers may serve this pool (target-session.ts). */
  readonly roles: TargetSession
  /**
   * For SHOW STATS: counts of the clients that left (the connected ones' are
   * added when asked), and times in µs summed where a server is linked and
   * released. No clock is read per transaction for them: see release().
   */
  readonly totals = {
    xactCount: 0,
    queryCount: 0,
    bytesReceived: 0,
    bytesSent: 0,
    xactUs: 0,
    queryUs: 0,
    waitUs: 0,
    serverAssignmentCount: 0,
    clientParseCount: 0,
    serverParseCount: 0,
    bindCount: 0,
  }

  /**
   * Statements seen per kind of session state (session-state/classify.ts), in
   * every mode: SHOW SESSION_STATE.
   */
  readonly sessionState = new Float64Array(KIND_COUNT)

  readonly idle: Server[] = []
  readonly servers = new Set<Server>()
  private readonly waiting = new WaitQueue<PoolClient>()
  /** Servers between open() and the end of their login. */
  private readonly loggingIn = new Set<Server>()
  /** Replication clients whose own server waits for a permit (retried on each tick). */
  private readonly dedicatedWaiting: Dedicated[] = []
  /** Servers running server_check_query before they serve a client. */
  private checking = 0
  /** Our server that is the breaker's half-open probe, while it logs in. */
  private probe: Server | null = null
  private permitLoop = false
  private readonly permits: Permits
  private readonly rebalance: Rebalance
  private readonly breaker: BreakerWords
  private readonly hosts: HostChoice
  private readonly latency: LatencyHistograms | null
  private readonly dbSlot: number

  constructor(
    worker: PoolHost,
    database: DatabaseConfig,
    user: string,
    mode: PoolMode,
    slots: PoolSlots,
  ) {
    this.worker = worker
    this.database = database
    this.user = user
    this.mode = mode
    this.key = poolKey(database.name, user)
    this.label = `${database.name}/${user}`
    const shared = worker.shared
    this.permits = new Permits(
      shared.pool(slots.pool),
      shared.database(slots.databaseSlot),
      shared.user(slots.userSlot),
      worker.id,
    )
    this.rebalance = new Rebalance(this, shared.counters, slots.pool, worker.id)
    this.breaker = shared.breaker(slots.databaseSlot)
    this.hosts = new HostChoice(this.breaker, database, worker.id)
    this.roles = new TargetSession(database, this.breaker)
    this.latency = worker.latency
    this.dbSlot = slots.databaseSlot
  }

  /** The database's slot in shared memory (its semaphore, breaker, histograms). */
  get databaseSlot(): number {
    return this.dbSlot
  }

  /** A start time for recordLatency(): preciseClock(), or 0 with the histograms off. */
  clock(): number {
    return this.latency === null ? 0 : preciseClock()
  }

  /** /metrics' histogram of this pool's database: O(1), no allocation. */
  recordLatency(kind: number, since: number): void {
    if (this.latency !== null)
      this.latency.record(this.dbSlot, this.worker.id, kind, (preciseClock() - since) * 1000)
  }

  /** Servers on their way to serve a waiting client: logging in, or being checked. */
  private get connecting(): number {
    return this.loggingIn.size + this.checking
  }

  // ---- limits (read from the current config at each use: reload changes them) ----

  get poolSize(): number {
    return (
      this.worker.userConfig(this.user)?.poolSize ??
      this.database.poolSize ??
      this.worker.settings.defaultPoolSize
    )
  }

  get reserveSize(): number {
    return (
      this.worker.userConfig(this.user)?.reservePoolSize ??
      this.database.reservePoolSize ??
      this.worker.settings.reservePoolSize
    )
  }

  get minPoolSize(): number {
    return this.database.minPoolSize ?? this.worker.settings.minPoolSize
  }

  private get maxDb(): number {
    return this.database.maxDbConnections ?? this.worker.settings.maxDbConnections
  }

  private get maxUser(): number {
    return (
      this.worker.userConfig(this.user)?.maxUserConnections ??
      this.worker.settings.maxUserConnections
    )
  }

  get waitingCount(): number {
    return this.waiting.count
  }

  /**
   * Anything of the pool still alive in this worker: a server (a closing one
   * still holds its permit), a client waiting, a wait for a permit. A pool in
   * use is never let go ('release-databases').
   */
  get inUse(): boolean {
    return (
      this.servers.size > 0 ||
      this.waitingCount > 0 ||
      this.permitLoop ||
      this.connecting > 0 ||
      this.permits.held() > 0
    )
  }

  /** Let go (its database is freed): no timer of it may run on. */
  dispose(): void {
    this.rebalance.dispose()
  }

  /** Servers between open() and the end of their login (SHOW POOLS sv_login). */
  get loginCount(): number {
    return this.loggingIn.size
  }

  /** When the longest-waiting client started waiting (preciseClock()), 0 if none waits. */
  get oldestWaitingSince(): number {
    return this.waiting.oldestStart
  }

  /** The password, md5 hash or SCRAM keys to log in to PostgreSQL with. */
  serverSecret(): ServerSecret {
    const stored =
      this.database.user !== undefined && this.database.password !== undefined
        ? this.database.password
        : (this.worker.authUsers[this.user] ??
          this.worker.queriedSecret(this.database.name, this.user))
    if (stored === undefined || stored === '')
      return { password: null, md5: null, scramKeys: this.scramKeys }
    if (isMd5Hash(stored)) return { password: null, md5: stored, scramKeys: null }
    if (isScramSecret(stored)) return { password: null, md5: null, scramKeys: this.scramKeys }
    return { password: stored, md5: null, scramKeys: null }
  }

  // ---- permits (pool/permits.ts) -----------------------------------------------

  /**
   * A permit of the pool, and of its database and user where those are
   * limited: the mask of what was taken, 0 if a limit is reached. At the
   * database's or user's limit, an idle server of another pool of ours is
   * closed for us.
   */
  private tryPermit(poolLimit: number): number {
    const mask = this.permits.take(poolLimit, this.maxDb, this.maxUser)
    const refusedBy = this.permits.refusedBy
    if (mask === 0 && refusedBy !== PERMIT_POOL) this.worker.evictFor(this, refusedBy)
    return mask
  }

  /** The semaphore behind a PERMIT_* bit, and the limit a new server must stay within. */
  private limitOf(permit: number): { sem: Semaphore; limit: number } {
    const sem = this.permits.semaphore(permit)
    if (permit === PERMIT_DATABASE) return { sem, limit: this.maxDb }
    if (permit === PERMIT_USER) return { sem, limit: this.maxUser }
    return { sem, limit: this.poolSize + (this.reserveDue() ? this.reserveSize : 0) }
  }

  /**
   * Another pool at this database's or user's limit waits for a permit, in
   * any worker (it is parked on the shared semaphore): a server of ours that
   * would idle goes back for it. Two loads of shared memory when no one waits.
   */
  private limitWaiters(): boolean {
    const waiting = this.permits.waitingLimits()
    if (waiting === 0) return false
    // Our own wait, about to end, is not another pool's.
    if (this.permitLoop) return false
    return (
      ((waiting & PERMIT_DATABASE) !== 0 && this.maxDb > 0) ||
      ((waiting & PERMIT_USER) !== 0 && this.maxUser > 0)
    )
  }

  /**
   * Eviction for another pool of this worker at the database's or user's
   * limit: closes the server idle longest. Whether there was one.
   */
  evictIdle(): boolean {
    if (this.idle.length === 0) return false
    this.idle.shift()!.close()
    this.idleTaken()
    return true
  }

  private releasePermit(mask: number): void {
    this.permits.release(mask)
  }

  // ---- clients ----------------------------------------------------------------

  /**
   * A client needs a server. Our own idle servers first (newest first, as
   * PgBouncer does by default); otherwise the client queues in arrival order and
   * the pool grows if the shared limits allow, or waits for a permit.
   */
  request(client: PoolClient): void {
    const now = this.worker.now
    const roundRobin = this.worker.settings.serverRoundRobin
    while (this.idle.length > 0) {
      // server_round_robin: the one idle longest, so load spreads over all of them.
      const server = roundRobin ? this.idle.shift()! : this.idle.pop()!
      this.idleTaken()
      if (
        !server.isReusable(now) ||
        (this.roles.attrs !== 0 && !this.roles.fits(server.hostIndex))
      ) {
        server.close()
        continue
      }
      if (needsCheck(this.worker.settings, server, now)) {
        // The client waits for the check; the checked server comes back through release().
        this.check(server)
        break
      }
      this.link(server, client, 0)
      return
    }
    // Waiting is the slow path: an exact clock for SHOW STATS' wait time is affordable here.
    const start = preciseClock()
    client.waitingSince = Math.floor(start)
    this.waiting.push(client, start)
    this.rebalance.publishWaiting()
    this.grow()
  }

  /** The clients waiting, oldest first (a copy: the janitor may drop some). */
  waitingClients(): PoolClient[] {
    return this.waiting.list()
  }

  /**
   * A replication client (PgBouncer 1.23): a server of its own, opened with its
   * startup parameters and linked to it once logged in; it counts toward the
   * pool's limits as any server does and is closed when the client goes.
   */
  openDedicated(dedicated: Dedicated): void {
    if (this.paused) {
      this.dedicatedWaiting.push(dedicated)
      return
    }
    const permits = this.tryPermit(this.poolSize + (this.reserveDue() ? this.reserveSize : 0))
    if (permits === 0) {
      this.dedicatedWaiting.push(dedicated)
      // An idle server of the pool makes room, as PgBouncer evicts one for a
      // replication connection; its permit comes back in serverGone.
      if (this.permits.refusedBy === PERMIT_POOL && this.idle.length > 0) this.idle.shift()!.close()
      return
    }
    const server = new Server(this, permits, this.pickHost(true), dedicated)
    this.servers.add(server)
    this.worker.log.debug(
      { server: server.id, pool: this.label, replication: dedicated.replication },
      'opening replication connection',
    )
  }

  private openWaitingDedicated(): void {
    const waiting = this.dedicatedWaiting.splice(0)
    for (const dedicated of waiting) this.openDedicated(dedicated)
  }

  /** A waiting client left (disconnect, timeout): forget it. */
  cancelWait(client: PoolClient): void {
    const d = this.dedicatedWaiting.findIndex((w) => w.client === client)
    if (d >= 0) this.dedicatedWaiting.splice(d, 1)
    if (this.waiting.remove(client)) this.rebalance.publishWaiting()
  }

  private nextWaiting(): PoolClient | null {
    const client = this.waiting.shift()
    if (client === null) return null
    this.rebalance.publishWaiting()
    return client
  }

  /** `waitStart`: when the client began to wait (preciseClock()), 0 if it did not. */
  private link(server: Server, client: PoolClient, waitStart: number): void {
    if (waitStart !== 0) {
      const us = (preciseClock() - waitStart) * 1000
      this.totals.waitUs += us
      this.latency?.record(this.dbSlot, this.worker.id, Latency.wait, us)
    }
    const linkedAt = this.clock()
    this.totals.serverAssignmentCount++
    // The client's request that brought it here started when it began to wait.
    server.link(client, linkedAt, waitStart !== 0 ? waitStart : linkedAt, this.worker.now)
    client.attachServer(server)
  }

  /** Opens servers while clients wait that no server being opened will serve. */
  private grow(): void {
    if (this.paused) return
    if (this.yieldMs() > 0) {
      this.waitForPermit()
      return
    }
    while (this.waitingCount > this.connecting) {
      if (this.breaker.state() !== BreakerState.closed) {
        this.growThroughBreaker()
        return
      }
      const permits = this.tryPermit(this.poolSize + (this.reserveDue() ? this.reserveSize : 0))
      if (permits === 0) {
        this.waitForPermit()
        return
      }
      const host = this.pickHost(false)
      if (host < 0) {
        // No host fits target_session_attrs: clients wait (a failover), the janitor's tick retries.
        this.releasePermit(permits)
        return
      }
      this.open(permits, host)
    }
  }

  /**
   * The circuit breaker of our database is not closed (the coordinator moves
   * it; see coordinator/src/breaker.ts). Half-open: the first pool of any
   * worker to claim it opens one probe, and its own clients wait for the
   * probe's outcome. Otherwise clients waiting with no server on its way get
   * the server's last error now, not at query_wait_timeout.
   */
  private growThroughBreaker(): void {
    if (this.probe !== null) return
    if (this.breaker.state() === BreakerState.halfOpen) {
      // The permit first: a claimed probe must be opened, or no one would ever probe.
      const permits = this.tryPermit(this.poolSize)
      if (permits === 0) {
        this.waitForPermit()
        return
      }
      if (this.breaker.claimProbe()) {
        this.probe = this.open(permits)
        return
      }
      this.releasePermit(permits)
    }
    if (this.connecting === 0 && !this.breaker.clientsWait()) {
      this.failWaiting(this.breakerFailure())
    }
  }

  /**
   * Whether clients keep waiting after a failed login: the database said it is
   * restarting, or it refuses connections within the grace the coordinator
   * gives a restart (its `clients wait` word, breaker.ts).
   */
  private restartWait(kind: number): boolean {
    if (kind === LoginFailureKind.restarting) return true
    return kind === LoginFailureKind.unreachable && this.breaker.clientsWait()
  }

  /**
   * For a client about to be welcomed from cached parameters: the error to
   * refuse it with at login, as PgBouncer's fast-fail does, while the breaker
   * is open and this worker has no idle server for it; null to let it in.
   */
  fastFailError(): Buffer | null {
    if (this.breaker.state() !== BreakerState.open || this.idle.length > 0) return null
    // A restarting database: the client logs in and waits for a server like the others.
    if (this.breaker.clientsWait()) return null
    return this.breakerFailure()
  }

  /** The server's own last error, as the coordinator left it in shared memory. */
  private breakerFailure(): Buffer {
    const last = this.breaker.error()
    if (last !== null) return fatal(last.message, last.sqlstate)
    return this.worker.breakerError(this.database.name, this.breaker.lastErrorSeq())
  }

  private failWaiting(error: Buffer): void {
    for (let c = this.nextWaiting(); c !== null; c = this.nextWaiting()) c.fail(error)
  }

  private reserveDue(): boolean {
    if (this.reserveSize <= 0 || this.waitingCount === 0) return false
    const waited = this.worker.now - this.oldestWaitingSince
    return waited >= this.worker.settings.reservePoolTimeout * 1000
  }

  /**
   * Out of permits: wait on the semaphore's shared word until another worker
   * (or we) give one back. One waiter per pool, not per client.
   */
  private waitForPermit(): void {
    if (this.permitLoop) return
    this.permitLoop = true
    void this.permitWaitLoop().finally(() => {
      this.permitLoop = false
    })
  }

  private async permitWaitLoop(): Promise<void> {
    // Not while the breaker is open: grow() would not take the permit, and the
    // loop would spin on it; the janitor's tick retries meanwhile.
    let idleRounds = 0
    while (
      this.waitingCount > this.connecting &&
      !this.worker.closing &&
      this.breaker.state() === BreakerState.closed
    ) {
      const yieldMs = this.yieldMs()
      if (yieldMs > 0) {
        await sleep(yieldMs)
        continue
      }
      // The wait is on the limit that refused: a free permit of another
      // semaphore would wake us for nothing, at once, again and again.
      const { sem, limit } = this.limitOf(this.permits.refusedBy)
      const got = await sem.acquire(limit, this.worker.id, { timeoutMs: PERMIT_WAIT_MS })
      if (got) sem.release(this.worker.id)
      const before = this.connecting
      // Timed out: limits may have changed (reserve, reload); try the full set.
      this.grow()
      if (this.waitingCount <= this.connecting) return
      // A wake-up that opened nothing (another worker was quicker, or the
      // limits moved): never loop on promises alone, which would starve the
      // thread's event loop. The next round waits on a timer.
      if (got && this.connecting === before && ++idleRounds > 1) {
        idleRounds = 0
        await sleep(PERMIT_WAIT_MS)
      }
    }
  }

  // ---- rebalancing between workers (pool/rebalance.ts) ----------------------------

  private othersWaiting(): number {
    return this.rebalance.othersWaiting()
  }

  private yieldMs(): number {
    return this.rebalance.yieldMs()
  }

  private idleTaken(): void {
    this.rebalance.idleTaken()
  }

  // ---- servers ----------------------------------------------------------------

  open(permits: number, host: number = this.pickHost(true)): Server {
    const server = new Server(this, permits, host)
    this.loggingIn.add(server)
    this.servers.add(server)
    this.worker.log.debug({ server: server.id, pool: this.label }, 'opening server connection')
    return server
  }

  /**
   * The host of the database's list a new server goes to (pool/hosts.ts), by
   * the breakers and, with target_session_attrs, the hosts' roles; -1 when no
   * host fits and none is due to be checked again (clients wait).
   */
  private pickHost(mustOpen: boolean): number {
    return this.hosts.pick(this.database, this.roles, mustOpen, this.worker.now)
  }

  private hostAvailable(): boolean {
    return this.hosts.available(this.database)
  }

  private hostOf(server: Server): number {
    return hostOf(this.database, server.hostIndex)
  }

  serverLoggedIn(server: Server): void {
    const dedicated = server.dedicated as Dedicated | null
    if (dedicated !== null) {
      this.worker.log.info(
        { server: server.id, pool: this.label, backend_pid: server.pid },
        'replication connection ready',
      )
      this.link(server, dedicated.client, 0)
      return
    }
    this.loggingIn.delete(server)
    if (this.probe === server) this.probe = null
    this.lastLoginFailure = null
    // One shared load per login; the coordinator hears only what changes a breaker.
    const host = this.hostOf(server)
    if (
      this.breaker.failures() > 0 ||
      this.breaker.state() !== BreakerState.closed ||
      this.breaker.clientsWait() ||
      (host >= 0 && this.breaker.hostState(host) !== BreakerState.closed)
    ) {
      this.worker.reportLoginOk(this, host)
    }
    if (!this.roles.loggedIn(server.hostIndex, server.params, this.warnRoles)) {
      this.worker.log.info(
        {
          server: server.id,
          pool: this.label,
          host: server.host,
          port: server.port,
          target_session_attrs: this.database.targetSessionAttrs,
        },
        'server does not fit target_session_attrs, closing it',
      )
      server.close()
      return
    }
    if (this.welcomeParams === null) this.welcomeParams = new Map(server.params)
    this.worker.log.info(
      { server: server.id, pool: this.label, backend_pid: server.pid },
      'server connection ready',
    )
    this.release(server)
  }

  private readonly warnRoles = (msg: string): void => {
    this.worker.log.warn({ pool: this.label }, msg)
  }

  /**
   * A logged-in server reported in_hot_standby (PostgreSQL reports it to every
   * session at a promotion): its host's role changes for every worker, and a
   * server that no longer fits is closed when its client releases it.
   */
  serverReportedRole(server: Server, inHotStandby: string): void {
    // Closed, if it no longer fits, where release() and request() check the role.
    this.roles.reported(server.hostIndex, inHotStandby)
  }

  /**
   * PostgreSQL ended a logged-in server in a shutdown or a crash: the logins
   * that follow may be refused for a moment (the restart's gap) and clients
   * wait through it. Marked here at once, so no login of any worker fails
   * its clients before the coordinator hears of it.
   */
  serverRestarting(sqlstate: string, message: string): void {
    if (this.breaker.clientsWait()) return
    this.breaker.setClientsWait(true)
    this.worker.reportRestart(this, sqlstate, message)
  }

  serverLoginFailed(server: Server, failure: LoginFailure): void {
    const dedicated = server.dedicated as Dedicated | null
    if (dedicated !== null) {
      // A refused replication login (no replication right, no hba line for it)
      // says nothing of the database's health: no breaker, only its client.
      this.servers.delete(server)
      this.worker.log.warn(
        { pool: this.label, sqlstate: failure.code, error: failure.message },
        'replication login failed',
      )
      dedicated.client.fail(fatal(Texts.loginFailed, failure.code))
      return
    }
    this.loggingIn.delete(server)
    if (this.probe === server) this.probe = null
    this.servers.delete(server)
    this.lastLoginFailure = { at: Date.now(), failure }
    const { sqlstate, message } = clientError(server.address, failure)
    const host = this.hostOf(server)
    const kind = loginFailureKind(failure)
    // Skipped by the next login of every worker, before the coordinator hears of it.
    if (host >= 0) this.breaker.markHostDown(host)
    if (kind === LoginFailureKind.restarting) this.breaker.setClientsWait(true)
    // The first refusal since the database last took a login: as PgBouncer, its
    // clients wait for it to come back, here within the grace a restart gets
    // (at most server_login_retry; breaker.ts), while the login is tried again.
    else if (kind === LoginFailureKind.unreachable && this.breaker.failures() === 0)
      this.breaker.setClientsWait(true)
    this.worker.reportLoginFailure(this, sqlstate, message, host, kind)
    // The one line about it (the coordinator's breaker says only what it does), a warning as in PgBouncer.
    this.worker.log.warn(
      {
        pool: this.label,
        host: server.host,
        port: server.port,
        sqlstate: failure.code,
        error: failure.message,
      },
      'server login failed',
    )
    if (this.connecting > 0) return
    // Another host of the list may answer: the waiting clients get a server from it.
    if (host >= 0 && this.hostAvailable()) {
      this.grow()
      return
    }
    // A restarting database takes logins again soon: its clients wait for the
    // next try (the janitor's tick, or the breaker's probe).
    if (this.restartWait(kind)) return
    // Clients would otherwise wait for query_wait_timeout on a server that
    // refuses us: they get the server's own error now.
    this.failWaiting(fatal(message, sqlstate))
  }

  /**
   * A server is free again: next waiting client, else give the permit back if
   * another worker waits for one (invariant 3), else keep it idle.
   */
  release(server: Server): void {
    // Transaction time on the janitor's clock (it ticks every 100 ms): most
    // transactions add 0, the few that span a tick add a whole one, and the
    // sum is the true total — without a clock read per transaction. In
    // session mode a link lasts the session: not a transaction's time.
    if (server.client !== null && this.mode !== 'session') {
      this.totals.xactUs += (this.worker.now - server.lastUsed) * 1000
      this.recordLatency(Latency.xact, server.linkedAt)
    }
    if (!server.unlink()) return
    const now = this.worker.now
    if (!server.isReusable(now) || (this.roles.attrs !== 0 && !this.roles.fits(server.hostIndex))) {
      server.close()
      return
    }
    server.idleFrom(now)
    if (this.rebalance.owesPermit()) {
      this.rebalance.handedOver()
      server.close()
      return
    }
    if (this.waitingCount > 0 && needsCheck(this.worker.settings, server, now)) {
      this.check(server)
      return
    }
    // Read before the queue moves on: the next client's wait start.
    const waitStart = this.oldestWaitingSince
    const client = this.nextWaiting()
    if (client !== null) {
      this.link(server, client, waitStart)
      return
    }
    if (this.limitWaiters()) {
      server.close()
      return
    }
    this.idle.push(server)
    if (this.othersWaiting() > 0) this.rebalance.scheduleGiveBack()
  }

  /**
   * The server's socket is fully closed: only now does its permit go back.
   * PostgreSQL drops the backend from pg_stat_activity before it closes the
   * socket, so the pool's size as PostgreSQL sees it never exceeds the limit
   * while a closing backend lingers (invariant 1).
   */
  serverGone(server: Server): void {
    this.releasePermit(server.permits)
    if (this.dedicatedWaiting.length > 0) this.openWaitingDedicated()
    if (this.waitingCount > 0) this.grow()
  }

  serverClosed(server: Server): void {
    if (!this.servers.delete(server)) return
    if (server.checking) this.checking--
    // Closed before its login ended (RECONNECT, reload, shutdown).
    if (this.loggingIn.delete(server)) {
      const host = this.hostOf(server)
      if (this.probe === server) {
        // The breaker waits for this probe's outcome: it stays open, with the error it had.
        this.probe = null
        const last = this.worker.breakerText(this.database.name)
        this.worker.reportLoginFailure(this, last.sqlstate, last.message, host)
      } else if (host >= 0 && this.breaker.hostState(host) === BreakerState.probing) {
        // Perhaps its host's probe: left claimed, the host would never be tried again.
        const last = this.worker.breakerText(this.database.name)
        this.worker.reportLoginFailure(this, last.sqlstate, last.message, host)
      }
    }
    const i = this.idle.indexOf(server)
    if (i >= 0) {
      this.idle.splice(i, 1)
      this.idleTaken()
    }
    const client = server.takeClient()
    if (client !== null) client.serverLost(server)
    if (this.waitingCount > 0) this.grow()
  }

  // ---- server_check_query -------------------------------------------------------

  private check(server: Server): void {
    this.checking++
    server.check(checkStatement(this.worker.settings.serverCheckQuery))
  }

  /** The check query answered: the server serves the next waiting client, or idles. */
  serverChecked(server: Server): void {
    this.checking--
    this.release(server)
  }

  // ---- housekeeping (called by the worker's janitor) ---------------------------

  tick(now: number): void {
    // Most pools of a host with thousands of databases have nothing to look after.
    if (
      this.servers.size === 0 &&
      this.waitingCount === 0 &&
      this.minPoolSize === 0 &&
      this.dedicatedWaiting.length === 0
    )
      return
    const settings = this.worker.settings
    if (this.dedicatedWaiting.length > 0) this.openWaitingDedicated()
    if (this.waitingCount > 0) this.grow()
    // Idle servers past their lifetime or idle timeout, never below min_pool_size.
    const idleTimeout = settings.serverIdleTimeout * 1000
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const server = this.idle[i]
      const tooOld = !server.isReusable(now)
      const tooIdle =
        idleTimeout > 0 &&
        now - server.lastUsed >= idleTimeout &&
        this.permits.used() > this.minPoolSize
      if (tooOld || tooIdle) server.close()
    }
    // Rebalance: another worker's clients wait while our server idles.
    if (this.idle.length > 0 && this.othersWaiting() > 0) this.rebalance.scheduleGiveBack()
    // A pool of another worker waits at this database's or user's limit.
    if (this.idle.length > 0 && this.limitWaiters()) this.evictIdle()
    // A reload made the pool smaller: idle servers above the new size go.
    let excess = this.permits.used() - this.poolSize - this.reserveSize
    while (excess-- > 0 && this.idle.length > 0) this.idle.shift()!.close()
    // min_pool_size, cluster-wide: the semaphore's count is every worker's servers.
    const min = Math.min(this.minPoolSize, this.poolSize)
    if (
      min > 0 &&
      !this.paused &&
      this.connecting === 0 &&
      this.permits.used() < min &&
      this.breaker.state() === BreakerState.closed
    ) {
      const permits = this.tryPermit(min)
      if (permits !== 0) {
        const host = this.pickHost(false)
        if (host >= 0) this.open(permits, host)
        else this.releasePermit(permits)
      }
    }
    if (this.roles.attrs === SessionAttrs.preferStandby && this.servers.size > 0)
      this.backToStandby(now)
  }

  /**
   * prefer-standby served by a primary: now and then a login to a host that
   * may be a standby again. Once one logged in, the primary's servers no
   * longer fit and close as they come free. Without a permit to spare, an
   * idle primary server makes room first.
   */
  private backToStandby(now: number): void {
    if (this.paused || this.connecting > 0 || this.roles.upHost(true) >= 0) return
    let fallback = false
    for (const server of this.servers) {
      if (!this.roles.candidate(server.hostIndex, 0)) fallback = true
    }
    if (!fallback || !this.roles.standbyDue(now)) return
    const permits = this.tryPermit(this.poolSize)
    if (permits === 0) {
      if (this.idle.length > 0) this.idle.shift()!.close()
      return
    }
    const host = this.roles.standbyToTry(now)
    if (host >= 0) this.open(permits, host)
    else this.releasePermit(permits)
  }

  /**
   * A reload: limits come from the new entry from now on. An entry that
   * reaches another server or logs in differently replaces our servers as they
   * come free, never mid-transaction. One that now forces another user is no
   * longer ours: new clients go to that user's pool, this one winds down.
   */
  reconfigure(database: DatabaseConfig, mode: PoolMode): void {
    if (database.user !== this.database.user) {
      this.closeAll()
      return
    }
    const moved = !sameServer(this.database, database)
    this.database = database
    this.roles.reconfigure(database)
    this.mode = mode
    if (moved) {
      this.welcomeParams = null
      this.welcomeTemplates.clear()
      this.closeAll()
    }
  }

  /** Close every server (RECONNECT, shutdown): idle ones now, linked ones when released. */
  closeAll(): void {
    for (const server of [...this.servers]) {
      server.closeWhenFree()
    }
  }

  // ---- admin console ------------------------------------------------------------

  /** PAUSE: clients keep their transactions; every server closes once free, none opens. */
  pause(): void {
    this.paused = true
    this.closeAll()
  }

  resume(): void {
    this.paused = false
    if (this.waitingCount > 0) this.grow()
  }

  /** KILL: every server goes now, linked or not (the pool's clients were dropped first). */
  closeNow(): void {
    for (const server of [...this.servers]) {
      // Linked to the pooler's own client (auth_query): its statement may run.
      if (server.state === 'active') server.abort()
      else server.close()
    }
  }

  /** A client of this pool left: its counts join the pool's totals. */
  retire(client: PoolClient): void {
    const t = this.totals
    t.xactCount += client.xactCount
    t.queryCount += client.queryCount
    t.bytesReceived += client.bytesReceived
    t.bytesSent += client.bytesSent
    t.clientParseCount += client.clientParseCount
    t.bindCount += client.bindCount
  }
}

/** Whether two entries reach the same server the same way: pool sizes may differ. */
function sameServer(a: DatabaseConfig, b: DatabaseConfig): boolean {
  return (
    a.host === b.host &&
    a.hosts.length === b.hosts.length &&
    a.hosts.every((h, i) => h.port === b.hosts[i]!.port) &&
    a.dbname === b.dbname &&
    a.password === b.password &&
    a.connectQuery === b.connectQuery &&
    a.clientEncoding === b.clientEncoding &&
    a.datestyle === b.datestyle &&
    a.timezone === b.timezone &&
    a.applicationName === b.applicationName
  )
}

/** How long a pool out of permits waits on the semaphore before it looks at its limits again. */
const PERMIT_WAIT_MS = 50
