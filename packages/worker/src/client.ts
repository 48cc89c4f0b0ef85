import { Buffer } from 'node:buffer'
import type net from 'node:net'
import type tls from 'node:tls'
import { FrameReader, FrameScanner } from '@pgbouncer-cluster/protocol/frame-reader'
import { Latency } from '@pgbouncer-cluster/protocol/latency'
import {
  FrontendCode,
  MAX_STARTUP_PACKET_SIZE,
  TxStatus,
} from '@pgbouncer-cluster/protocol/messages'
import {
  authenticationOk,
  negotiateProtocolVersion,
  parameterStatus,
  query,
  setWelcomeKey,
  welcomeFor,
  welcomeTemplate,
} from '@pgbouncer-cluster/protocol/serializer'
import { type AdminContext, AdminSession } from './admin.ts'
import { ClientAuth } from './auth.ts'
import type { Lookup } from './auth-query.ts'
import { clockNow } from './clock.ts'
import type {
  AuthType,
  DatabaseConfig,
  PoolMode,
  Replication,
  WorkerConfig,
} from './config-types.ts'
import { errorMessage, fatal, SlotError, SqlState, Texts } from './errors.ts'
import { matchHba } from './hba.ts'
import {
  parseOptions,
  reportedName,
  shareVars,
  syncStatement,
  type TrackedName,
  trackedName,
  trackedNames,
  type Vars,
} from './params.ts'
import type { Pool } from './pool.ts'
import {
  applyEdits,
  boundStatement,
  EditList,
  type LastBound,
  parseName,
  RESETS_PREPARED,
  resetsPrepared,
  type Statement,
  statementOf,
  targetStatement,
} from './prepared.ts'
import type { Server } from './server.ts'
import {
  type ClientSocket,
  type ConnectionOwner,
  endSocket,
  pauseReading,
  remoteOf,
  resumeReading,
  send,
  sendAll,
  startReading,
  TcpConnection,
  unsuspendReading,
} from './socket-io.ts'
import { type KnownStartup, StartupPackets } from './startup-cache.ts'
import { acceptTls, type TlsSetup, type TlsSetups, tlsRequired } from './tls.ts'
import { HOLD_LIMIT, type HoldPolicy, sizeAt, Unfinished } from './unfinished.ts'

/** Shared-memory slots of a database's and a user's client counts; -1: not counted. */
export interface ClientSlots {
  databaseSlot: number
  userSlot: number
}

/**
 * What a client session needs of its worker thread: a narrow context, so
 * that client.ts does not import worker.ts (whose PoolerWorker is one).
 */
export interface SessionHost extends AdminContext {
  readonly tls: TlsSetups
  /** The worker's clock (clock.ts), refreshed by the janitor. */
  readonly now: number
  /** A shutdown is under way. */
  readonly closing: boolean
  readonly authUsers: Record<string, string>
  readonly hasAuthFile: boolean
  /** The running configuration (auth_hba_file's rules). */
  readonly config: Pick<WorkerConfig, 'hba'>
  /** max_client_conn, across the cluster. */
  admitClient(): boolean
  /**
   * max_db_client_connections / max_user_client_connections, across the
   * cluster. A promise only while the coordinator is asked for the slots.
   */
  admitToLimits(
    db: DatabaseConfig,
    user: string,
    exempt: boolean,
  ): ClientSlots | 'db' | 'user' | Promise<ClientSlots | 'db' | 'user' | SlotError>
  releaseCounted(session: ClientSession): void
  clientClosed(session: ClientSession, admitted: boolean): void
  isAdminDatabase(name: string): boolean
  /** Only this process's OS user (and root) can reach the unix socket (worker.ts). */
  unixSocketIsPrivate(): boolean
  /** DISABLE db: its clients are refused after their login. */
  isDisabled(database: string): boolean
  resolveDatabase(name: string): DatabaseConfig | null
  authUserFor(db: DatabaseConfig): string | null
  authQuery(db: DatabaseConfig | null, user: string): Promise<Lookup>
  /** The pool; a promise only while the coordinator is asked for its slots. */
  getPool(db: DatabaseConfig, user: string): Pool | Promise<Pool>
  /** A login began or ended: client_login_timeout is the janitor's (janitor.ts). */
  loginStarted(session: ClientSession): void
  loginEnded(session: ClientSession): void
  /** A message of the client's began and did not end in its read, or ended (janitor.ts). */
  unfinishedStarted(session: ClientSession): void
  unfinishedEnded(session: ClientSession): void
  /** A CancelRequest: carried out here or routed to the worker that owns the key; `done` once it is over. */
  cancel(pid: number, secret: number, done: () => void): void
}

/** The console's own user, as PgBouncer names it. */
const ADMIN_USER = 'pgbouncer'
/** The console as a database, for its clients' counts (max_db_client_connections). */
const ADMIN_DATABASE: DatabaseConfig = {
  name: 'pgbouncer',
  host: '',
  port: 0,
  hosts: [],
  dbname: 'pgbouncer',
}

export type ClientState = 'startup' | 'auth' | 'welcome' | 'active' | 'admin' | 'closed'

// What the pass-through path must see of a client's stream: the messages that
// earn a ReadyForQuery (Query, Sync, FunctionCall), the extended-protocol
// messages that leave state on the server until the next Sync, and Terminate.
// Bodies are never needed, so nothing of the client's is ever copied.
const CLIENT_FLAGS = new Uint8Array(256)
for (const code of [
  FrontendCode.Query,
  FrontendCode.Sync,
  FrontendCode.FunctionCall,
  FrontendCode.Terminate,
  FrontendCode.Parse,
  FrontendCode.Bind,
  FrontendCode.Execute,
  FrontendCode.Describe,
  FrontendCode.Close,
  FrontendCode.Flush,
]) {
  CLIENT_FLAGS[code] = 1
}

const ACTION_TERMINATE = 1
/** disable_pqexec: a simple Query arrived. */
const ACTION_PQEXEC = 2
/** A Parse of a statement name the client has prepared already (PgBouncer's handle_parse_command). */
const ACTION_NAME_IN_USE = 3

// A net.Socket's events reach the session through one shared function per
// event instead of closures per connection (thousands of idle clients are
// common). A TcpConnection calls its owner instead.
const kSession = Symbol('session')
type SessionSocket = net.Socket & { [kSession]: ClientSession }
function onSocketError(this: SessionSocket, err: Error): void {
  this[kSession].onSocketError(err)
}
function onSocketClose(this: SessionSocket): void {
  this[kSession].onSocketClose()
}
function watch(socket: net.Socket, session: ClientSession): void {
  ;(socket as SessionSocket)[kSession] = session
  socket.on('error', onSocketError)
  socket.on('close', onSocketClose)
}
// Scan callbacks run synchronously inside scan()/push(), one session at a
// time per thread: the session being scanned is passed through this slot.
let scanning: ClientSession
let scanChunk: Buffer
function onScannedMessage(type: number, _msg: Buffer | null, end: number, start: number): boolean {
  return scanning.onClientMessage(type, end, start)
}
function onLoginFrame(type: number, msg: Buffer): boolean {
  return scanning.onLoginMessage(type, msg)
}

