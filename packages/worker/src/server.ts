import net from 'node:net'
import { md5Response } from '@pgbouncer-cluster/protocol/auth/md5'
import { ScramClient } from '@pgbouncer-cluster/protocol/auth/scram'
import { FrameReader, FrameScanner } from '@pgbouncer-cluster/protocol/frame-reader'
import { AuthCode, BackendCode, TxStatus } from '@pgbouncer-cluster/protocol/messages'
import {
  parseAuthentication,
  parseBackendKeyData,
  parseErrorFields,
  parseParameterStatus,
  readyForQueryStatus,
} from '@pgbouncer-cluster/protocol/parser'
import {
  passwordMessage,
  query,
  saslInitialResponse,
  saslResponse,
  sslRequest,
  startupMessage,
  terminate,
} from '@pgbouncer-cluster/protocol/serializer'
import { type ServerAddress, serverAddress } from './address.ts'
import type { DatabaseConfig, Replication, WorkerSettings } from './config-types.ts'
import { SqlState } from './errors.ts'
import type { Logger } from './log.ts'
import { type TrackedName, trackedName, type Vars, varsKey } from './params.ts'
import { ParseTracker, type PreparedServer } from './prepared.ts'
import { endWith, pauseReading, send, startReading } from './socket-io.ts'
import { connectTls, sslAnswer, type TlsSetups } from './tls.ts'

export type ServerState = 'login' | 'idle' | 'active' | 'closed'

/** Why a login failed: PostgreSQL's own error fields, or ours when it never answered. */
export interface LoginFailure {
  code: string
  message: string
  detail?: string
  fromServer: boolean
}

// What the pass-through path must see of a server's stream: ReadyForQuery (its
// status byte, the message's last, read in place: statusAt) and ParameterStatus
// (whole, to track the session's vars). Everything else is forwarded without
// being looked at.
const SERVER_FLAGS = new Uint8Array(256)
SERVER_FLAGS[BackendCode.ReadyForQuery] = 1
SERVER_FLAGS[BackendCode.ParameterStatus] = 2
SERVER_FLAGS[BackendCode.ErrorResponse] = 2
// Counted against the Parses sent, to leave out those of the pooler's own (prepared.ts).
SERVER_FLAGS[BackendCode.ParseComplete] = 1

// The code field of the FATAL that ends a backend in a shutdown (57P01,
// "terminating connection due to administrator command") or a crash of
// another backend (57P02): found in place, as errors pass by on their way to
// the client, without parsing the message.
const SHUTDOWN_CODE = Buffer.from('C57P0')
function endedByRestart(msg: Buffer): boolean {
  const at = msg.indexOf(SHUTDOWN_CODE, 5)
  if (at < 0 || (at > 5 && msg[at - 1] !== 0) || msg[at + 6] !== 0) return false
  return msg[at + 5] === 0x31 || msg[at + 5] === 0x32
}

// The chunk being scanned, for the message handlers: scans run one at a time
// per thread, synchronously.
let scanned: Buffer

/**
 * The status of the ReadyForQuery that ends at `end` of the chunk being
 * scanned. Its last byte is in this chunk even when the rest came before.
 */
function statusAt(end: number): number {
  const status = scanned[end - 1]!
  if (status !== TxStatus.Idle && status !== TxStatus.InTransaction && status !== TxStatus.Failed)
    throw new Error(`ReadyForQuery with an unknown status ${status}`)
  return status
}

// What a server sees of the objects around it: small interfaces, so that
// server.ts imports none of them (pool/, client.ts and worker.ts import it).

/** What a server needs of its worker thread. */
export interface ServerHost {
  readonly log: Logger
  readonly settings: WorkerSettings
  readonly tls: TlsSetups
  readonly maxPacketSize: number
  /** The janitor's clock, in ms. */
  readonly now: number
  /**
   * A CancelRequest for the server's backend, the way the server went (its
   * host, socket, TLS); `over` once PostgreSQL has taken it or it was dropped.
   */
  cancelServer(server: Server, over: () => void): void
  /** The next id of the worker's counter, which clients and servers share (SHOW SERVERS' id). */
  nextSocketId(): number
}

/** How the pool logs a server in to PostgreSQL as its user. */
export interface ServerSecret {
  password: string | null
  md5: string | null
  scramKeys: { clientKey: Buffer; serverKey: Buffer } | null
}

