import { Buffer } from 'node:buffer'
import type net from 'node:net'
import { FrameScanner } from '@pgbouncer-cluster/protocol/frame-reader'
import { Latency } from '@pgbouncer-cluster/protocol/latency'
import { FrontendCode, TxStatus } from '@pgbouncer-cluster/protocol/messages'
import { query } from '@pgbouncer-cluster/protocol/serializer'
import { type AdminContext, AdminSession } from './admin.ts'
import { clockNow } from './clock.ts'
import type { DatabaseConfig, PoolMode, Replication, SessionStatePolicy } from './config-types.ts'
import { errorMessage, fatal, SqlState, Texts } from './errors.ts'
import type { ClientSlots, ClientState, LoginClient, LoginHost } from './login/host.ts'
import { Login } from './login/login.ts'
import {
  type ListenBatch,
  listenBatch,
  mayBeListenBatch,
  parseIsCommit,
} from './notify/extended.ts'
import { ClientNotify, listenAnswer, type Notifications } from './notify/hub.ts'
import { type ChannelOp, isCommit, listenStatements, mayBeListen } from './notify/statements.ts'
import { shareVars, syncStatement, type TrackedName, type Vars } from './params.ts'
import type { Pool } from './pool/pool.ts'
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
  CANNOT_FOLLOW,
  classifyParse,
  classifyQuery,
  refusedKind,
} from './session-state/classify.ts'
import { refusedParse, refusedQuery, stateNote } from './session-state/policy.ts'
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
import { HOLD_LIMIT, type HoldPolicy, sizeAt, Unfinished } from './unfinished.ts'

export type { ClientSlots, ClientState } from './login/host.ts'

/**
 * What a client session at work needs of its worker thread: a narrow
 * context, so that client.ts does not import worker.ts (whose PoolerWorker
 * is one). The login's needs are login.ts's LoginHost.
 */
export interface SessionHost extends AdminContext {
  /** The worker's clock (clock.ts), refreshed by the janitor. */
  readonly now: number
  clientClosed(session: ClientSession, admitted: boolean): void
  /** session_state_policy for a login (the user's, the database's or the global one). */
  sessionStatePolicyFor(db: DatabaseConfig, user: string): SessionStatePolicy
  /** A login began or ended: client_login_timeout is the janitor's (janitor.ts). */
  loginStarted(session: ClientSession): void
  loginEnded(session: ClientSession): void
  /** A message of the client's began and did not end in its read, or ended (janitor.ts). */
  unfinishedStarted(session: ClientSession): void
  unfinishedEnded(session: ClientSession): void
  /** LISTEN/NOTIFY in transaction and statement mode (notify/hub.ts). */
  readonly notifications: Notifications
}

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
/** A Query of LISTEN/UNLISTEN only, in transaction or statement mode: the pooler's to answer. */
const ACTION_LISTEN = 4

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
/** The statements of the Query that set ACTION_LISTEN, or the extended-protocol batch. */
let listenOps: ChannelOp[] | null = null
let listenBatchFound: ListenBatch | null = null
function onScannedMessage(type: number, _msg: Buffer | null, end: number, start: number): boolean {
  return scanning.onClientMessage(type, end, start)
}

/**
 * One client connection: startup, authentication, then the pass-through loop
 * that links it to a server for as long as the pool mode says.
 */
export class ClientSession implements ConnectionOwner, HoldPolicy, LoginClient {
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
  /**
   * session_state_policy = pin: the kind of session state that keeps this
   * client's server linked until it leaves ('' while none does).
   */
  pinnedBy = ''
  /** session_state_policy = warn (or pin) has logged for this client. */
  private warnedState = false
  /**
   * session_state_policy = error: the message sent in place of the refused
   * one (session-state/policy.ts), and where the refused one began in its read.
   */
  private refusal: Buffer | null = null
  private refusedAt = 0

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
  /** Until the welcome (and for the admin console's sessions): login.ts. */
  private login: Login | null
  /** The console, once a login to database `pgbouncer` succeeded. */
  private admin: AdminSession | null = null
  /** Took a max_client_conn slot (login.ts). */
  admitted = false
  /** The client-count slots this login holds (max_db/user_client_connections). */
  counted: ClientSlots | null = null
  private pausedServer: Server | null = null
  private readPaused = false
  /** The connection is in TLS. */
  encrypted = false
  /** Came in through the unix socket: no TLS, none required (as PgBouncer). */
  readonly unix: boolean
  /** Writes to the client the kernel has not taken yet (see socket-io.ts). */
  queuedWrites = 0
  /** Once the client has listened in transaction or statement mode: its channels and queue (notify/). */
  notify: ClientNotify | null = null