/**
 * What a login worked out for its welcome: the same for the next login that
 * sends the same startup packet to the same pool, while the pool's server
 * parameters stay the ones it was built from.
 */
interface WelcomeMemo {
  readonly pool: Pool
  readonly params: Map<string, string>
  /** The client's vars as shared (shareVars), and their key. */
  readonly vars: Vars
  readonly varsKey: string
  readonly template: Buffer
  /**
   * The last welcome sent, reused by the next login with only its key
   * rewritten; null when the kernel did not take it whole, and a queued write
   * still points at it.
   */
  welcome: Buffer | null
}

const startupPackets = new StartupPackets<WelcomeMemo>()

/**
 * What a client needs only until its welcome. The session drops it then:
 * thousands of clients may sit idle, and none of them carries it. (An admin
 * console session keeps it; those are few.)
 */
class Login {
  /** Frames the startup packets, then the authentication messages. */
  reader: FrameReader | null = new FrameReader({
    startup: true,
    maxLength: MAX_STARTUP_PACKET_SIZE,
  })
  /** Bytes a pipelining client sent before our welcome: replayed once it is out. */
  early: Buffer[] | null = null
  auth: ClientAuth | null = null
  /** Answered 'S' to SSLRequest; the handshake starts after this packet. */
  tlsAccepted = false
  forgetHandshake: (() => void) | null = null
  /** Came in (through the unix socket) while a shutdown waits: the console only, as PgBouncer. */
  readonly arrivedClosing: boolean
  /** The database entry; null for the admin console. */
  db: DatabaseConfig | null = null
  /** auth_type, or the method of the hba rule that matched. */
  authType: AuthType = 'trust'
  /** The StartupMessage, as this thread's logins share it (startup-cache.ts). */
  startup: KnownStartup<WelcomeMemo> | null = null
  /** The console's own user `pgbouncer`, come through a private unix socket: an admin. */
  ownUser = false
  /**
   * The database asked for is not configured: the password is checked all the
   * same and only then is `no such database` told (PgBouncer's fake database).
   */
  unknownDatabase = false
  /** A replication client's parameters for its own server (as PgBouncer sends them on). */
  replicationParams: Record<string, string> | null = null

  constructor(arrivedClosing: boolean) {
    this.arrivedClosing = arrivedClosing
  }
}

/**
 * One client connection: startup, authentication, then the pass-through loop
 * that links it to a server for as long as the pool mode says.
 */
export class ClientSession implements ConnectionOwner, HoldPolicy {
  readonly worker: SessionHost
  /**
   * The client's connection: a bare TCP handle as accepted, a net.Socket from
   * the unix socket, a TLS socket once the client asked for TLS.
   */
  socket: ClientSocket
  state: ClientState = 'startup'
  /** Unique in the cluster (the worker's number in the top bits): SHOW CLIENTS' ptr, the logs. */
  readonly id: number
  /** Our BackendKeyData (protocol/cancel-key.ts): it names the worker and the peer, for routing a cancel. */
  readonly pid: number
  readonly secret: number
  user = ''
  database = ''
  /** The startup parameter `replication`: such a client gets a server of its own (PgBouncer 1.23). */
  replication: Replication = 'none'
  pool: Pool | null = null
  mode: PoolMode = 'session'
  server: Server | null = null
  /**
   * Session parameters as the client wants them (startup values, then its own
   * SETs). Written while the client logs in; from its welcome on, an object
   * shared with other clients (shareVars), replaced rather than written when
   * a value changes.
   */
  vars: Vars = {}
  private varsKey = ''
  waitingSince = 0
  // Times on the worker's clock (clock.ts), for SHOW CLIENTS and the janitor
  // (janitor.ts): PgBouncer's connect_time, request_time, xact_start and
  // idle_tx. Stores, never timers, on the hot path.
  readonly connectedAt = clockNow()
  /** When the client last sent bytes. */
  lastRequest = 0
  /** When the transaction's first request went out; 0 outside a transaction. */
  xactStart = 0
  /** When the server said "idle in transaction" and the client has not spoken since; else 0. */
  idleTxSince = 0
  /** The wait (its waitingSince) query_wait_notify was sent for: once per wait, as PgBouncer 1.25. */
  notifiedWait = 0
  bytesSent = 0
  bytesReceived = 0
  queryCount = 0
  xactCount = 0
  clientParseCount = 0
  bindCount = 0

  /** Requests sent to the server that still owe a ReadyForQuery. */
  private outstanding = 0
  /** When the oldest of them was sent (the janitor's clock). */
  private queryStart = 0
  /** Extended-protocol messages sent since the last Sync: the server holds state for them. */
  private extended = false
  // Bytes that arrived before a server was linked. The slots are reused from
  // one transaction to the next: truncating an array is a runtime call in V8.
  // Made at the first request: an idle client never needs them.
  private queued: (Buffer | null)[] | null = null
  private queuedEdits: (EditList | null)[] | null = null
  private queuedCount = 0
  /**
   * Named prepared statements are mapped to the pooler's own names
   * (transaction and statement mode with max_prepared_statements; prepared.ts).
   */
  private prepared = false
  private statements: Map<string, Statement> | null = null
  /** The rewrites found in the read being scanned (prepared.ts). */
  private edits: EditList | null = null
  /** A list written and emptied, for the next read that needs one. */
  private spareEdits: EditList | null = null
  private lastBound: LastBound | null = null
  /** A message begun and not ended: held back, or on its way to the server (unfinished.ts). */
  unfinished: Unfinished | null = null
  private requested = false
  private action = 0
  /** disable_pqexec (not reloadable): only the extended protocol is served. */
  private readonly noPqexec: boolean
  private readonly scanner: FrameScanner
  /** Until the welcome (and for the admin console's sessions): see Login. */
  private login: Login | null
  private pausedServer: Server | null = null
  private readPaused = false
  /** The connection is in TLS. */
  encrypted = false
  /** Came in through the unix socket: no TLS, none required (as PgBouncer). */
  readonly unix: boolean
  /** Writes to the client the kernel has not taken yet (see socket-io.ts). */
  queuedWrites = 0