/** What a server needs of the pool it belongs to (pool/pool.ts's Pool). */
export interface ServerPool {
  readonly worker: ServerHost
  readonly database: DatabaseConfig
  readonly user: string
  /** SHOW STATS counters the server adds to. */
  readonly totals: { serverParseCount: number }
  serverSecret(): ServerSecret
  serverLoggedIn(server: Server): void
  serverLoginFailed(server: Server, failure: LoginFailure): void
  /** A logged-in server was ended by PostgreSQL's shutdown or crash (57P01, 57P02). */
  serverRestarting(sqlstate: string, message: string): void
  /** A logged-in server reported in_hot_standby: its host's role may have changed. */
  serverReportedRole(server: Server, inHotStandby: string): void
  /** The linked client is done with it (transaction or session over). */
  release(server: Server): void
  serverGone(server: Server): void
  serverClosed(server: Server): void
  /** server_check_query answered: the server may be handed out. */
  serverChecked(server: Server): void
}

/** A server opened for one replication client. */
export interface Dedicated {
  readonly client: LinkedClient
  readonly replication: Replication
  /** The client's startup parameters the server gets as they are (replication, options, ...). */
  readonly params: Record<string, string>
}

/** What a server calls on whoever it is linked to (pool/pool.ts's PoolClient). */
export interface LinkedClient {
  /** A client session's id (SHOW CLIENTS' ptr); 0 for the pooler's own. */
  readonly id: number
  bytesSent: number
  /** The server's ReadyForQuery: true when the server may go back to the pool now. */
  onReadyForQuery(status: number): boolean
  /** The server's bytes up to and including the releasing ReadyForQuery. */
  write(buf: Buffer): void
  /** The server's bytes, with backpressure toward it. */
  forwardFromServer(buf: Buffer, server: Server): void
  /** Right after the releasing ReadyForQuery was written. */
  releaseServer(): void
  /** The server died under it. */
  serverLost(server: Server): void
  /** The server reported a tracked parameter. */
  serverReportedVar(name: TrackedName, value: string): void
}

/** A client that stopped reading until this server takes its bytes. */
export interface DrainWaiter {
  serverDrained(): void
}

/**
 * One connection to PostgreSQL, owned by one worker for its whole life (a
 * socket that has spoken cannot move between threads). It holds one permit of
 * its pool's shared semaphore from before it connects until it is closed.
 */
export class Server implements PreparedServer {
  readonly id: number
  readonly pool: ServerPool
  /** The connection to PostgreSQL; a TLS socket over it once PostgreSQL agreed to TLS. */
  socket: net.Socket
  // A server's state is changed only here, by the methods below (link,
  // unlink, markChecked, closeWhenFree, ...), as PgBouncer changes it only in
  // change_server_state(); the rest of the worker reads it through getters.
  #state: ServerState = 'login'
  get state(): ServerState {
    return this.#state
  }
  #client: LinkedClient | null = null
  get client(): LinkedClient | null {
    return this.#client
  }
  /** ParameterStatus values as the server last reported them. */
  readonly params = new Map<string, string>()
  /** The tracked subset, for the SET on link, and its key (see params.ts). */
  readonly vars: Vars = {}
  varsKey = ''
  pid = 0
  secret = 0
  /** The worker's clock (clock.ts), as the janitor reads it. */
  readonly createdAt: number
  #lastUsed: number
  /** When it was last linked or released (the worker's clock). */
  get lastUsed(): number {
    return this.#lastUsed
  }
  #linkedAt = 0
  /** When the pool linked it to its client (Pool.clock()), for the transaction-time histogram. */
  get linkedAt(): number {
    return this.#linkedAt
  }
  /**
   * When the linked client's oldest unanswered request started (Pool.clock()),
   * for the query-time histogram. Kept here, where servers are few, rather
   * than on the client: a field holding a fraction costs every client a boxed
   * number.
   */
  #queryClock = 0
  get queryClock(): number {
    return this.#queryClock
  }
  #txStatus: number = TxStatus.Idle
  get txStatus(): number {
    return this.#txStatus
  }
  #swallow = 0
  /** ReadyForQuery messages whose reply the pooler asked for itself (SET, reset, connect_query). */
  get swallow(): number {
    return this.#swallow
  }
  #closeNeeded = false
  /** Closing was requested (RECONNECT, reload) while linked: close instead of reuse. */
  get closeNeeded(): boolean {
    return this.#closeNeeded
  }
  /** CancelRequests on their way to PostgreSQL for this server's backend. */
  #cancelsInFlight = 0
  #parked = false
  /** Released while a cancel was in flight: waits out of the pool for it. */
  get parked(): boolean {
    return this.#parked
  }
  #checking = false
  /** Running server_check_query, out of the idle list (pool/pool.ts). */
  get checking(): boolean {
    return this.#checking
  }
  #checked = false
  /** Checked (or logged in) since its last client: serves the next without a check. */
  get checked(): boolean {
    return this.#checked
  }
  /** Writes PostgreSQL has not taken yet (see socket-io.ts). */
  queuedWrites = 0
  /** The client that stopped reading until this server takes its bytes. */
  #drainWaiter: DrainWaiter | null = null
  private readonly scanner: FrameScanner
  private loginReader: FrameReader | null = new FrameReader()
  private scram: ScramClient | null = null
  private connectTimer: NodeJS.Timeout | null = null
  private closeTimer: NodeJS.Timeout | null = null
  /** How long to wait for the hang-up before cancelling again (abort()). */
  private cancelAgainMs = 0
  private segmentStart = 0
  private action = 0
  /** Our SSLRequest awaits PostgreSQL's one-byte answer. */
  private sslPending = false
  /** Prepared statements under our names (prepared.ts). */
  preparedGen = 0
  preparedCount = 0
  get totals(): ServerPool['totals'] {
    return this.pool.totals
  }
  readonly tracker = new ParseTracker()
  /** Where the ParseComplete to leave out starts in the chunk. */
  private dropStart = -1
  /** The start of a ParseComplete split across reads, while one may be left out. */
  private held: Buffer | null = null