  constructor(
    worker: SessionHost & LoginHost,
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
    this.login = new Login(this, worker)
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
    if (this.refusal !== null) {
      this.forwardRefused(chunk, end, edits)
      return
    }
    if (this.action === ACTION_LISTEN) {
      this.onListen(chunk, end)
      return
    }
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
   * The scan stopped at a statement session_state_policy refuses: what came
   * before it goes on, then the refusal in its place, then the rest, scanned
   * as a read of its own.
   */
  private forwardRefused(chunk: Buffer, end: number, edits: EditList | null): void {
    const refusal = this.refusal!
    this.refusal = null
    if (this.refusedAt > 0) this.toServer(chunk.subarray(0, this.refusedAt), edits)
    this.forward(refusal)
    if (end < chunk.length && this.state === 'active') this.forward(chunk.subarray(end))
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
        // One test for clients that never listen: the first letter of the text.
        if (
          start === 0 &&
          this.mode !== 'session' &&
          (this.notify !== null || mayBeListen(scanChunk, start, end)) &&
          this.listenQuery(end)
        ) {
          this.action = ACTION_LISTEN
          return true
        }
        if (
          start >= 0 &&
          this.sessionState(
            classifyQuery(scanChunk, start, end, this.pool!.sessionState),
            type,
            start,
            end,
          )
        ) {
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
        // A batch of LISTEN/UNLISTEN through the extended protocol (notify/extended.ts).
        if (
          start === 0 &&
          this.outstanding === 0 &&
          !this.extended &&
          this.mode !== 'session' &&
          this.unfinished === null &&
          (this.notify !== null || mayBeListenBatch(scanChunk, type, start, end, null))
        ) {
          const state = (this.notify ??= new ClientNotify())
          // A transaction's COMMIT through the extended protocol (pgjdbc's commit()).
          if (state.txOps !== null && type === FrontendCode.Parse) {
            state.commitStatus = parseIsCommit(scanChunk, start, end)
              ? (this.server?.txStatus ?? 0)
              : 0
          }
          listenBatchFound = mayBeListenBatch(scanChunk, type, start, end, state.statements)
            ? listenBatch(scanChunk, (state.statements ??= new Map()))
            : null
          if (listenBatchFound !== null) {
            this.action = ACTION_LISTEN
            return true
          }
        }
        if (
          type === FrontendCode.Parse &&
          start >= 0 &&
          this.sessionState(
            classifyParse(scanChunk, start, end, this.pool!.sessionState),
            type,
            start,
            end,
          )
        ) {
          return true
        }
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

  /**
   * A statement's session state, classified (session-state/classify.ts): what
   * cannot follow the client to another server meets session_state_policy in
   * transaction and statement mode. True when the statement is refused.
   */
  private sessionState(mask: number, type: number, start: number, end: number): boolean {
    if ((mask & CANNOT_FOLLOW) === 0 || this.mode === 'session' || this.pinnedBy !== '')
      return false
    const policy = this.worker.sessionStatePolicyFor(this.pool!.database, this.user)
    switch (policy) {
      case 'allow':
        return false
      case 'error':
        this.refusal =
          type === FrontendCode.Query
            ? refusedQuery(mask, this.mode)
            : refusedParse(scanChunk, start, end, mask, this.mode)
        this.refusedAt = start
        return true
      case 'pin':
        this.pinnedBy = refusedKind(mask)
        break
      default:
        if (this.warnedState) return false
        this.warnedState = true
    }
    this.worker.log.warn(
      { client: this.id, db: this.database, user: this.user },
      stateNote(mask, this.mode, policy),
    )
    return false
  }

  /**
   * A Query at the start of the read that may be LISTEN or UNLISTEN: true
   * when it is only those and nothing before it is unanswered, so the pooler
   * answers it. Notes a COMMIT of a transaction that listened.
   */
  private listenQuery(end: number): boolean {
    const chunk = scanChunk
    const state = this.notify
    if (state !== null && state.txOps !== null) {
      state.commitStatus = isCommit(chunk, 0, end) ? (this.server?.txStatus ?? 0) : 0
    }
    if (!mayBeListen(chunk, 0, end)) return false
    if (this.outstanding !== 0 || this.extended || this.unfinished !== null) return false
    listenOps = listenStatements(chunk, 0, end)
    return listenOps !== null
  }

  /**
   * Answers LISTEN/UNLISTEN as PostgreSQL would. Inside a transaction they
   * wait for its COMMIT; outside, the answer waits until the listening
   * server listens to every new channel, so a NOTIFY sent after the answer
   * reaches the client. Reading stops meanwhile; what followed in the read
   * is scanned after the answer.
   */
  private onListen(chunk: Buffer, messageEnd: number): void {
    const batch = listenBatchFound
    listenBatchFound = null
    const ops = batch === null ? listenOps! : batch.ops
    const answers = batch === null ? null : batch.answers
    listenOps = null
    const end = batch === null ? messageEnd : batch.end
    const ready = batch === null || batch.sync
    const rest = end < chunk.length ? chunk.subarray(end) : null
    const hub = this.worker.notifications
    const status = this.server === null ? TxStatus.Idle : this.server.txStatus
    if (status !== TxStatus.Idle) {
      if (status === TxStatus.InTransaction) hub.defer(this, ops)
      this.writeAll(listenAnswer(ops, status, answers, ready))
      // Idle in transaction again, as after the server's own ReadyForQuery (idle_transaction_timeout).
      if (ready) this.idleTxSince = this.worker.now
      if (rest !== null) this.forward(rest)
      return
    }
    let answered = false
    let paused = false
    hub.apply(this, ops, () => {
      answered = true
      if (this.state === 'closed') return
      this.writeAll(listenAnswer(ops, TxStatus.Idle, answers, ready))
      if (paused) resumeReading(this.socket)
      if (rest !== null) this.forward(rest)
    })
    if (!answered) {
      paused = true
      pauseReading(this.socket)
    }
  }

  private requestStarted(): void {
    const now = this.worker.now
    this.queryStart = now
    if (this.xactStart === 0) this.xactStart = now
    // Without a server yet, the pool's link sets the query clock (pool/pool.ts link()).
    const server = this.server
    if (server !== null) server.requestStarted(this.pool!.clock())
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
      server.waitForDrain(this)
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
    if (this.notify !== null) this.worker.notifications.flush(this)
  }

  write(buf: Buffer): void {
    if (this.state !== 'closed') send(this.socket, this, buf)
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
      // Query time on the janitor's clock, as transaction time (pool/pool.ts release()).
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
    if (this.mode === 'session' || this.pinnedBy !== '') return false
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
    server.resetOnRelease(false)
    this.pool!.release(server)
    // At a message boundary, the transaction over: its LISTENs apply, held notifications go out.
    if (this.notify !== null) this.worker.notifications.released(this)
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
      if (this.state === 'welcome') this.login!.sendDedicatedWelcome(server)
      return
    }
    if (this.varsKey !== server.varsKey) {
      const sync = syncStatement(this.vars, server.vars)
      if (sync !== null) server.runOwn(query(sync))
    }
    if (this.state === 'welcome') {
      this.login!.sendWelcome(this.pool!)
      if (this.mode !== 'session' && this.queuedCount === 0) {
        // The server was only needed for its parameters: still as fresh as its login.
        this.server = null
        server.markChecked()
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

  // ---- the login's hand-over (login.ts) ----------------------------------

  /** Bytes of a client not at work: its login's, or the console's. */
  private onLoginData(chunk: Buffer): void {
    if (this.admin !== null) this.admin.onData(chunk)
    else this.login!.onData(chunk)
  }

  adoptSocket(socket: net.Socket, encrypted: boolean): void {
    watch(socket, this)
    this.socket = socket
    if (encrypted) this.encrypted = true
  }

  adoptVars(vars: Vars, key: string): void {
    this.vars = vars
    this.varsKey = key
  }

  startAdmin(ownUser: boolean): void {
    this.worker.loginEnded(this)
    this.admin = new AdminSession(this, ownUser)
    this.admin.start()
  }

  joinPool(pool: Pool): void {
    this.pool = pool
    this.mode = pool.mode
    this.prepared = this.mode !== 'session' && this.worker.settings.maxPreparedStatements > 0
  }

  askForServer(): void {
    this.requested = true
    this.pool!.request(this)
  }

  openDedicated(params: Record<string, string>): void {
    this.mode = 'session'
    this.prepared = false
    this.requested = true
    this.pool!.openDedicated({ client: this, replication: this.replication, params })
  }

  startWork(early: Buffer[] | null, resume: boolean): void {
    // Idle clients are many: what only the login needed goes now.
    this.login = null
    this.worker.loginEnded(this)
    this.state = 'active'
    this.lastRequest = this.worker.now
    if (early === null) return
    if (resume) resumeReading(this.socket)
    for (const chunk of early) this.onData(chunk)
  }

  /** Writes `buf`; true when the kernel took all of it, and `buf` may be written into again. */
  sendWhole(buf: Buffer): boolean {
    return this.state !== 'closed' && send(this.socket, this, buf)
  }

  // ---- the end ----------------------------------------------------------

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
      login.closed()
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
    if (this.notify !== null) this.worker.notifications.leave(this)
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
    server.resetOnRelease(this.mode === 'session', this.pinnedBy !== '')
    this.pool!.release(server)
  }
}

const EMPTY = Buffer.alloc(0)