  constructor(
    worker: SessionHost,
    socket: ClientSocket,
    id: number,
    key: { pid: number; secret: number },
    unix: boolean,
  ) {
    this.worker = worker
    this.socket = socket
    this.id = id
    this.pid = key.pid
    this.secret = key.secret
    this.scanner = new FrameScanner(CLIENT_FLAGS, worker.settings.maxPacketSize)
    this.unix = unix
    const login = new Login(worker.closing)
    this.login = login
    this.noPqexec = worker.settings.disablePqexec
    // TCP_NODELAY is already set, at accept (socket-io.ts) or by the listener's noDelay.
    // tcp_keepidle sets TCP_KEEPIDLE; Node sets TCP_KEEPINTVL and TCP_KEEPCNT itself.
    if (worker.settings.tcpKeepalive) socket.setKeepAlive(true, worker.settings.tcpKeepidle * 1000)
    if (socket instanceof TcpConnection) socket.owner = this
    else watch(socket, this)
    startReading(socket, this, false)
    worker.loginStarted(this)
  }

  /** client_login_timeout ran out (the janitor's check): PgBouncer's text. */
  loginTimedOut(): void {
    this.fail(fatal(this.state === 'welcome' ? Texts.clientLoginTimeout : 'client_login_timeout'))
  }

  /** Linked to a server with a transaction open, a request unanswered or one half-sent. */
  get busy(): boolean {
    const server = this.server
    if (server === null) return false
    return (
      this.outstanding > 0 ||
      this.extended ||
      server.txStatus !== TxStatus.Idle ||
      this.unfinished !== null
    )
  }

  get remote(): string {
    if (this.unix) return 'unix'
    const peer = remoteOf(this.socket)
    return `${peer.address}:${peer.port}`
  }

  // ---- the pass-through loop ------------------------------------------------

  /**
   * Bytes from the client, in a Buffer of their own (socket-io.ts): kept or
   * written as they are.
   */
  onBytes(chunk: Buffer): boolean {
    this.onData(chunk)
    return false
  }

  private onData(bytes: Buffer): void {
    if (this.state !== 'active') {
      if (this.state !== 'closed') this.onLoginData(bytes)
      return
    }
    this.bytesReceived += bytes.length
    this.lastRequest = this.worker.now
    this.idleTxSince = 0
    const unfinished = this.unfinished
    if (unfinished?.held) {
      this.addToHeld(unfinished, bytes)
      return
    }
    this.forward(bytes)
  }

  /** The next read of a message held back: nothing is scanned until its last byte is in. */
  private addToHeld(unfinished: Unfinished, bytes: Buffer): void {
    let whole: Buffer | null
    try {
      whole = unfinished.add(bytes, this.worker.settings.maxPacketSize, this)
    } catch (err) {
      this.failUnfinished(err as Error)
      return
    }
    if (whole === null) return
    this.endUnfinished()
    const rest = unfinished.rest
    this.forward(whole)
    if (rest !== null && this.state === 'active') this.forward(rest)
  }

  /** Scans what the client sent and sends the whole messages on (or queues them for a server). */
  private forward(bytes: Buffer): void {
    let chunk = bytes
    this.action = 0
    this.edits = null
    let end: number
    try {
      scanning = this
      scanChunk = chunk
      end = this.scanner.scan(chunk, 0, onScannedMessage)
    } catch (err) {
      this.fail(fatal((err as Error).message))
      return
    }
    if (!this.scanner.atBoundary) {
      chunk = this.onUnfinished(chunk)
      if (this.state === 'closed') return
    } else if (this.unfinished !== null) this.endUnfinished()
    const edits = this.edits
    if (this.action === ACTION_PQEXEC) {
      // As PgBouncer: the whole packet is refused and the client dropped.
      this.fail(fatal(Texts.pqexecDisallowed))
      return
    }
    if (this.action === ACTION_NAME_IN_USE) {
      // As PgBouncer: answering PostgreSQL's 42P05 in the middle of a pipeline
      // would need the rest of it skipped up to its Sync; the client goes.
      this.fail(fatal(Texts.statementNameInUse))
      return
    }
    if (this.action === ACTION_TERMINATE) {
      // Terminate is ours to act on; the server stays for the next client.
      if (end > 5) this.toServer(chunk.subarray(0, end - 5), edits)
      this.close('client close request', true)
      return
    }
    // Everything was held back: no server is asked for a message not yet whole.
    if (chunk.length > 0) this.toServer(chunk, edits)
  }

  /**
   * The read ended inside a message. A new one is held back when its header
   * is not all there, when the pooler must see it whole (a Parse it rewrites),
   * or when no server is linked and it is small: a client that stops in the
   * middle then holds no server. Otherwise it goes on to the server as it
   * comes. Either way it counts as a request in flight from its first byte.
   * Returns what to forward now.
   */
  private onUnfinished(chunk: Buffer): Buffer {
    const partial = this.scanner.partial!
    const start = partial.start
    // Begun in an earlier read and streamed since then: it goes on.
    if (start < 0) return chunk
    const need = sizeAt(chunk, start)
    const hold = need === 0 || this.holds(partial.type, need)
    let unfinished: Unfinished
    try {
      unfinished = new Unfinished(this.worker.now, hold ? chunk.subarray(start) : null, need)
    } catch (err) {
      this.failUnfinished(err as Error)
      return EMPTY
    }
    if (this.unfinished === null) this.worker.unfinishedStarted(this)
    this.unfinished = unfinished
    if (!hold) return chunk
    // Scanned again, whole, with the read that completes it.
    this.scanner.reset()
    return chunk.subarray(0, start)
  }

  /** Whether a message whose header is in is held back whole rather than streamed. */
  holds(type: number, need: number): boolean {
    return (
      (this.prepared && this.mustSeeWhole(type)) || (this.server === null && need <= HOLD_LIMIT)
    )
  }

  /** A held message's length field refused, or its buffer not to be had. */
  private failUnfinished(err: Error): void {
    this.fail(
      err instanceof RangeError
        ? fatal(Texts.outOfMemory, SqlState.OutOfMemory)
        : fatal(err.message),
    )
  }

  private endUnfinished(): void {
    this.unfinished = null
    this.worker.unfinishedEnded(this)
  }

  /** Named prepared statements the client has (SHOW CLIENTS). */
  get preparedCount(): number {
    return this.statements?.size ?? 0
  }

  private get hasStatements(): boolean {
    return this.statements !== null && this.statements.size > 0
  }

  private mustSeeWhole(type: number): boolean {
    if (type === FrontendCode.Parse) return true
    return (
      this.hasStatements &&
      (type === FrontendCode.Bind || type === FrontendCode.Describe || type === FrontendCode.Close)
    )
  }

  private addEdit(type: number, start: number, end: number, stmt?: Statement, name = ''): void {
    let edits = this.edits
    if (edits === null) {
      edits = this.edits = this.spareEdits ?? new EditList()
      this.spareEdits = null
    }
    edits.add(type, start, end, stmt, name)
  }