  /** Which shared permits this connection holds (pool, database, user). */
  readonly permits: number
  /** Where this connection goes: one entry of the database's host list. */
  readonly hostIndex: number
  readonly host: string
  readonly port: number
  /**
   * The entry's socket or TCP address (address.ts); null for an entry without
   * a host while unix_socket_dir is empty, which fails the login at once.
   */
  readonly address: ServerAddress | null

  /**
   * A replication client's own server (PgBouncer 1.23): opened for it with
   * its startup parameters, linked to it alone, closed when it goes.
   */
  readonly dedicated: Dedicated | null

  constructor(
    pool: ServerPool,
    permits: number,
    hostIndex: number,
    dedicated: Dedicated | null = null,
  ) {
    this.pool = pool
    this.dedicated = dedicated
    this.id = pool.worker.nextSocketId()
    this.permits = permits
    const target = pool.database.hosts[hostIndex]!
    this.hostIndex = hostIndex
    this.host = target.host
    this.port = target.port
    this.createdAt = this.#lastUsed = pool.worker.now
    this.scanner = new FrameScanner(SERVER_FLAGS, pool.worker.maxPacketSize)
    const settings = pool.worker.settings
    const address = serverAddress(target.host, target.port, settings.unixSocketDir)
    this.address = address
    if (address === null) {
      this.socket = new net.Socket()
      process.nextTick(() =>
        this.failLogin({
          code: SqlState.ConnectionFailure,
          message: NO_SOCKET_DIR,
          fromServer: false,
        }),
      )
    } else if (address.path !== undefined) {
      this.socket = net.connect({ path: address.path })
    } else {
      this.socket = net.connect({
        host: address.host,
        port: address.port,
        noDelay: true,
        keepAlive: settings.tcpKeepalive,
        keepAliveInitialDelay: settings.tcpKeepidle * 1000,
      })
    }
    this.socket.on('connect', this.onConnect)
    this.socket.on('error', this.onError)
    this.socket.on('close', this.onClose)
    const timeout = pool.worker.settings.serverConnectTimeout
    if (timeout > 0) {
      this.connectTimer = setTimeout(() => {
        this.failLogin({
          code: SqlState.ConnectionFailure,
          message: `server connect timeout after ${timeout}s`,
          fromServer: false,
        })
      }, timeout * 1000)
    }
  }

  private readonly onConnect = (): void => {
    // Reads land in a buffer of this server's own, so results are forwarded
    // to the client as subarrays of it (see socket-io.ts).
    startReading(this.socket, this, true)
    // As PgBouncer: no TLS over a unix socket, whatever server_tls_sslmode says.
    if (this.pool.worker.tls.server !== null && !this.unix) {
      // server_tls_sslmode: ask first; PostgreSQL answers one byte, S or N.
      this.sslPending = true
      this.write(sslRequest())
      return
    }
    this.sendStartup()
  }

