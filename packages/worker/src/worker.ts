import { randomFillSync } from 'node:crypto'
import { chmodSync, chownSync, rmSync, statSync } from 'node:fs'
import net from 'node:net'
import { dirname } from 'node:path'
import type { MessagePort } from 'node:worker_threads'
import {
  forwardedSecret,
  issueKey,
  keyPeer,
  keyWorker,
  lookupKey,
  sameSecret,
} from '@pgbouncer-cluster/protocol/cancel-key'
import {
  type ControlMessage,
  decodeControl,
  encodeControl,
  type ShutdownMode,
} from '@pgbouncer-cluster/protocol/control'
import type { LatencyHistograms } from '@pgbouncer-cluster/protocol/latency'
import { poolKey } from '@pgbouncer-cluster/protocol/pool-key'
import { cancelRequest, sslRequest } from '@pgbouncer-cluster/protocol/serializer'
import { SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import { WorkerAdmin } from './admin-state.ts'
import { AuthQuery, type Lookup } from './auth-query.ts'
import { ClientSession, type ClientSlots } from './client.ts'
import { clockNow } from './clock.ts'
import type {
  DatabaseConfig,
  PoolMode,
  SessionStatePolicy,
  TlsSide,
  UserConfig,
  WorkerConfig,
  WorkerData,
  WorkerSettings,
} from './config-types.ts'
import { fatal, SlotError, SqlState, Texts } from './errors.ts'
import { FigurePublisher } from './figures.ts'
import { Janitor } from './janitor.ts'
import { createLogger, flushLogger, LogFile, type Logger } from './log.ts'
import { Notifications } from './notify/hub.ts'
import { trackParameters } from './params.ts'
import { PeerForwarder } from './peer.ts'
import { PERMIT_DATABASE, Pool, type PoolSlots } from './pool/pool.ts'
import type { Server } from './server.ts'
import { acceptConnections, type ClientSocket, TcpConnection } from './socket-io.ts'
import { releaseStartupMemory } from './startup-memory.ts'
import { connectTls, sslAnswer, type TlsSetups, tlsSetups } from './tls.ts'

/** What this worker holds of one database: its pools, and the keys of its known slots. */
interface DatabaseIndex {
  pools: Set<Pool>
  slotKeys: Set<string>
}

/** The database name of a pool key (poolKey: database, NUL, user). */
function databaseOfKey(key: string): string {
  return key.slice(0, key.indexOf('\u0000'))
}

/** A per-database or per-user limit overrides the global one when above 0; 0 means none. */
function limitOf(own: number | undefined, global: number): number {
  const limit = own !== undefined && own > 0 ? own : global
  return limit > 0 ? limit : NO_LIMIT
}
const NO_LIMIT = 0x7fffffff

/**
 * Why a listener could not be opened, as the one line the command prints; the
 * code stays on it for a program that tells the cases apart.
 */
function listenFailure(where: string, err: NodeJS.ErrnoException): Error {
  const why =
    err.code === 'EADDRINUSE'
      ? where.startsWith('unix')
        ? 'it is in use by another process'
        : 'the port is in use by a process that does not share it (so_reuseport shares a port only among sockets of one user that all set it)'
      : err.code === 'EACCES' || err.code === 'EPERM'
        ? 'permission denied'
        : err.code === 'EADDRNOTAVAIL'
          ? 'no such local address'
          : err.message
  return Object.assign(new Error(`cannot listen on ${where}: ${why}`), { code: err.code })
}

const JANITOR_INTERVAL_MS = 100
/** After a shutdown, how long sockets get to flush before the thread ends. */
const EXIT_GRACE_MS = 100
/** PgBouncer's text while a server login keeps failing, until the server's own error arrives. */
const GENERIC_BREAKER_ERROR = fatal(Texts.serverLoginRetry)

// Cancel keys must be unguessable; drawing them from the CSPRNG in batches
// keeps a crypto call off every connection.
const randoms = new Int32Array(1024)
let randomsLeft = 0
function random32(): number {
  if (randomsLeft === 0) {
    randomFillSync(randoms)
    randomsLeft = randoms.length
  }
  return randoms[--randomsLeft]!
}

/**
 * One worker thread: a listener on the shared port (SO_REUSEPORT: the kernel
 * spreads clients over workers), its client sessions and its own pools of
 * server connections, sized by permits from shared memory.
 */
export class PoolerWorker {
  readonly id: number
  readonly shared: SharedMemory
  /**
   * /metrics' latency histograms; null when PGBOUNCER_CLUSTER_HISTOGRAMS=off,
   * which also spares the hot path its clock reads (for measuring their cost).
   */
  readonly latency: LatencyHistograms | null
  readonly log: Logger
  config: WorkerConfig
  /** Secure contexts for client_tls_* and server_tls_*, rebuilt on reload. */
  tls: TlsSetups
  /** Set by a shutdown: the TCP listener is closed and only the admin console may still log in. */
  closing = false
  /**
   * The worker's clock (clock.ts), refreshed by the janitor: timeouts are
   * seconds, the hot path skips the clock.
   */
  now = clockNow()
  private readonly port: MessagePort
  private readonly listen: { host: string; port: number }
  private readonly unixSocket: { path: string; mode: number; gid: number } | null
  private readonly listenOwner: { uid: number; gid: number } | null
  private unixListener: net.Server | null = null
  private readonly listener: net.Server
  /** Read by the admin console's views (admin-state.ts). */
  readonly pools = new Map<string, Pool>()
  private readonly poolRequests = new Map<string, PromiseWithResolvers<PoolSlots>>()
  /** Per (database, user): the slots of their client counts, asked of the coordinator once. */
  private readonly clientSlotRequests = new Map<string, PromiseWithResolvers<ClientSlots>>()
  private readonly clientSlotsKnown = new Map<string, ClientSlots>()
  /** Pool slots that came with client slots, for the pool a first login is about to open. */
  private readonly poolSlotsKnown = new Map<string, PoolSlots>()
  /**
   * By database name: its pools and the keys of its known slots, so that
   * letting a database go ('release-databases') touches only its own.
   */
  private readonly byDatabase = new Map<string, DatabaseIndex>()
  // The last pool key made: the next login is most often to the same database
  // and user, and a key made again is a new string to hash at each lookup.
  private lastKeyDatabase = ''
  private lastKeyUser = ''
  private lastKey = poolKey('', '')
  /** By session id. */
  readonly sessions = new Map<number, ClientSession>()
  /** Sessions not yet past their login, oldest first (client_login_timeout, janitor.ts). */
  readonly loggingIn = new Set<ClientSession>()
  /** Sessions in the middle of a message (janitor.ts: a client that stops there). */
  readonly unfinished = new Set<ClientSession>()
  /** By cancel key (lookupKey): where a CancelRequest finds its session. */
  private readonly cancelKeys = new Map<number, ClientSession>()
  /** CancelRequests for keys another peer issued ([peers]). */
  readonly peers: PeerForwarder
  private readonly queriedSecrets = new Map<string, string>()
  readonly admin: WorkerAdmin
  /** LISTEN/NOTIFY in transaction and statement mode (notify/hub.ts). */
  readonly notifications: Notifications
  /** Numbers the sessions (their id); the cancel key is drawn apart from it. */
  private nextId = 1
  private clients = 0
  private ticker: NodeJS.Timeout | null = null
  private readonly janitor = new Janitor(this)
  /** Cancels routed to another worker, by ref: what to do when they are over. */
  private readonly routedCancels = new Map<number, () => void>()
  private nextCancelRef = 0
  /** CancelRequests on their way to PostgreSQL, by send time (cancel_wait_timeout). */
  readonly cancels = new Map<net.Socket, number>()
  private readonly figures: FigurePublisher
  /** Connections accepted while suspended, waiting for RESUME. */
  private held: [ClientSocket, boolean][] = []
  /** An 'immediate' shutdown cuts a wait for clients or servers short. */
  private hurry = false
  private shutdownMode: ShutdownMode | null = null
  /** Per database: the error its clients get while its breaker is open, by error sequence. */
  private readonly breakerErrors = new Map<
    string,
    { seq: number; sqlstate: string; message: string; error: Buffer }
  >()

  constructor(data: WorkerData, port: MessagePort) {
    this.id = data.id
    this.shared = new SharedMemory(data.sab)
    this.latency =
      process.env.PGBOUNCER_CLUSTER_HISTOGRAMS === 'off' ? null : this.shared.histograms
    this.figures = new FigurePublisher(this.shared.figures, data.id)
    this.config = data.config
    this.tls = tlsSetups(data.config.tls)
    trackParameters(data.config.settings.trackExtraParameters)
    this.listen = data.listen
    this.unixSocket = data.id === 0 ? data.unixSocket : null
    this.listenOwner = data.listenOwner
    this.port = port
    this.log = createLogger({
      level: data.log.level,
      worker: data.id,
      console: data.log.console,
      logfile: data.log.logfileFd === null ? null : new LogFile(data.log.logfileFd),
      base: data.log.base,
    })
    // Paused: a session reads through socket-io.ts, not through the stream.
    // Once listening, the listener hands over bare handles instead (start()).
    this.listener = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) =>
      this.onConnection(socket, false),
    )
    port.on('message', this.onControl)
    this.admin = new WorkerAdmin(this, (msg) => this.send(msg))
    this.notifications = new Notifications({
      id: this.id,
      log: this.log,
      send: (msg) => this.send(msg),
      listenerPool: (database, user) => this.listenerPool(database, user),
    })
    this.peers = new PeerForwarder({
      log: this.log,
      peers: () => this.config.peers,
      defaultPoolSize: () => this.settings.defaultPoolSize,
      connectTimeout: () => this.settings.serverConnectTimeout,
    })
  }

  get settings(): WorkerSettings {
    return this.config.settings
  }

  get authUsers(): Record<string, string> {
    return this.config.authUsers
  }

  get hasAuthFile(): boolean {
    return Object.keys(this.config.authUsers).length > 0
  }

  get listenPort(): number {
    return this.listen.port
  }

  get maxPacketSize(): number {
    return this.config.settings.maxPacketSize
  }

  async start(): Promise<void> {
    const { host, port } = this.listen
    try {
      await new Promise<void>((resolve, reject) => {
        this.listener.once('error', reject)
        this.listener.listen(
          { host, port, reusePort: true, backlog: this.settings.listenBacklog },
          () => {
            this.listener.off('error', reject)
            resolve()
          },
        )
      })
    } catch (err) {
      // The coordinator says this once, as the reason the pooler cannot start.
      throw listenFailure(`${host}:${port}`, err as NodeJS.ErrnoException)
    }
    this.listener.on('error', (err) => {
      this.log.error({ err: err.message }, 'listener error')
    })
    // Accepted clients get no net.Socket (socket-io.ts: TcpConnection).
    acceptConnections(this.listener, (connection) => this.onConnection(connection, false))
    if (this.unixSocket !== null) await this.listenUnix(this.unixSocket)
    this.ticker = setInterval(this.tick, JANITOR_INTERVAL_MS)
    this.openForcedPools()
    releaseStartupMemory()
    // The coordinator hands this socket to `user =` once every worker has bound its own.
    const fd = (this.listener as unknown as { _handle: { fd?: number } | null })._handle?.fd
    this.send({
      type: 'worker-ready',
      worker: this.id,
      port,
      ...(fd !== undefined && fd >= 0 ? { fd } : {}),
    })
  }

  /**
   * The unix socket. The coordinator checked at start that no live process
   * listens on the path; what is there now is ours, left by a worker that
   * died, and is replaced.
   */
  private async listenUnix({
    path,
    mode,
    gid,
  }: {
    path: string
    mode: number
    gid: number
  }): Promise<void> {
    const listener = net.createServer({ pauseOnConnect: true }, (socket) =>
      this.onConnection(socket, true),
    )
    try {
      rmSync(path, { force: true })
      await new Promise<void>((resolve, reject) => {
        listener.once('error', reject)
        listener.listen({ path, backlog: this.settings.listenBacklog }, () => {
          listener.off('error', reject)
          resolve()
        })
      })
    } catch (err) {
      throw listenFailure(`unix socket ${path}`, err as NodeJS.ErrnoException)
    }
    listener.on('error', (err) => {
      this.log.error({ err: err.message }, 'unix socket listener error')
    })
    chmodSync(path, mode)
    // Owned by `user =` as if it had made the file: it may replace and remove it.
    const owner = process.getuid?.() === 0 ? this.listenOwner : null
    if (gid >= 0 || owner !== null)
      chownSync(path, owner?.uid ?? -1, gid >= 0 ? gid : (owner?.gid ?? -1))
    this.unixListener = listener
  }

  /**
   * `unix` says which listener accepted the socket: asking the socket instead
   * (remoteAddress) would make Node keep a peer-address object on every
   * idle client.
   */
  private onConnection(socket: ClientSocket, unix: boolean): void {
    if (this.admin.suspended && !this.closing) {
      // SUSPEND: as PgBouncer stops accepting, the connection waits, unread, for RESUME.
      this.held.push([socket, unix])
      return
    }
    // While a shutdown waits, the unix socket still lets an operator reach the
    // console (as PgBouncer's does); ClientSession refuses every other database.
    if (this.closing && (!unix || this.shutdownMode === 'immediate')) {
      const refused = socket instanceof TcpConnection ? socket.toNetSocket() : socket
      refused.end(fatal(Texts.shuttingDown, SqlState.CannotConnectNow))
      return
    }
    const id = this.nextSocketId()
    // Random keys may clash (with peer_id they have fewer bits of their own): draw again.
    let key = issueKey(this.id, this.settings.peerId, random32(), random32())
    while (this.cancelKeys.has(lookupKey(key.pid, key.secret)))
      key = issueKey(this.id, this.settings.peerId, random32(), random32())
    const session = new ClientSession(this, socket, id, key, unix)
    this.sessions.set(id, session)
    this.cancelKeys.set(lookupKey(key.pid, key.secret), session)
  }

  /**
   * Ids of clients and servers come from one counter, as PgBouncer's do: the
   * worker's number in the top byte keeps them apart from other workers'.
   */
  nextSocketId(): number {
    return ((this.id + 1) << 24) | (this.nextId++ & 0xffffff)
  }

  /** RESUME after SUSPEND: the connections that waited get their sessions. */
  releaseHeld(): void {
    const held = this.held
    this.held = []
    for (const [socket, unix] of held) this.onConnection(socket, unix)
  }

  isDisabled(database: string): boolean {
    return this.admin.isDisabled(database)
  }

  // ---- what sessions and pools ask of the worker ----------------------------

  /** max_client_conn, across the whole cluster. */
  admitClient(): boolean {
    const max = this.settings.maxClientConn
    if (max > 0 && !this.shared.clients().tryAcquire(max, this.id)) return false
    this.clients++
    return true
  }

  /**
   * max_db_client_connections and max_user_client_connections, across the
   * whole cluster. Every login is counted, limit or not (as PgBouncer does),
   * so a limit set by a reload sees the clients already connected. The
   * answer: the slots taken, or which limit refused.
   */
  admitToLimits(
    db: DatabaseConfig,
    user: string,
    exempt = false,
  ): ClientSlots | 'db' | 'user' | Promise<ClientSlots | 'db' | 'user' | SlotError> {
    const slots = this.clientSlotsKnown.get(this.poolKeyOf(db.name, user))
    return slots !== undefined
      ? this.takeClientSlots(db, user, slots, exempt)
      : this.askClientSlots(db, user, exempt)
  }

  /** The first login to a database and user in this thread: the coordinator names their slots. */
  private async askClientSlots(
    db: DatabaseConfig,
    user: string,
    exempt: boolean,
  ): Promise<ClientSlots | 'db' | 'user' | SlotError> {
    const key = poolKey(db.name, user)
    let request = this.clientSlotRequests.get(key)
    if (request === undefined) {
      request = Promise.withResolvers<ClientSlots>()
      this.clientSlotRequests.set(key, request)
      // The pool's slots come with the answer: its user is the entry's forced one, or this one.
      // The console counts its clients as a database (client.ts) but has no pool.
      if (this.isAdminDatabase(db.name))
        this.send({ type: 'client-slot-request', worker: this.id, database: db.name, user })
      else {
        const poolUser = db.user ?? user
        this.send({
          type: 'client-slot-request',
          worker: this.id,
          database: db.name,
          user,
          poolUser,
        })
      }
    }
    let slots: ClientSlots
    try {
      slots = await request.promise
    } catch (err) {
      return err as SlotError
    }
    return this.takeClientSlots(db, user, slots, exempt)
  }

  /** `exempt`: counted, never refused (admin_users on the console, as PgBouncer). */
  private takeClientSlots(
    db: DatabaseConfig,
    user: string,
    slots: ClientSlots,
    exempt: boolean,
  ): ClientSlots | 'db' | 'user' {
    const dbLimit = exempt
      ? NO_LIMIT
      : limitOf(db.maxDbClientConnections, this.settings.maxDbClientConnections)
    const userLimit = exempt
      ? NO_LIMIT
      : limitOf(
          this.config.users[user]?.maxUserClientConnections,
          this.settings.maxUserClientConnections,
        )
    const { databaseSlot, userSlot } = slots
    if (
      databaseSlot >= 0 &&
      !this.shared.databaseClients(databaseSlot).tryAcquire(dbLimit, this.id)
    )
      return 'db'
    if (userSlot >= 0 && !this.shared.userClients(userSlot).tryAcquire(userLimit, this.id)) {
      if (databaseSlot >= 0) this.shared.databaseClients(databaseSlot).release(this.id)
      return 'user'
    }
    return slots
  }

  loginStarted(session: ClientSession): void {
    this.loggingIn.add(session)
  }

  loginEnded(session: ClientSession): void {
    this.loggingIn.delete(session)
  }

  unfinishedStarted(session: ClientSession): void {
    this.unfinished.add(session)
  }

  unfinishedEnded(session: ClientSession): void {
    this.unfinished.delete(session)
  }

  /** Gives back a session's client-count slots, once. */
  releaseCounted(session: ClientSession): void {
    const counted = session.counted
    if (counted === null) return
    session.counted = null
    if (counted.databaseSlot >= 0)
      this.shared.databaseClients(counted.databaseSlot).release(this.id)
    if (counted.userSlot >= 0) this.shared.userClients(counted.userSlot).release(this.id)
  }

  /** A session ended; `admitted` sessions also give back their max_client_conn slot. */
  clientClosed(session: ClientSession, admitted: boolean): void {
    this.sessions.delete(session.id)
    this.cancelKeys.delete(lookupKey(session.pid, session.secret))
    session.pool?.retire(session)
    this.releaseCounted(session)
    if (!admitted) return
    this.clients--
    if (this.settings.maxClientConn > 0) this.shared.clients().release(this.id)
  }

  /** The admin console's virtual database, unless [databases] claims the name. */
  isAdminDatabase(name: string): boolean {
    return name === 'pgbouncer' && !Object.hasOwn(this.config.databases, name)
  }

  /**
   * Whether only this process's OS user (and root) can connect through the
   * unix socket. PgBouncer asks the kernel for a unix client's uid
   * (getpeereid), which Node cannot; the socket file, or a directory on its
   * path, that is ours and shut to group and others tells as much of whoever
   * got through. Asked only by a console login as `pgbouncer` on that socket.
   */
  unixSocketIsPrivate(): boolean {
    if (this.unixSocket === null) return false
    const uid = process.getuid?.() ?? -1
    try {
      const socket = statSync(this.unixSocket.path)
      // Connecting takes write permission on the socket; ACLs are capped by the group bits.
      if (socket.uid === uid && (socket.mode & 0o022) === 0) return true
      for (let dir = dirname(this.unixSocket.path); ; dir = dirname(dir)) {
        const d = statSync(dir)
        if (d.uid === uid && (d.mode & 0o011) === 0) return true
        if (dir === dirname(dir)) return false
      }
    } catch {
      return false
    }
  }

  resolveDatabase(name: string): DatabaseConfig | null {
    const entry = this.config.databases[name]
    if (entry !== undefined) return entry
    // The '*' entry with every key of its own (PgBouncer parses its line for
    // each name asked for): dbname stays the entry's when it gives one.
    const fallback = this.config.fallbackDatabase
    if (fallback === null) return null
    return { ...fallback, name, dbname: fallback.dbname === '*' ? name : fallback.dbname }
  }

  /** Who runs auth_query for this database: its own auth_user, else the global one. */
  authUserFor(db: DatabaseConfig): string | null {
    return db.authUser ?? this.settings.authUser
  }

  /**
   * Looks a user who is not in auth_file up with auth_query, as auth_user, in
   * auth_dbname or the client's database. A secret found is kept, per
   * database, for logging in to PostgreSQL as that user.
   */
  async authQuery(db: DatabaseConfig | null, user: string): Promise<Lookup> {
    // The console (db null) has only the global auth_user and auth_dbname.
    const authUser = db === null ? this.settings.authUser! : this.authUserFor(db)!
    const dbname =
      (db === null ? null : db.authDbname) ??
      this.settings.authDbname ??
      (db === null ? 'pgbouncer' : null)
    if (dbname !== null && this.isAdminDatabase(dbname)) {
      this.log.error(
        { auth_dbname: dbname },
        'cannot use the reserved "pgbouncer" database as an auth_dbname',
      )
      return {
        kind: 'error',
        sqlstate: SqlState.ProtocolViolation,
        message: Texts.configError,
      }
    }
    const authDb = dbname === null ? db : this.resolveDatabase(dbname)
    if (authDb === null) {
      this.log.error({ auth_dbname: dbname }, 'authentication database is not configured')
      return {
        kind: 'error',
        sqlstate: SqlState.ProtocolViolation,
        message: Texts.configError,
      }
    }
    if (this.admin.isDisabled(authDb.name)) {
      return {
        kind: 'error',
        sqlstate: SqlState.ProtocolViolation,
        message: Texts.authDatabaseDisabled(authDb.name),
      }
    }
    let pool: Pool
    try {
      pool = await this.getPool(authDb, authUser)
    } catch (err) {
      const e = err as SlotError
      return { kind: 'error', sqlstate: e.sqlstate, message: e.message }
    }
    const lookup = await new AuthQuery(pool, db?.authQuery ?? this.settings.authQuery, user).run()
    if (lookup.kind === 'error' && lookup.fromQuery) {
      // PgBouncer tells the client no more than that the setup is wrong.
      this.log.error(
        { user, db: authDb.name, sqlstate: lookup.sqlstate, detail: lookup.message },
        'error in auth_query',
      )
      return { kind: 'error', sqlstate: SqlState.ProtocolViolation, message: Texts.configError }
    }
    const key = poolKey(db?.name ?? 'pgbouncer', user)
    if (lookup.kind === 'found' && lookup.secret !== null)
      this.queriedSecrets.set(key, lookup.secret)
    else this.queriedSecrets.delete(key)
    return lookup
  }

  /** PgBouncer's eviction: an idle server of another pool with the same database (or user) is closed. */
  evictFor(pool: Pool, limit: number): boolean {
    const byDatabase = limit === PERMIT_DATABASE
    for (const other of this.pools.values()) {
      if (other === pool) continue
      if (byDatabase ? other.database.name !== pool.database.name : other.user !== pool.user)
        continue
      if (other.evictIdle()) return true
    }
    return false
  }

  /** The secret auth_query last gave for a user of a database. */
  queriedSecret(database: string, user: string): string | undefined {
    return this.queriedSecrets.get(poolKey(database, user))
  }

  userConfig(user: string): UserConfig | undefined {
    return this.config.users[user]
  }

  poolModeFor(db: DatabaseConfig, user: string): PoolMode {
    return this.config.users[user]?.poolMode ?? db.poolMode ?? this.settings.poolMode
  }

  /** session_state_policy: the user's, else the database's, else the global one. */
  sessionStatePolicyFor(db: DatabaseConfig, user: string): SessionStatePolicy {
    return (
      this.config.users[user]?.sessionStatePolicy ??
      db.sessionStatePolicy ??
      this.settings.sessionStatePolicy
    )
  }

  /** The pool for (database, user); its shared slots come from the coordinator once. */
  getPool(db: DatabaseConfig, user: string): Pool | Promise<Pool> {
    const key = this.poolKeyOf(db.name, user)
    const pool = this.pools.get(key)
    if (pool !== undefined) return pool
    const known = this.poolSlotsKnown.get(key)
    if (known !== undefined) return this.createPool(db, user, key, known)
    return this.openPool(db, user)
  }

  private poolKeyOf(database: string, user: string): string {
    if (database !== this.lastKeyDatabase || user !== this.lastKeyUser) {
      this.lastKeyDatabase = database
      this.lastKeyUser = user
      this.lastKey = poolKey(database, user)
    }
    return this.lastKey
  }

  /** The first login to a pool in this thread: the coordinator names its slots. */
  private async openPool(db: DatabaseConfig, user: string): Promise<Pool> {
    const key = poolKey(db.name, user)
    let request = this.poolRequests.get(key)
    if (request === undefined) {
      request = Promise.withResolvers<PoolSlots>()
      this.poolRequests.set(key, request)
      this.send({ type: 'pool-slot-request', worker: this.id, database: db.name, user })
    }
    const slots = await request.promise
    return this.pools.get(key) ?? this.createPool(db, user, key, slots)
  }

  private createPool(db: DatabaseConfig, user: string, key: string, slots: PoolSlots): Pool {
    this.poolSlotsKnown.delete(key)
    const pool = new Pool(this, db, user, this.poolModeFor(db, user), slots)
    pool.paused = this.admin.isPaused(db.name) || this.shutdownMode === 'wait-for-servers'
    this.pools.set(key, pool)
    this.databaseIndex(db.name).pools.add(pool)
    return pool
  }

  private databaseIndex(name: string): DatabaseIndex {
    let index = this.byDatabase.get(name)
    if (index === undefined) {
      index = { pools: new Set(), slotKeys: new Set() }
      this.byDatabase.set(name, index)
    }
    return index
  }

  /** A pool of the database to lend the notification listener its login: the user's, else any. */
  private listenerPool(database: string, user: string): Pool | null {
    const index = this.byDatabase.get(database)
    if (index === undefined) return null
    let any: Pool | null = null
    for (const pool of index.pools) {
      if (pool.user === user) return pool
      any ??= pool
    }
    return any
  }

  /**
   * The coordinator would free an unused automatic database (pool-slots.ts):
   * its pools and slots are let go here, unless anything of it still lives
   * in this worker. Every session of the database is counted in its client
   * slot from its admission to its close, and a login on its way waits for
   * an answer to its slot request; a pool is in use while it has a server
   * (a closing one holds its permit), a waiting client or a wait for a permit.
   * Once let go, nothing here refers to the slots, which may then count for
   * another database: the next login to this one asks for slots again.
   */
  private releaseDatabase(name: string): boolean {
    const kept = (why: string) => {
      this.log.debug({ database: name, reason: why }, 'automatic database still in use here')
      return false
    }
    for (const key of this.poolRequests.keys())
      if (databaseOfKey(key) === name) return kept('a login waits for its pool slot')
    for (const key of this.clientSlotRequests.keys())
      if (databaseOfKey(key) === name) return kept('a login waits for its client slots')
    if (this.notifications.listeners.has(name)) return kept('its notification listener runs here')
    const index = this.byDatabase.get(name)
    if (index !== undefined) {
      for (const pool of index.pools) if (pool.inUse) return kept(`pool ${pool.user} in use`)
      for (const key of index.slotKeys) {
        const slot = this.clientSlotsKnown.get(key)?.databaseSlot ?? -1
        if (slot >= 0 && this.shared.databaseClients(slot).held(this.id) > 0)
          return kept('a client is connected')
      }
      for (const pool of index.pools) {
        pool.dispose()
        this.pools.delete(pool.key)
      }
      for (const key of index.slotKeys) {
        this.clientSlotsKnown.delete(key)
        this.poolSlotsKnown.delete(key)
      }
      this.byDatabase.delete(name)
    }
    this.breakerErrors.delete(name)
    for (const key of this.queriedSecrets.keys()) {
      if (databaseOfKey(key) === name) this.queriedSecrets.delete(key)
    }
    return true
  }

  /**
   * Feeds the coordinator's circuit breaker; sqlstate and message as clients
   * see them. `host`: the index in the database's host list, when it has one.
   */
  reportLoginFailure(
    pool: Pool,
    sqlstate: string,
    message: string,
    host = -1,
    kind?: number,
  ): void {
    const msg: Extract<ControlMessage, { type: 'server-login-failed' }> = {
      type: 'server-login-failed',
      worker: this.id,
      database: pool.database.name,
      user: pool.user,
      sqlstate,
      message,
    }
    if (kind !== undefined) msg.kind = kind
    if (host >= 0) {
      msg.host = host
      msg.hosts = pool.database.hosts.length
    }
    this.send(msg)
  }

  /** A login succeeded while the breaker (the database's or its host's) counted failures. */
  reportLoginOk(pool: Pool, host = -1): void {
    const msg: Extract<ControlMessage, { type: 'server-login-ok' }> = {
      type: 'server-login-ok',
      worker: this.id,
      database: pool.database.name,
      user: pool.user,
    }
    if (host >= 0) {
      msg.host = host
      msg.hosts = pool.database.hosts.length
    }
    this.send(msg)
  }

  reportRestart(pool: Pool, sqlstate: string, message: string): void {
    this.send({
      type: 'server-restarting',
      worker: this.id,
      database: pool.database.name,
      user: pool.user,
      sqlstate,
      message,
    })
  }

  /**
   * What a client gets while the breaker of its database is open: the server's
   * last error, or PgBouncer's generic text while that has not arrived yet.
   */
  breakerError(database: string, seq: number): Buffer {
    const known = this.breakerErrors.get(database)
    if (known !== undefined && known.seq >= seq) return known.error
    return GENERIC_BREAKER_ERROR
  }

  /** The last breaker error of a database as text, or PgBouncer's generic one. */
  breakerText(database: string): { sqlstate: string; message: string } {
    const known = this.breakerErrors.get(database)
    return known ?? { sqlstate: SqlState.ProtocolViolation, message: Texts.serverLoginRetry }
  }

  /**
   * A CancelRequest: sent on to the peer whose key it is ([peers]), routed to
   * the worker that owns the key, or carried out here. A key nobody owns is
   * dropped without a word, as PostgreSQL does. `done` runs once the cancel
   * is over: PostgreSQL closed the connection it came on (it has signalled the
   * backend), or it was dropped. Until then the client's cancel connection
   * stays open, as with PostgreSQL and PgBouncer 1.18: libpq waits for that
   * close so that a cancel never lands on the client's next command.
   */
  cancel(pid: number, secret: number, done: () => void): void {
    const peerId = this.settings.peerId
    if (peerId !== 0) {
      const peer = keyPeer(pid)
      if (peer !== peerId) {
        const next = forwardedSecret(secret)
        if (next === null) {
          this.log.debug({ peer }, 'cancel request dropped: its TTL was exhausted')
        } else if (!this.peers.forward(peer, pid, next)) {
          this.log.debug({ peer }, 'cancel request dropped: no such peer')
        }
        // A peer's answer is not waited for.
        done()
        return
      }
    }
    const owner = keyWorker(pid)
    if (owner !== this.id) {
      const ref = ++this.nextCancelRef
      this.routedCancels.set(ref, done)
      this.send({ type: 'cancel', pid, secret, ref, from: this.id })
      return
    }
    const session = this.cancelKeys.get(lookupKey(pid, secret))
    if (
      session === undefined ||
      (peerId === 0 ? session.secret !== secret : !sameSecret(session.secret, secret)) ||
      session.server === null
    ) {
      done()
      return
    }
    const server = session.server
    // The server stays out of the pool until PostgreSQL has taken the cancel,
    // or it could cancel the next client's query instead.
    server.cancelStarted()
    this.cancelServer(server, () => {
      server.cancelDone()
      done()
    })
  }

  /**
   * Sends PostgreSQL a CancelRequest for a server's backend, on a connection
   * of its own to the server's host (or unix socket), with TLS as the server
   * connections use it; `over` runs once, when that connection has closed
   * (PostgreSQL has acted on it) or was dropped (cancel_wait_timeout).
   */
  cancelServer(server: Server, over: () => void): void {
    const address = server.address
    if (address === null) {
      over()
      return
    }
    const request = cancelRequest(server.pid, server.secret)
    const failed = (err: Error) => {
      this.log.warn({ err: err.message }, 'cancel request to server failed')
    }
    // Whichever socket reports its close first (plain or TLS), once.
    let closed = false
    const onClose = () => {
      if (closed) return
      closed = true
      this.cancels.delete(socket)
      over()
    }
    const socket =
      address.path !== undefined
        ? net.connect({ path: address.path })
        : net.connect({ host: address.host, port: address.port })
    this.cancels.set(socket, this.now)
    socket.on('error', failed)
    socket.on('close', onClose)
    const setup = this.tls.server
    // No TLS over a unix socket, as for the server connection itself.
    if (setup === null || address.path !== undefined) {
      socket.on('connect', () => socket.end(request))
      return
    }
    // server_tls_sslmode: the cancel key goes the way the server connections do.
    socket.on('connect', () => socket.write(sslRequest()))
    socket.once('data', (answer: Buffer) => {
      const outcome = sslAnswer(answer, setup.mode)
      if (outcome === 'plain') {
        socket.end(request)
      } else if (outcome instanceof Error) {
        failed(outcome)
        socket.destroy()
      } else {
        const secure = connectTls(socket, setup, address.host)
        secure.on('error', failed)
        secure.on('close', onClose)
        secure.once('secureConnect', () => secure.end(request))
      }
    })
  }

  // ---- control messages from the coordinator -------------------------------

  private send(msg: ControlMessage): void {
    const data = encodeControl(msg)
    this.port.postMessage(data, [data.buffer as ArrayBuffer])
  }

  private readonly onControl = (data: Uint8Array): void => {
    let msg: ControlMessage
    try {
      msg = decodeControl(data)
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'rejected control message')
      return
    }
    switch (msg.type) {
      case 'pool-slot': {
        const key = poolKey(msg.database, msg.user)
        const request = this.poolRequests.get(key)
        this.poolRequests.delete(key)
        request?.resolve({ pool: msg.pool, databaseSlot: msg.databaseSlot, userSlot: msg.userSlot })
        return
      }
      case 'client-slot': {
        const key = poolKey(msg.database, msg.user)
        const slots = { databaseSlot: msg.databaseSlot, userSlot: msg.userSlot }
        this.clientSlotsKnown.set(key, slots)
        const index = this.databaseIndex(msg.database)
        index.slotKeys.add(key)
        if (
          msg.pool !== undefined &&
          msg.poolUser !== undefined &&
          msg.poolUserSlot !== undefined
        ) {
          const poolKeyOfLogin = poolKey(msg.database, msg.poolUser)
          if (!this.pools.has(poolKeyOfLogin)) {
            this.poolSlotsKnown.set(poolKeyOfLogin, {
              pool: msg.pool,
              databaseSlot: msg.databaseSlot,
              userSlot: msg.poolUserSlot,
            })
            index.slotKeys.add(poolKeyOfLogin)
          }
        }
        const request = this.clientSlotRequests.get(key)
        this.clientSlotRequests.delete(key)
        request?.resolve(slots)
        return
      }
      case 'pool-slot-error': {
        // The tables are full: every login waiting for these slots is refused.
        const key = poolKey(msg.database, msg.user)
        const error = new SlotError(msg.message, msg.sqlstate)
        this.poolRequests.get(key)?.reject(error)
        this.poolRequests.delete(key)
        this.clientSlotRequests.get(key)?.reject(error)
        this.clientSlotRequests.delete(key)
        return
      }
      case 'release-databases': {
        const released: string[] = []
        const kept: string[] = []
        for (const name of msg.databases) {
          if (typeof name !== 'string') continue
          ;(this.releaseDatabase(name) ? released : kept).push(name)
        }
        this.send({ type: 'databases-released', worker: this.id, released, kept })
        return
      }
      case 'cancel': {
        const { ref, from } = msg
        this.cancel(msg.pid, msg.secret, () =>
          this.send({ type: 'cancel-done', worker: from, ref }),
        )
        return
      }
      case 'cancel-done': {
        const done = this.routedCancels.get(msg.ref)
        this.routedCancels.delete(msg.ref)
        done?.()
        return
      }
      case 'config':
        this.reconfigure(msg.config as WorkerConfig)
        return
      case 'breaker':
        this.breakerErrors.set(msg.database, {
          seq: msg.seq,
          sqlstate: msg.sqlstate,
          message: msg.message,
          error: fatal(msg.message, msg.sqlstate),
        })
        return
      case 'reconnect':
        for (const pool of this.pools.values()) {
          if (msg.database === undefined || pool.database.name === msg.database) pool.closeAll()
        }
        return
      case 'shutdown':
        void this.shutdown(msg.mode)
        return
      case 'pause':
        if (msg.suspend === 1) this.admin.suspend()
        else this.admin.pause(msg.database)
        return
      case 'resume':
        this.admin.resume(msg.database)
        return
      case 'database':
        if (msg.command === 'kill') this.admin.kill(msg.database)
        else this.admin.disable(msg.database, msg.command === 'disable')
        return
      case 'stats-request':
        this.send(this.admin.stats(msg))
        return
      case 'admin-reply':
        this.admin.onReply(msg)
        return
      case 'notify-listen':
      case 'notify-ready':
      case 'notification':
        this.notifications.onMessage(msg)
        return
      case 'kill-client': {
        const session = this.sessions.get(msg.pid)
        session?.fail(fatal(Texts.adminForcedDisconnect))
        this.send({ type: 'client-killed', id: msg.id, worker: this.id, found: session ? 1 : 0 })
        return
      }
      default:
        return
    }
  }

  private readonly tick = (): void => {
    const now = clockNow()
    this.now = now
    this.janitor.tick(now)
    this.admin.checkDrained()
    this.admin.checkSuspended()
    this.figures.tick(now)
  }

  /**
   * A reloaded configuration. Limits are read from it at each use; a pool whose
   * database entry now reaches another server (or as another user) replaces
   * its servers as they come free. Connected clients stay; a pool whose
   * database left the file keeps serving the clients it has.
   */
  private reconfigure(config: WorkerConfig): void {
    // New server_tls_* settings: servers made with the old ones are replaced as
    // they come free (PgBouncer marks them close_needed).
    const serverTlsChanged = !sameTlsSide(this.config.tls.server, config.tls.server)
    this.config = config
    this.tls = tlsSetups(config.tls)
    for (const pool of this.pools.values()) {
      const db = this.resolveDatabase(pool.database.name)
      if (db !== null) pool.reconfigure(db, this.poolModeFor(db, pool.user))
      if (serverTlsChanged) pool.closeAll()
    }
    this.openForcedPools()
    this.log.info('configuration reloaded')
  }

  /**
   * A database with a forced user and a min_pool_size has its pool before any
   * client comes, so the janitor opens its servers (PgBouncer's
   * check_pool_size); a database a reload adds gets it at once.
   */
  private openForcedPools(): void {
    for (const db of Object.values(this.config.databases)) {
      if (db.user === undefined || (db.minPoolSize ?? this.settings.minPoolSize) <= 0) continue
      if (this.pools.has(poolKey(db.name, db.user))) continue
      Promise.resolve(this.getPool(db, db.user)).catch((err: Error) => {
        this.log.warn({ db: db.name, error: err.message }, 'no pool for min_pool_size')
      })
    }
  }

  /**
   * PgBouncer 1.23+'s shutdown modes. Every mode stops accepting TCP clients
   * at once (the kernel sends the next connection to another process on the
   * port, which is what a rolling restart with so_reuseport relies on).
   * - 'wait-for-clients': connected clients keep working, with no time limit;
   *   done when the last one (console sessions included) has left.
   * - 'wait-for-servers': no server is handed out any more, clients waiting
   *   for one are told at once; done when no transaction is in flight, then
   *   the remaining clients are dropped.
   * - 'immediate': every client is dropped now; also cuts either wait short.
   */
  async shutdown(mode: ShutdownMode): Promise<void> {
    if (this.closing) {
      if (mode === 'immediate') {
        this.hurry = true
        this.shutdownMode = mode
        this.unixListener?.close()
      }
      return
    }
    this.closing = true
    this.shutdownMode = mode
    // Not awaited: close()'s callback waits for every accepted connection to end.
    this.listener.close()
    if (mode === 'immediate') this.unixListener?.close()
    if (mode === 'wait-for-servers') {
      for (const pool of this.pools.values()) pool.pause()
    }
    while (!this.hurry && !this.drained(mode)) {
      await new Promise((r) => setTimeout(r, 20))
    }
    if (mode === 'wait-for-servers' && !this.hurry) {
      // The coordinator ends the wait once every worker got here.
      this.send({ type: 'servers-released', worker: this.id })
      while (!this.hurry) {
        this.drained(mode)
        await new Promise((r) => setTimeout(r, 20))
      }
    }
    this.unixListener?.close()
    for (const session of this.sessions.values())
      session.fail(fatal(Texts.shuttingDown, SqlState.AdminShutdown))
    this.notifications.close()
    for (const pool of this.pools.values()) pool.closeAll()
    if (this.ticker !== null) clearInterval(this.ticker)
    this.figures.close()
    this.log.info('worker stopped')
    flushLogger(this.log)
    this.send({ type: 'worker-stopped', worker: this.id })
    this.port.off('message', this.onControl)
    this.port.close()
    // Dropped clients may keep their end open; their errors have gone out by
    // now, so the thread ends without waiting for them to hang up.
    setTimeout(() => process.exit(0), EXIT_GRACE_MS).unref()
  }

  /** Whether a waiting shutdown may end now. */
  private drained(mode: ShutdownMode): boolean {
    if (mode === 'wait-for-clients') return this.sessions.size === 0
    let busy = false
    for (const session of this.sessions.values()) {
      // In session mode a server is released when its client leaves, as PgBouncer's PAUSE waits.
      if (session.busy || (session.mode === 'session' && session.server !== null)) busy = true
      // PgBouncer's eager disconnect: no server will come for a client that waits for one.
      else if (session.waitingSince !== 0 && session.server === null)
        session.fail(fatal(Texts.shuttingDown, SqlState.AdminShutdown))
    }
    return !busy
  }
}

function sameTlsSide(a: TlsSide | null, b: TlsSide | null): boolean {
  if (a === null || b === null) return a === b
  return (
    a.sslmode === b.sslmode &&
    a.key === b.key &&
    a.cert === b.cert &&
    a.ca === b.ca &&
    a.ciphers === b.ciphers &&
    a.minVersion === b.minVersion &&
    a.maxVersion === b.maxVersion
  )
}