  /**
   * A Parse, Bind, Describe or Close seen whole: note what must change for the
   * server. True stops the scan (a name already in use).
   */
  private noteStatement(type: number, start: number, end: number): boolean {
    const chunk = scanChunk
    if (type === FrontendCode.Parse) {
      // The unnamed statement (the name's first byte is its NUL) stays as it is.
      const name = chunk[start + 5] === 0 ? '' : parseName(chunk, start, end)
      if (name !== '') {
        if (this.statements?.has(name)) {
          this.worker.log.error(
            { client: this.id, statement: name },
            `prepared statement '${name}' was already prepared`,
          )
          this.action = ACTION_NAME_IN_USE
          return true
        }
        const stmt = statementOf(chunk, start, end)
        this.clientParseCount++
        ;(this.statements ??= new Map()).set(name, stmt)
        this.addEdit(type, start, end, stmt)
      } else if (this.hasStatements) {
        this.addEdit(type, start, end)
      }
      return false
    }
    if (!this.hasStatements) return false
    const statements = this.statements!
    if (type === FrontendCode.Bind) {
      this.lastBound ??= { name: '', bytes: null }
      const stmt = boundStatement(statements, this.lastBound, chunk, start, end)
      if (stmt !== undefined) {
        this.bindCount++
        this.addEdit(type, start, end, stmt)
      }
      return false
    }
    const name = targetStatement(chunk, start, end)
    if (name === null || name === '') return false
    const stmt = statements.get(name)
    if (stmt === undefined) return false
    if (type === FrontendCode.Close) statements.delete(name)
    this.addEdit(type, start, end, stmt, name)
    return false
  }

  onClientMessage(type: number, end: number, start: number): boolean {
    switch (type) {
      case FrontendCode.Query:
        if (this.noPqexec) {
          this.action = ACTION_PQEXEC
          return true
        }
        if (this.outstanding++ === 0) this.requestStarted()
        if (this.prepared && start >= 0 && resetsPrepared(scanChunk, start, end)) {
          // DEALLOCATE ALL / DISCARD ALL: the server forgets every statement,
          // and so does the client's own list (PgBouncer frees both).
          this.statements?.clear()
          this.addEdit(RESETS_PREPARED, start, end)
        } else if (this.hasStatements) this.addEdit(type, start, end)
        return false
      case FrontendCode.FunctionCall:
        if (this.outstanding++ === 0) this.requestStarted()
        // The end of a request, which the server's ParseCompletes are counted against.
        if (this.hasStatements) this.addEdit(type, start, end)
        return false
      case FrontendCode.Sync:
        if (this.outstanding++ === 0) this.requestStarted()
        this.extended = false
        if (this.hasStatements) this.addEdit(type, start, end)
        return false
      case FrontendCode.Terminate:
        this.action = ACTION_TERMINATE
        return true
      default:
        this.extended = true
        if (
          this.prepared &&
          start >= 0 &&
          type !== FrontendCode.Execute &&
          type !== FrontendCode.Flush
        ) {
          return this.noteStatement(type, start, end)
        }
        return false
    }
  }

  private requestStarted(): void {
    const now = this.worker.now
    this.queryStart = now
    if (this.xactStart === 0) this.xactStart = now
    // Without a server yet, the pool's link sets the query clock (pool.ts link()).
    const server = this.server
    if (server !== null) server.queryClock = this.pool!.clock()
  }

  private toServer(buf: Buffer, edits: EditList | null): void {
    const server = this.server
    if (server !== null) {
      this.writeServer(server, buf, edits)
      return
    }
    if (this.queued === null) {
      this.queued = []
      this.queuedEdits = []
    }
    this.queuedEdits![this.queuedCount] = edits
    this.queued[this.queuedCount++] = buf
    if (!this.requested) {
      this.requested = true
      this.pool!.request(this)
    } else if (this.queuedCount > 1 && this.queuedBytes() > HOLD_LIMIT) {
      // A client that keeps sending while it waits for a server: the kernel
      // holds the rest (attachServer reads on), not this thread's memory.
      pauseReading(this.socket)
    }
  }

  private queuedBytes(): number {
    let n = 0
    for (let i = 0; i < this.queuedCount; i++) n += this.queued![i]!.length
    return n
  }

  /** Our bytes to the server, with the prepared-statement edits made for it. */
  private writeServer(server: Server, buf: Buffer, edits: EditList | null): void {
    let bytes = buf
    if (edits !== null) {
      bytes = applyEdits(buf, edits, server)
      edits.clear()
      this.spareEdits = edits
    }
    if (!server.write(bytes) && !this.readPaused) {
      // Stop reading a client whose server is not draining.
      this.readPaused = true
      pauseReading(this.socket)
      server.drainWaiter = this
    }
  }

  /** The server this client paused for took all its bytes. */
  serverDrained(): void {
    this.readPaused = false
    if (this.state !== 'closed') resumeReading(this.socket)
  }

  /** Server bytes for this client, with backpressure toward the server. */
  forwardFromServer(buf: Buffer, server: Server): void {
    if (!send(this.socket, this, buf) && this.pausedServer === null) {
      this.pausedServer = server
      pauseReading(server.socket)
    }
  }

  /** Everything written to the client is out: a server paused for it may read again. */
  onDrained(): void {
    const server = this.pausedServer
    this.pausedServer = null
    if (server !== null) resumeReading(server.socket)
  }

  write(buf: Buffer): void {
    if (this.state !== 'closed') send(this.socket, this, buf)
  }

  /** Writes `buf`; true when the kernel took all of it, and `buf` may be written into again. */
  private sendWhole(buf: Buffer): boolean {
    return this.state !== 'closed' && send(this.socket, this, buf)
  }

  /** Several messages in one write. */
  writeAll(messages: Buffer[]): void {
    if (this.state !== 'closed') sendAll(this.socket, this, messages)
  }

  /**
   * The server finished a request. True when the server may go back to the
   * pool now: the transaction is over and nothing the client sent is still
   * unanswered or half-sent (invariant 4).
   */
  onReadyForQuery(status: number): boolean {
    if (this.outstanding > 0 && --this.outstanding === 0) {
      // Query time on the janitor's clock, as transaction time (pool.ts release()).
      this.pool!.totals.queryUs += (this.worker.now - this.queryStart) * 1000
      this.pool!.recordLatency(Latency.query, this.server!.queryClock)
    }
    this.queryCount++
    if (status === TxStatus.Idle) {
      this.xactCount++
      if (this.outstanding === 0) this.xactStart = 0
    } else if (this.outstanding === 0) {
      this.idleTxSince = this.worker.now
    }
    if (this.mode === 'session') return false
    // A message held back has not reached the server, which stays clean; one
    // streamed in part has.
    if (this.outstanding > 0 || this.extended || this.unfinished?.held === false) return false
    if (status === TxStatus.Idle) return true
    if (this.mode === 'statement') {
      queueMicrotask(() => this.fail(fatal(Texts.statementModeTransaction)))
    }
    return false
  }