  /** PostgreSQL's answer to our SSLRequest. */
  private onSslAnswer(chunk: Buffer): void {
    this.sslPending = false
    const setup = this.pool.worker.tls.server!
    const outcome = sslAnswer(chunk, setup.mode)
    if (outcome === 'plain') {
      this.sendStartup()
      return
    }
    if (outcome instanceof Error) {
      this.failLogin({
        code: SqlState.ConnectionFailure,
        message: outcome.message,
        fromServer: false,
      })
      return
    }
    const plain = this.socket
    pauseReading(plain)
    plain.off('error', this.onError)
    plain.off('close', this.onClose)
    // The TLS socket shares this socket's handle and reports its errors and
    // its close; this listener only keeps an error on the plain side from
    // being unhandled.
    plain.on('error', ignoreError)
    const secure = connectTls(plain, setup, this.host)
    secure.on('error', this.onError)
    secure.on('close', this.onClose)
    secure.once('secureConnect', () => {
      startReading(secure, this, true)
      this.sendStartup()
    })
    this.socket = secure
  }

  private sendStartup(): void {
    const db = this.pool.database
    const params: Record<string, string> = { user: this.pool.user, database: db.dbname }
    if (db.clientEncoding) params.client_encoding = db.clientEncoding
    if (db.datestyle) params.DateStyle = db.datestyle
    if (db.timezone) params.TimeZone = db.timezone
    if (db.applicationName) params.application_name = db.applicationName
    if (this.dedicated !== null) Object.assign(params, this.dedicated.params)
    this.write(startupMessage(params))
  }

  private readonly onError = (err: Error): void => {
    if (this.#state === 'login') {
      // Node adds advice about its own flags to certificate errors; a pooler
      // user's remedy is server_tls_ca_file.
      const message = err.message.replace(/; if the root CA is installed locally.*$/, '')
      this.failLogin({ code: SqlState.ConnectionFailure, message, fromServer: false })
    } else {
      this.pool.worker.log.warn({ server: this.id, err: err.message }, 'server socket error')
    }
  }

  private readonly onClose = (): void => {
    if (this.connectTimer) clearTimeout(this.connectTimer)
    if (this.closeTimer) clearTimeout(this.closeTimer)
    if (this.#state === 'login') {
      this.failLogin({
        code: SqlState.ConnectionFailure,
        message: 'server closed the connection during login',
        fromServer: false,
      })
    } else if (this.#state !== 'closed') {
      this.#state = 'closed'
      this.pool.serverClosed(this)
      this.#checking = false
    }
    this.pool.serverGone(this)
  }

  /** Through a unix socket (SHOW SERVERS says `unix`, as PgBouncer does). */
  get unix(): boolean {
    return this.address === null || this.address.path !== undefined
  }

  /**
   * Bytes from PostgreSQL. True when something still points into `chunk`
   * after the call (the login reader, a message split across reads), so the
   * next read must land in a new buffer.
   */
  onBytes(chunk: Buffer): boolean {
    try {
      this.onData(chunk)
    } catch (err) {
      // A server that breaks the protocol costs its own client, never the worker.
      this.pool.worker.log.error(
        { server: this.id, err: (err as Error).message },
        'bad data from server',
      )
      this.close()
      return true
    }
    return this.loginReader !== null || this.scanner.retainsInput
  }

  /** PostgreSQL took every queued byte: a client paused for it may go on. */
  onDrained(): void {
    const waiter = this.#drainWaiter
    this.#drainWaiter = null
    waiter?.serverDrained()
  }