  /** Called by the server right after the ReadyForQuery reached this client. */
  releaseServer(): void {
    const server = this.server!
    this.server = null
    if (this.pausedServer === server) {
      this.pausedServer = null
      resumeReading(server.socket)
    }
    const settings = this.worker.settings
    const reset = settings.serverResetQuery
    server.cleanUp(
      settings.serverResetQueryAlways && reset !== '' ? reset : null,
      settings.maxPreparedStatements,
    )
    this.pool!.release(server)
  }

  /** The pool links a server to this client. */
  attachServer(server: Server): void {
    this.server = server
    this.requested = false
    this.waitingSince = 0
    if (this.state === 'closed') {
      this.detachOnClose(server)
      return
    }
    if (server.dedicated !== null) {
      // A replication connection takes no SET: it was opened with the client's
      // own parameters, and the client hears them from PostgreSQL.
      if (this.state === 'welcome') this.sendWelcome(server)
      return
    }
    if (this.varsKey !== server.varsKey) {
      const sync = syncStatement(this.vars, server.vars)
      if (sync !== null) server.runOwn(query(sync))
    }
    if (this.state === 'welcome') {
      this.sendWelcome()
      if (this.mode !== 'session' && this.queuedCount === 0) {
        // The server was only needed for its parameters: still as fresh as its login.
        this.server = null
        server.checked = true
        const pool = this.pool!
        queueMicrotask(() => pool.release(server))
        return
      }
    }
    if (this.queuedCount === 0) return
    // Reading stopped if the client sent much while it waited (toServer).
    if (!this.readPaused) resumeReading(this.socket)
    const queued = this.queued!
    const queuedEdits = this.queuedEdits!
    for (let i = 0; i < this.queuedCount; i++) {
      this.writeServer(server, queued[i]!, queuedEdits[i] ?? null)
      queued[i] = null
      queuedEdits[i] = null
    }
    this.queuedCount = 0
  }

  /** The server reported a tracked parameter (the client ran SET): remember it. */
  serverReportedVar(name: TrackedName, value: string): void {
    this.share({ ...this.vars, [name]: value })
  }

  private share(vars: Vars): void {
    const shared = shareVars(vars)
    this.vars = shared.vars
    this.varsKey = shared.key
  }

  /** The server died under us. */
  serverLost(server: Server): void {
    if (this.server !== server) return
    this.server = null
    this.fail(fatal(Texts.serverConnCrashed))
  }

  // ---- login --------------------------------------------------------------

  private onLoginData(chunk: Buffer): void {
    if (this.state === 'closed') return
    if (this.admin !== null) {
      this.admin.onData(chunk)
      return
    }
    const login = this.login!
    const reader = login.reader
    if (reader === null) {
      login.early ??= []
      login.early.push(chunk)
      // Sent before the welcome: kept in the kernel, as toServer does, past a bound.
      if (login.early.length > 1 && byteLength(login.early) > HOLD_LIMIT) pauseReading(this.socket)
      return
    }
    try {
      scanning = this
      reader.push(chunk, onLoginFrame)
    } catch (err) {
      const e = err as Error & { sqlstate?: string }
      this.fail(fatal(e.message, e.sqlstate ?? SqlState.ProtocolViolation))
      return
    }
    if (login.tlsAccepted && !this.encrypted) {
      if (reader.takeRemainder().length > 0) {
        // Sent before the handshake, so not protected by it: PostgreSQL and
        // PgBouncer refuse it too, as a man-in-the-middle could have put it there.
        this.fail(fatal(Texts.unencryptedAfterSslRequest))
        return
      }
      this.startTls(this.worker.tls.client!)
      return
    }
    if (this.state === 'welcome' || this.state === 'active' || this.state === 'admin') {
      // Authenticated: what follows is for a server, not for the login reader.
      login.reader = null
      const rest = reader.takeRemainder()
      if (rest.length > 0) this.onLoginData(rest)
    }
  }

  onLoginMessage(type: number, msg: Buffer): boolean {
    if (this.state === 'closed') return true
    const login = this.login!
    if (type === 0) {
      this.onStartupPacket(msg)
    } else if (login.auth !== null) {
      if (type === FrontendCode.Terminate) {
        this.close('client close request')
        return true
      }
      this.authStep(login.auth.next(msg))
    } else {
      this.fail(fatal(`unexpected message '${String.fromCharCode(type)}' during login`))
    }
    // Stop at an accepted SSLRequest: what follows must come through TLS.
    if (login.tlsAccepted && !this.encrypted) return true
    return this.state !== 'startup' && this.state !== 'auth'
  }

  private onStartupPacket(packet: Buffer): void {
    const startup = startupPackets.parse(packet)
    switch (startup.kind) {
      case 'ssl': {
        if (this.encrypted) {
          this.close('SSL req inside SSL')
          return
        }
        const setup = this.worker.tls.client
        if (setup === null || this.unix) {
          this.write(NO_ENCRYPTION)
          return
        }
        // The handshake starts once the login reader has stopped at this
        // packet (onLoginData): nothing may follow it in plain text.
        this.write(ENCRYPTION_ACCEPTED)
        this.login!.tlsAccepted = true
        return
      }
      case 'gssenc':
        // GSSAPI encryption is not offered: the client goes on without it.
        this.write(NO_ENCRYPTION)
        return
      case 'cancel':
        // Nothing more is read; the connection closes once PostgreSQL has
        // taken the cancel, which is what the client waits for.
        pauseReading(this.socket)
        this.worker.cancel(startup.pid, startup.secret, () => this.close(null))
        return
      case 'startup':
        if (
          !this.encrypted &&
          !this.unix &&
          tlsRequired(this.worker.tls.client?.mode ?? 'disable')
        ) {
          this.fail(fatal(Texts.sslRequired))
          return
        }
        this.login!.reader!.startup = false
        this.login!.startup = startup
        this.onStartup(startup.list, startup.minor, startup.protocolOptions)
        return
    }
  }

  private onStartup(params: readonly string[], minor: number, protocolOptions: string[]): void {
    const settings = this.worker.settings
    const ignored = settings.ignoreStartupParameters
    let appName: string | undefined
    // First `replication`: it decides how `options` is read (PgBouncer 1.23).
    let passOn: Record<string, string> | null = null
    for (let i = 0; i < params.length; i += 2) {
      if (params[i] !== 'replication') continue
      this.replication = replicationOf(params[i + 1]!)
      if (this.replication !== 'none') {
        passOn = { replication: this.replication === 'logical' ? 'database' : 'yes' }
      }
    }
    for (let i = 0; i < params.length; i += 2) {
      const key = params[i]!
      const value = params[i + 1]!
      if (key === 'user') this.user = value
      else if (key === 'database') this.database = value
      else if (key === 'application_name') appName = value
      else if (key === 'replication') continue
      else if (passOn !== null && key === 'options') {
        // The server is this client's alone: any options go to it as they are.
        passOn.options = value
      } else if (key === 'options') {
        const parsed = parseOptions(value, ignored)
        if ('error' in parsed) {
          this.fail(fatal(parsed.error))
          return
        }
        Object.assign(this.vars, parsed.vars)
      } else {
        const tracked = trackedName(key)
        if (tracked !== null) {
          this.vars[tracked] = value
          if (passOn !== null) passOn[key] = value
        } else if (!ignored.includes(key) && !ignored.includes(key.toLowerCase())) {
          this.fail(fatal(Texts.unsupportedParameter(key)))
          return
        }
      }
    }
    if (this.database === '') this.database = this.user
    if (settings.applicationNameAddHost) {
      // PgBouncer's form: "<name or app> - <address>:<port>", so a server's
      // pg_stat_activity tells which client a session serves.
      const peer = this.unix ? null : remoteOf(this.socket)
      const where =
        peer === null
          ? `unix:${settings.listenPort}`
          : peer.family === 'IPv6'
            ? `[${peer.address}]:${peer.port}`
            : `${peer.address}:${peer.port}`
      appName = `${appName ?? 'app'} - ${where}`
    }
    if (appName !== undefined) this.vars.application_name = appName
    if (passOn !== null) {
      if (appName !== undefined) passOn.application_name = appName
      this.login!.replicationParams = passOn
    }
    if (minor > 0 || protocolOptions.length > 0) {
      this.write(negotiateProtocolVersion(0, protocolOptions))
    }
    if (!this.worker.admitClient()) {
      this.fail(fatal(Texts.maxClientConn, SqlState.ProtocolViolation))
      return
    }
    this.admitted = true
    const adminConsole = this.worker.isAdminDatabase(this.database)
    const login = this.login!
    if (login.arrivedClosing && !adminConsole) {
      this.fail(fatal(Texts.shuttingDown, SqlState.CannotConnectNow))
      return
    }
    const db = adminConsole ? null : this.worker.resolveDatabase(this.database)
    this.state = 'auth'
    login.db = db
    if (db === null && !adminConsole) {
      // The password first, then `no such database`: the answer tells a
      // stranger nothing about which databases exist.
      login.unknownDatabase = true
      this.authenticate(null)
      return
    }
    this.countAndAuthenticate(db)
  }

  /**
   * max_db_client_connections, max_user_client_connections: checked before
   * the password, as PgBouncer. The console counts as database `pgbouncer`,
   * where admin_users are let in over the limits (and still counted).
   */
  private countAndAuthenticate(db: DatabaseConfig | null): void {
    const settings = this.worker.settings
    // auth_type any logs every client in as the database's forced user.
    const user = settings.authType === 'any' && db?.user ? db.user : this.user
    const admitted = this.worker.admitToLimits(
      db ?? ADMIN_DATABASE,
      user,
      db === null && settings.adminUsers.includes(user),
    )
    // A promise only for the first login to a database and user in this thread.
    if (admitted instanceof Promise) void admitted.then((answer) => this.onAdmitted(db, answer))
    else this.onAdmitted(db, admitted)
  }

  private onAdmitted(
    db: DatabaseConfig | null,
    admitted: ClientSlots | 'db' | 'user' | SlotError,
  ): void {
    if (admitted instanceof SlotError) {
      this.fail(fatal(admitted.message, admitted.sqlstate))
      return
    }
    if (admitted === 'db' || admitted === 'user') {
      this.fail(
        fatal(admitted === 'db' ? Texts.maxDbClientConnections : Texts.maxUserClientConnections),
      )
      return
    }
    this.counted = admitted
    if (this.state === 'closed') {
      // Gone while the slots were looked up: give them back the usual way.
      this.worker.releaseCounted(this)
      return
    }
    this.authenticate(db)
  }

  private authenticate(db: DatabaseConfig | null): void {
    const settings = this.worker.settings
    if (db === null && this.unix && this.user === ADMIN_USER && this.worker.unixSocketIsPrivate()) {
      // PgBouncer lets its own OS user into the console as `pgbouncer` without
      // a password (getpeereid); a private socket is how near Node comes.
      this.login!.ownUser = true
      this.authStep({ kind: 'ok', final: null, scramKeys: null })
      return
    }
    let authType = settings.authType
    if (authType === 'hba') {
      // The first rule of auth_hba_file that fits says how (PgBouncer's hba_eval).
      const rule = matchHba(this.worker.config.hba ?? [], {
        address: this.unix ? null : (this.socket.remoteAddress ?? null),
        tls: this.encrypted,
        database: this.database,
        user: this.user,
        replication: this.replication,
      })
      if (rule === null) {
        this.fail(fatal(Texts.noHbaRule))
        return
      }
      this.worker.log.debug(
        { client: this.pid, file: rule.file, line: rule.line },
        'hba rule matched',
      )
      if (rule.method === 'reject') {
        this.fail(fatal(Texts.loginRejected))
        return
      }
      authType = rule.method === 'password' ? 'plain' : rule.method
    }
    const login = this.login!
    login.authType = authType
    if (authType === 'cert') {
      this.authenticateByCertificate()
      return
    }
    const stored = this.worker.authUsers[this.user]
    if (stored === undefined && PASSWORD_AUTH.has(authType) && !login.unknownDatabase) {
      // Not for a database that does not exist (PgBouncer's fake database).
      const viaQuery = db === null ? this.worker.settings.authUser : this.worker.authUserFor(db)
      if (viaQuery !== null) {
        void this.authenticateByQuery(db)
        return
      }
    }
    if (authType === 'trust' && stored === undefined && this.worker.hasAuthFile) {
      // A user auth_file does not know is not let through to PostgreSQL.
      this.fail(fatal(Texts.trustFailed))
      return
    }
    login.auth = new ClientAuth(
      authType,
      this.user,
      stored,
      this.worker.hasAuthFile,
      settings.scramIterations,
    )
    this.authStep(login.auth.start())
  }