  private onData(view: Buffer): void {
    if (this.loginReader !== null) {
      if (this.sslPending) this.onSslAnswer(view)
      else this.onLoginData(view)
      return
    }
    let chunk = view
    if (this.held !== null) {
      chunk = Buffer.concat([this.held, view])
      this.held = null
    }
    const client = this.#client
    if (client === null) {
      this.onIdleData(chunk)
      return
    }
    client.bytesSent += view.length
    let start = 0
    this.segmentStart = 0
    while (start < chunk.length) {
      this.action = 0
      scanned = chunk
      start = this.scanner.scan(chunk, start, this.onServerMessage)
      if (this.action === ACTION_NONE) break
      if (this.action === ACTION_SKIP) {
        this.segmentStart = start
        continue
      }
      if (this.action === ACTION_DROP) {
        // The ParseComplete of a Parse the pooler added: the client gets the rest.
        const from = this.dropStart
        if (from >= this.segmentStart) {
          if (from > this.segmentStart && this.#swallow === 0) {
            client.forwardFromServer(chunk.subarray(this.segmentStart, from), this)
          }
          this.segmentStart = start
        }
        continue
      }
      // ACTION_RELEASE: everything up to and including the ReadyForQuery goes
      // to the client before the server can be handed to anyone else.
      client.write(
        this.segmentStart === 0 && start === chunk.length
          ? chunk
          : chunk.subarray(this.segmentStart, start),
      )
      this.segmentStart = start
      client.releaseServer()
      if (start < chunk.length) this.onIdleData(chunk.subarray(start))
      return
    }
    let stop = chunk.length
    if (!this.tracker.idle) {
      // A ParseComplete split across reads may be one to leave out: keep its start.
      const partial = this.scanner.partial
      if (partial !== null && partial.type === BackendCode.ParseComplete && partial.start >= 0) {
        this.held = Buffer.from(chunk.subarray(partial.start))
        stop = partial.start
        this.scanner.reset()
      }
    }
    // While our own statement's reply is still arriving, none of it is the client's.
    if (this.#swallow === 0 && this.segmentStart < stop) {
      client.forwardFromServer(
        this.segmentStart === 0 && stop === chunk.length
          ? chunk
          : chunk.subarray(this.segmentStart, stop),
        this,
      )
    }
  }