  /**
   * auth_type cert: a TLS client whose certificate (checked against
   * client_tls_ca_file) names the user in its CommonName, as in PgBouncer.
   */
  private authenticateByCertificate(): void {
    const socket = this.socket as unknown as tls.TLSSocket
    const commonName = this.encrypted ? socket.getPeerCertificate().subject?.CN : undefined
    if (commonName !== this.user || !socket.authorized) {
      this.worker.log.info(
        { client: this.id, user: this.user, tls: this.encrypted, cn: commonName ?? null },
        'certificate authentication failed',
      )
      this.fail(fatal(Texts.certificateFailed))
      return
    }
    this.authStep({ kind: 'ok', final: null, scramKeys: null })
  }

  /** Not in auth_file: auth_query says what the password is, then the usual exchange. */
  private async authenticateByQuery(db: DatabaseConfig | null): Promise<void> {
    const lookup = await this.worker.authQuery(db, this.user)
    if (this.state === 'closed') return
    if (lookup.kind === 'error') {
      this.fail(fatal(lookup.message, lookup.sqlstate))
      return
    }
    // An unknown user, or one whose password is NULL, goes through the
    // exchange all the same and fails it: the answer does not tell which.
    const secret = lookup.kind === 'found' ? (lookup.secret ?? undefined) : undefined
    const login = this.login!
    login.auth = new ClientAuth(
      login.authType,
      this.user,
      secret,
      true,
      this.worker.settings.scramIterations,
    )
    this.authStep(login.auth.start())
  }

  private admitted = false
  /** The client-count slots this login holds (max_db/user_client_connections). */
  counted: ClientSlots | null = null

  private authStep(step: ReturnType<ClientAuth['start']>): void {
    if (step.kind === 'send') {
      this.write(step.message)
      return
    }
    if (step.kind === 'fail') {
      this.fail(
        step.empty === true
          ? fatal(Texts.emptyPassword)
          : fatal(Texts.passwordFailed(this.user), SqlState.InvalidPassword),
      )
      return
    }
    const login = this.login!
    login.auth = null
    if (login.unknownDatabase) {
      this.fail(fatal(Texts.noSuchDatabase(this.database)))
      return
    }
    this.state = login.db === null ? 'admin' : 'welcome'
    if (step.final !== null) this.write(step.final)
    if (login.db !== null) {
      this.enterPool(login.db, step.scramKeys)
      return
    }
    // The virtual database `pgbouncer`: the admin console takes the socket over.
    this.worker.loginEnded(this)
    this.admin = new AdminSession(this, login.ownUser)
    this.admin.start()
  }

  private admin: AdminSession | null = null

  private enterPool(
    db: DatabaseConfig,
    scramKeys: { clientKey: Buffer; serverKey: Buffer } | null,
  ): void {
    if (this.worker.isDisabled(db.name)) {
      this.fail(fatal(Texts.databaseDisabled(db.name)))
      return
    }
    const pool = this.worker.getPool(db, db.user ?? this.user)
    // A promise only for the first login to a database and user in this thread.
    if (pool instanceof Promise) {
      void pool.then(
        (opened) => this.joinPool(db, opened, scramKeys),
        (err: Error) =>
          this.fail(fatal(err.message, err instanceof SlotError ? err.sqlstate : undefined)),
      )
      return
    }
    this.joinPool(db, pool, scramKeys)
  }

  private joinPool(
    db: DatabaseConfig,
    pool: Pool,
    scramKeys: { clientKey: Buffer; serverKey: Buffer } | null,
  ): void {
    if (this.state === 'closed') return
    this.pool = pool
    this.mode = pool.mode
    // The pool's copies of the names, so that idle clients share them.
    if (pool.user === this.user) this.user = pool.user
    if (db.name === this.database) this.database = db.name
    this.prepared = this.mode !== 'session' && this.worker.settings.maxPreparedStatements > 0
    if (scramKeys !== null && pool.user === this.user) pool.scramKeys = scramKeys
    if (this.worker.settings.logConnections) {
      this.worker.log.info(
        { client: this.id, remote: this.remote, db: this.database, user: this.user },
        'login',
      )
    }
    // An open breaker answers at once with the server's own last error.
    const refused = pool.fastFailError()
    if (refused !== null) {
      this.fail(refused)
      return
    }
    const passOn = this.login!.replicationParams
    if (passOn !== null) {
      // A server of its own, linked for the whole session, never pooled.
      this.mode = 'session'
      this.prepared = false
      this.requested = true
      pool.openDedicated({ client: this, replication: this.replication, params: passOn })
      return
    }
    if (pool.welcomeParams !== null) {
      this.sendWelcome()
      return
    }
    // The pool has never seen a server: its parameters come from the first one.
    this.requested = true
    pool.request(this)
  }

  /** The welcome: from the pool's parameters, or a replication client's own server's. */
  private sendWelcome(dedicated: Server | null = null): void {
    const login = this.login!
    if (dedicated !== null) {
      const parts: Buffer[] = [authenticationOk()]
      for (const [name, value] of dedicated.params) parts.push(parameterStatus(name, value))
      this.sendWhole(welcomeFor(welcomeTemplate(Buffer.concat(parts)), this.pid, this.secret))
      this.welcomed(login)
      return
    }
    const pool = this.pool!
    const params = pool.welcomeParams!
    // The client's vars come from its startup packet alone, unless
    // application_name_add_host adds its port to them.
    const known = this.worker.settings.applicationNameAddHost ? null : login.startup
    let memo = known === null ? null : known.memo
    if (memo !== null && memo.pool === pool && memo.params === params) {
      this.vars = memo.vars
      this.varsKey = memo.varsKey
    } else {
      const template = this.buildWelcome(pool, params)
      memo = { pool, params, vars: this.vars, varsKey: this.varsKey, template, welcome: null }
      if (known !== null) known.memo = memo
    }
    const last = memo.welcome
    const welcome =
      last !== null
        ? setWelcomeKey(last, this.pid, this.secret)
        : welcomeFor(memo.template, this.pid, this.secret)
    // Kept for the next login, unless a write left queued still points at it.
    memo.welcome = this.sendWhole(welcome) ? welcome : null
    this.welcomed(login)
  }

  /** The welcome is out: the login's leftovers go, what the client sent early is read. */
  private welcomed(login: Login): void {
    // Idle clients are many: what only the login needed goes now.
    this.login = null
    this.worker.loginEnded(this)
    // A login that waited (client limits, auth_query) still holds its reader:
    // what it kept is the start of the client's first request.
    let early = login.early
    const rest = login.reader?.takeRemainder()
    if (rest !== undefined && rest.length > 0) (early ??= []).unshift(rest)
    this.state = 'active'
    this.lastRequest = this.worker.now
    if (early === null) return
    // Reading stopped if the client sent much before its welcome (onLoginData).
    if (login.early !== null) resumeReading(this.socket)
    for (const chunk of early) this.onData(chunk)
  }