  private readonly onServerMessage = (
    type: number,
    msg: Buffer | null,
    end: number,
    start: number,
  ): boolean => {
    if (type === BackendCode.ParseComplete) {
      if (!this.tracker.parseComplete()) return false
      this.dropStart = start
      this.action = ACTION_DROP
      return true
    }
    if (type === BackendCode.ReadyForQuery) {
      this.#txStatus = statusAt(end)
      if (this.#swallow > 0) {
        this.#swallow--
        // Drop the reply to our own statement: [segmentStart, end) is ours.
        this.action = ACTION_SKIP
        return true
      }
      if (!this.tracker.idle) this.tracker.readyForQuery(this)
      const client = this.#client!
      if (client.onReadyForQuery(this.#txStatus)) {
        this.action = ACTION_RELEASE
        return true
      }
      return false
    }
    if (type === BackendCode.ParameterStatus) {
      const tracked = this.noteParameter(msg!)
      // The client ran a SET itself (not one of ours): it wants that value from now on.
      if (tracked !== null && this.#swallow === 0)
        this.#client?.serverReportedVar(tracked, this.vars[tracked]!)
      return false
    }
    // ErrorResponse
    if (endedByRestart(msg!)) {
      const fields = parseErrorFields(msg!)
      this.pool.serverRestarting(fields.code, fields.message)
    }
    if (this.#swallow > 0) {
      const fields = parseErrorFields(msg!)
      this.pool.worker.log.warn(
        { server: this.id, sqlstate: fields.code, error: fields.message },
        'statement issued by the pooler failed',
      )
    }
    return false
  }

  /** Records a ParameterStatus; returns the tracked name it set, if any. */
  private noteParameter(msg: Buffer): TrackedName | null {
    const { name, value } = parseParameterStatus(msg)
    this.params.set(name, value)
    // A promotion (the login's value is read when it ends: TargetSession.loggedIn).
    if (name === 'in_hot_standby' && this.state !== 'login')
      this.pool.serverReportedRole(this, value)
    const tracked = trackedName(name)
    if (tracked !== null) {
      this.vars[tracked] = value
      this.varsKey = varsKey(this.vars)
    }
    return tracked
  }

  /** Bytes from a server nobody is linked to: status reports, or a FATAL on its way out. */
  private onIdleData(chunk: Buffer): void {
    // Closed: what a cancelled statement still sends before the backend reads Terminate.
    if (this.#state === 'closed') return
    let start = 0
    let checked = false
    while (start < chunk.length) {
      this.action = 0
      scanned = chunk
      start = this.scanner.scan(chunk, start, this.onIdleMessage)
      if (this.action === ACTION_CLOSE) {
        this.close()
        return
      }
      if (this.action === ACTION_CHECKED) checked = true
    }
    if (checked) {
      this.#checking = false
      this.#checked = true
      this.pool.serverChecked(this)
    }
  }

  private readonly onIdleMessage = (type: number, msg: Buffer | null, end: number): boolean => {
    if (type === BackendCode.ParameterStatus) {
      this.noteParameter(msg!)
      return false
    }
    if (type === BackendCode.ReadyForQuery && this.#swallow > 0) {
      this.#swallow--
      this.#txStatus = statusAt(end)
      if (this.#swallow === 0 && this.#checking) this.action = ACTION_CHECKED
      return false
    }
    if (type === BackendCode.ErrorResponse) {
      const fields = parseErrorFields(msg!)
      if (endedByRestart(msg!)) this.pool.serverRestarting(fields.code, fields.message)
      if (this.#checking) {
        this.pool.worker.log.warn(
          { server: this.id, sqlstate: fields.code, error: fields.message },
          'server_check_query failed, closing the server',
        )
        this.action = ACTION_CLOSE
        return true
      }
      if (this.#swallow > 0) {
        this.pool.worker.log.warn(
          { server: this.id, sqlstate: fields.code, error: fields.message },
          'statement issued by the pooler failed',
        )
        return false
      }
      this.pool.worker.log.info(
        { server: this.id, sqlstate: fields.code, error: fields.message },
        'server sent an error while idle, closing it',
      )
      this.action = ACTION_CLOSE
      return true
    }
    return false
  }

  // ---- login -------------------------------------------------------------

  private onLoginData(chunk: Buffer): void {
    try {
      this.loginReader!.push(chunk, this.onLoginMessage)
    } catch (err) {
      this.failLogin({
        code: SqlState.ProtocolViolation,
        message: (err as Error).message,
        fromServer: false,
      })
    }
  }

  private readonly onLoginMessage = (type: number, msg: Buffer): void => {
    if (this.#state !== 'login') return
    switch (type) {
      case BackendCode.Authentication:
        this.onAuthRequest(msg)
        return
      case BackendCode.ParameterStatus:
        this.noteParameter(msg)
        return
      case BackendCode.BackendKeyData: {
        const key = parseBackendKeyData(msg)
        this.pid = key.pid
        this.secret = key.secret
        return
      }
      case BackendCode.ErrorResponse: {
        const fields = parseErrorFields(msg)
        this.failLogin({
          code: fields.code,
          message: fields.message,
          detail: fields.detail,
          fromServer: true,
        })
        return
      }
      case BackendCode.ReadyForQuery:
        this.#txStatus = readyForQueryStatus(msg)
        this.loginDone()
        return
      default:
        // NoticeResponse, NegotiateProtocolVersion: nothing to do during login
        return
    }
  }

  private onAuthRequest(msg: Buffer): void {
    const auth = parseAuthentication(msg)
    const user = this.pool.user
    const secret = this.pool.serverSecret()
    switch (auth.code) {
      case AuthCode.Ok:
        return
      case AuthCode.CleartextPassword:
        if (secret.password === null) {
          this.noPassword('cleartext')
          return
        }
        this.write(passwordMessage(secret.password))
        return
      case AuthCode.MD5Password: {
        const stored = secret.password ?? secret.md5
        if (stored === null) {
          this.noPassword('md5')
          return
        }
        this.write(passwordMessage(md5Response(user, stored, auth.salt!)))
        return
      }
      case AuthCode.SASL: {
        if (!auth.mechanisms?.includes('SCRAM-SHA-256')) {
          this.failLogin({
            code: SqlState.InvalidAuthorization,
            message: `server asked for unsupported SASL mechanisms: ${auth.mechanisms?.join(', ')}`,
            fromServer: false,
          })
          return
        }
        if (secret.password !== null) this.scram = new ScramClient({ password: secret.password })
        else if (secret.scramKeys !== null) this.scram = new ScramClient(secret.scramKeys)
        else {
          this.noPassword('SCRAM-SHA-256')
          return
        }
        this.write(saslInitialResponse('SCRAM-SHA-256', this.scram.clientFirstMessage()))
        return
      }
      case AuthCode.SASLContinue:
      case AuthCode.SASLFinal: {
        const scram = this.scram
        if (scram === null) {
          this.unexpectedAuth(auth.code)
          return
        }
        try {
          if (auth.code === AuthCode.SASLContinue) {
            this.write(saslResponse(scram.clientFinalMessage(auth.data!)))
          } else {
            scram.verifyServerFinal(auth.data!)
          }
        } catch (err) {
          this.failLogin({
            code: SqlState.InvalidAuthorization,
            message: (err as Error).message,
            fromServer: false,
          })
        }
        return
      }
      default:
        this.unexpectedAuth(auth.code)
    }
  }

  /** No plaintext password (nor SCRAM keys) for what the server asks: PgBouncer's text to the clients, the detail to the log. */
  private noPassword(method: string): void {
    this.pool.worker.log.error(
      { user: this.pool.user, method },
      `cannot do ${method} authentication: wrong password type`,
    )
    this.failLogin({
      code: SqlState.ProtocolViolation,
      message: 'server login failed: wrong password type',
      fromServer: false,
    })
  }

  private unexpectedAuth(code: number): void {
    this.failLogin({
      code: SqlState.InvalidAuthorization,
      message: `unsupported authentication request ${code} from server`,
      fromServer: false,
    })
  }

  private loginDone(): void {
    if (this.connectTimer) {
      clearTimeout(this.connectTimer)
      this.connectTimer = null
    }
    this.loginReader = null
    this.scram = null
    this.#state = 'idle'
    // Not on a replication connection: a physical one takes no SQL.
    const connectQuery = this.dedicated === null ? this.pool.database.connectQuery : undefined
    if (connectQuery) this.runOwn(query(connectQuery))
    // Fresh from its login: no check before its first client, as in PgBouncer
    // (a replication client's own server is never checked: it is linked at once).
    if (this.dedicated === null) this.#checked = true
    this.pool.serverLoggedIn(this)
  }

  private failLogin(failure: LoginFailure): void {
    if (this.#state !== 'login') return
    this.#state = 'closed'
    if (this.connectTimer) clearTimeout(this.connectTimer)
    this.socket.destroy()
    this.pool.serverLoginFailed(this, failure)
  }

  // ---- use ---------------------------------------------------------------

  write(buf: Buffer): boolean {
    return send(this.socket, this, buf)
  }

  /** server_check_query (pool/health-check.ts): the pool hears of its ReadyForQuery. */
  check(statement: Buffer): void {
    this.#checking = true
    this.runOwn(statement)
  }

  /** A statement of the pooler's own: its reply never reaches a client. */
  runOwn(statement: Buffer): void {
    this.#swallow++
    this.write(statement)
  }

  /**
   * On the way back to the pool: the reset query, if one is due, which drops
   * the statements prepared under our names too (DISCARD ALL); else, past
   * max_prepared_statements (statements of clients gone or linked elsewhere
   * pile up), DEALLOCATE ALL.
   */
  cleanUp(resetQuery: string | null, maxPrepared: number): void {
    if (resetQuery !== null) this.runOwn(query(resetQuery))
    else if (this.preparedCount > maxPrepared) this.runOwn(DEALLOCATE_ALL)
    else return
    this.preparedGen++
    this.preparedCount = 0
  }

  /**
   * The reset rule, as PgBouncer's release_server has it: server_reset_query
   * when a session-mode client let the server go (or after every transaction
   * with server_reset_query_always), then cleanUp. A server `pinned` by
   * session_state_policy = pin holds state that cannot follow a client: it is
   * always reset (server_reset_query, DISCARD ALL when that is empty).
   */
  resetOnRelease(sessionEnded: boolean, pinned = false): void {
    const settings = this.pool.worker.settings
    const reset = settings.serverResetQuery
    this.cleanUp(
      pinned
        ? reset || 'DISCARD ALL'
        : reset !== '' && (sessionEnded || settings.serverResetQueryAlways)
          ? reset
          : null,
      settings.maxPreparedStatements,
    )
  }

  /** Usable for a new client: logged in, in no transaction, not past its life. */
  isReusable(now: number): boolean {
    if (this.#state !== 'idle' || this.#closeNeeded || this.#txStatus !== TxStatus.Idle)
      return false
    // A database's own server_lifetime, when above 0, wins (PgBouncer's pool_server_lifetime).
    const own = this.pool.database.serverLifetime
    const lifetime = own !== undefined && own > 0 ? own : this.pool.worker.settings.serverLifetime
    return lifetime <= 0 || now - this.createdAt < lifetime * 1000
  }

  // ---- state changes (the pool's and the session's calls) ------------------

  /** The pool hands it to `client`: `linkedAt` and `queryStart` on the pool's clock, `now` the worker's. */
  link(client: LinkedClient, linkedAt: number, queryStart: number, now: number): void {
    this.#linkedAt = linkedAt
    this.#queryClock = queryStart
    this.#checked = false
    this.#state = 'active'
    this.#client = client
    this.#lastUsed = now
  }

  /**
   * Back from its client. True when it is idle and the pool may hand it out;
   * false when it is closed, or parked until PostgreSQL has taken a cancel.
   */
  unlink(): boolean {
    this.#client = null
    if (this.#state === 'closed') return false
    if (this.dedicated !== null) {
      // Never pooled: it was its client's alone.
      this.close()
      return false
    }
    this.#state = 'idle'
    if (this.#cancelsInFlight > 0) {
      this.#parked = true
      return false
    }
    return true
  }

  /** The pool forgets it (closed): the client it served, if any, to be told. */
  takeClient(): LinkedClient | null {
    const client = this.#client
    this.#client = null
    return client
  }

  /** Kept idle from `now` on (the worker's clock). */
  idleFrom(now: number): void {
    this.#lastUsed = now
  }

  /** Fresh (just logged in, or checked): serves its next client without server_check_query. */
  markChecked(): void {
    this.#checked = true
  }

  /**
   * RECONNECT, reload, shutdown: idle, it closes now; linked, when its client
   * lets it go. A replication client's own server goes with its client, never before.
   */
  closeWhenFree(): void {
    if (this.#state === 'active' || this.dedicated !== null) this.#closeNeeded = true
    else this.close()
  }

  /** The linked client's oldest unanswered request started (the pool's clock). */
  requestStarted(clock: number): void {
    this.#queryClock = clock
  }

  /** `client` stopped reading until this server has taken its bytes. */
  waitForDrain(client: DrainWaiter): void {
    this.#drainWaiter = client
  }

  /** A CancelRequest for this backend is on its way: released, it waits out of the pool (cancelDone). */
  cancelStarted(): void {
    this.#cancelsInFlight++
  }

  /** A cancel connection for this backend closed: PostgreSQL has acted on it. */
  cancelDone(): void {
    this.#cancelsInFlight--
    if (this.#cancelsInFlight === 0 && this.#parked) {
      this.#parked = false
      this.pool.release(this)
    }
  }

  close(): void {
    if (this.#state === 'closed') return
    const wasLogin = this.#state === 'login'
    this.#state = 'closed'
    if (this.connectTimer) clearTimeout(this.connectTimer)
    if (!wasLogin && !this.socket.destroyed) {
      endWith(this.socket, this, terminate())
      // The permit returns when the socket has closed; a server that does not
      // hang up after Terminate is cut off.
      this.closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_TIMEOUT_MS)
    } else {
      this.socket.destroy()
    }
    this.pool.serverClosed(this)
    this.#checking = false
  }

  /**
   * Closes a server whose backend may be running a statement (its client
   * timed out, was killed or left mid-query): PostgreSQL gets a CancelRequest
   * for the backend besides the Terminate. A backend reads the Terminate only
   * once its statement is over, so without the cancel it would run on for as
   * long as the statement takes, holding its connection and, here, the pool's
   * permit, which returns only when the backend hangs up (invariant 1: a
   * backend PostgreSQL still runs is never left out of the count). So the
   * socket is never cut off while a statement may run: the cancel is sent
   * again, less and less often, until the backend has gone.
   */
  abort(): void {
    if (this.#state === 'closed') return
    const running = this.#state !== 'login' && this.pid !== 0
    this.close()
    if (!running || this.socket.destroyed) return
    if (this.closeTimer) clearTimeout(this.closeTimer)
    this.cancelAgainMs = CLOSE_TIMEOUT_MS
    this.cancelRunning()
  }

  private cancelRunning(): void {
    this.pool.worker.cancelServer(this, noop)
    this.closeTimer = setTimeout(() => {
      this.pool.worker.log.warn(
        { server: this.id, backend_pid: this.pid, waited_ms: this.cancelAgainMs },
        'server still running after cancel and Terminate; cancelling again, its permit is kept until it hangs up',
      )
      this.cancelAgainMs = Math.min(this.cancelAgainMs * 2, MAX_CANCEL_AGAIN_MS)
      this.cancelRunning()
    }, this.cancelAgainMs)
  }
}

const CLOSE_TIMEOUT_MS = 5000
/** The longest wait between two cancels for a backend that does not stop (abort()). */
const MAX_CANCEL_AGAIN_MS = 60_000
/** PgBouncer logs "unix socket dir not configured" and fails the connection. */
const NO_SOCKET_DIR = 'the database has no host and unix_socket_dir is empty'

const ACTION_NONE = 0
const ACTION_SKIP = 1
const ACTION_RELEASE = 2
const ACTION_CLOSE = 3
const ACTION_DROP = 4
const ACTION_CHECKED = 5
const DEALLOCATE_ALL = query('DEALLOCATE ALL')

function ignoreError(): void {}
function noop(): void {}