  /**
   * Fills in the client's vars from the server's parameters, shares them, and
   * gives the welcome's start for them.
   */
  private buildWelcome(pool: Pool, params: Map<string, string>): Buffer {
    // The client's own wishes show in the welcome; the server is brought in line on link.
    for (const name of trackedNames()) {
      if (this.vars[name] === undefined) {
        const value = params.get(reportedName(name))
        if (value !== undefined) this.vars[name] = value
      }
    }
    this.share(this.vars)
    // AuthenticationOk + ParameterStatus depend only on the pool and the
    // client's vars: built once per combination, not per login, with the end
    // of the welcome after them, where each client's key is written.
    let template = pool.welcomeTemplates.get(this.varsKey)
    if (template === undefined) {
      const parts: Buffer[] = [authenticationOk()]
      for (const [name, value] of params) {
        const tracked = trackedName(name)
        parts.push(parameterStatus(name, tracked !== null ? (this.vars[tracked] ?? value) : value))
      }
      template = welcomeTemplate(Buffer.concat(parts))
      if (pool.welcomeTemplates.size >= 64) pool.welcomeTemplates.clear()
      pool.welcomeTemplates.set(this.varsKey, template)
    }
    return template
  }

  // ---- the end ----------------------------------------------------------

  /** The client asked for TLS and got 'S': the rest of its connection goes through TLS. */
  private startTls(setup: TlsSetup): void {
    let socket = this.socket
    if (socket instanceof TcpConnection) {
      // TLS runs over a net.Socket: one is built on the same handle now.
      socket = socket.toNetSocket()
      watch(socket, this)
      this.socket = socket
    }
    pauseReading(socket)
    const login = this.login!
    login.forgetHandshake = acceptTls(socket, setup, (secure) => {
      login.forgetHandshake = null
      if (secure === null) {
        // A failed handshake or a refused certificate: nothing to tell in plain text.
        this.close(null)
        return
      }
      if (this.state === 'closed') {
        secure.destroy()
        return
      }
      watch(secure, this)
      this.socket = secure
      this.encrypted = true
      startReading(secure, this, false)
    })
  }

  /** Send a FATAL error and close. */
  fail(error: Buffer): void {
    if (this.state === 'closed') return
    this.logPoolerError(error)
    this.write(error)
    this.close(null)
  }

  /** log_pooler_errors: every error the pooler itself sends a client, as PgBouncer logs it. */
  logPoolerError(error: Buffer): void {
    if (!this.worker.settings.logPoolerErrors) return
    this.worker.log.warn(
      { client: this.id, remote: this.remote, db: this.database, user: this.user },
      `pooler error: ${errorMessage(error)}`,
    )
  }

  /** PgBouncer's disconnect with a reason: FATAL (08P01) to the client, the reason in the log. */
  disconnect(reason: string): void {
    if (this.state === 'closed') return
    const error = fatal(reason)
    this.logPoolerError(error)
    this.write(error)
    this.close(reason)
  }

  onSocketError(err: Error): void {
    this.worker.log.debug({ client: this.id, err: err.message }, 'client socket error')
  }

  onSocketClose(): void {
    this.close('client close request')
  }

  /**
   * Ends the session. `terminated`: the client sent Terminate, its last
   * message, and a plain socket then closes at once, as PgBouncer closes it.
   * Otherwise the socket is half-closed and read until the client hangs up
   * too, so that a FATAL just written is not lost to a reset.
   */
  close(reason: string | null, terminated = false): void {
    if (this.state === 'closed') return
    const wasActive = this.state === 'active' || this.state === 'welcome'
    this.state = 'closed'
    const login = this.login
    if (login !== null) {
      this.worker.loginEnded(this)
      login.forgetHandshake?.()
    }
    // Read before the socket goes: a closed handle has no addresses.
    const logged = wasActive && reason !== null && this.worker.settings.logDisconnections
    const remote = logged ? this.remote : ''
    if (terminated && !this.encrypted) {
      // No shutdown, no wait for the end of stream and its callbacks: a
      // connection per transaction saves two system calls and a read.
      this.socket.destroy()
    } else {
      endSocket(this.socket)
      // Read on until the client hangs up too: its end of stream closes the socket.
      unsuspendReading(this.socket)
      resumeReading(this.socket)
    }
    if (this.requested && this.server === null) this.pool?.cancelWait(this)
    const server = this.server
    if (server !== null) this.detachOnClose(server)
    // What a held message kept goes with the client.
    if (this.unfinished !== null) {
      this.unfinished.drop()
      this.endUnfinished()
    }
    this.worker.clientClosed(this, this.admitted)
    if (logged) this.worker.log.info({ client: this.id, remote, reason }, 'closing client')
  }

  /**
   * The client is gone while linked. A clean server goes back (after the reset
   * query in session mode); one with a transaction open or a request in
   * flight is closed, so no later client inherits it (invariant 5).
   */
  private detachOnClose(server: Server): void {
    this.server = null
    if (this.pausedServer === server) {
      this.pausedServer = null
      resumeReading(server.socket)
    }
    if (server.dedicated !== null) {
      // A replication client's own server goes with it (pool.release closes it).
      this.pool!.release(server)
      return
    }
    const clean =
      this.outstanding === 0 &&
      !this.extended &&
      this.unfinished?.held !== false &&
      server.swallow === 0 &&
      server.txStatus === TxStatus.Idle
    if (!clean) {
      // A statement may still run: PostgreSQL is told to stop it (Server.abort).
      if (this.outstanding > 0 || this.extended || server.swallow > 0) server.abort()
      else server.close()
      return
    }
    const settings = this.worker.settings
    const reset = settings.serverResetQuery
    server.cleanUp(
      reset !== '' && (this.mode === 'session' || settings.serverResetQueryAlways) ? reset : null,
      settings.maxPreparedStatements,
    )
    this.pool!.release(server)
  }
}

function byteLength(chunks: Buffer[]): number {
  let n = 0
  for (const chunk of chunks) n += chunk.length
  return n
}

const EMPTY = Buffer.alloc(0)
const NO_ENCRYPTION = Buffer.from('N')
/** auth_type values that check a password; auth_query can supply it. */
const PASSWORD_AUTH = new Set(['plain', 'md5', 'scram-sha-256'])

/**
 * The startup parameter `replication` as PgBouncer reads it: `database` is
 * logical replication, a true boolean physical; anything else none.
 */
function replicationOf(value: string): Replication {
  if (value === 'database') return 'logical'
  return /^(t|tr|tru|true|y|ye|yes|on|1)$/i.test(value) ? 'physical' : 'none'
}
const ENCRYPTION_ACCEPTED = Buffer.from('S')
