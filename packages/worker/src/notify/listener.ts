import { FrameReader } from '@pgbouncer-cluster/protocol/frame-reader'
import { BackendCode } from '@pgbouncer-cluster/protocol/messages'
import { parseErrorFields } from '@pgbouncer-cluster/protocol/parser'
import type { Semaphore } from '@pgbouncer-cluster/protocol/semaphore'
import { query } from '@pgbouncer-cluster/protocol/serializer'
import type { DatabaseConfig } from '../config-types.ts'
import type { TrackedName } from '../params.ts'
import type { PoolHost } from '../pool/pool.ts'
import {
  type LinkedClient,
  type LoginFailure,
  Server,
  type ServerPool,
  type ServerSecret,
} from '../server.ts'
import { quoteChannel } from './statements.ts'

/** What the listening server borrows of a pool of its worker: where to log in, and as whom. */
export interface ListenerPool {
  readonly worker: PoolHost
  readonly database: DatabaseConfig
  readonly user: string
  readonly databaseSlot: number
  serverSecret(): ServerSecret
}

/** What a listener tells its worker's hub. */
export interface ListenerOwner {
  /** A NotificationResponse of the listening server. */
  notification(database: string, channel: string, payload: string, pid: number): void
  /** The LISTEN asked with `ref` is in effect (or the server cannot be had now). */
  ready(database: string, channel: string, ref: number): void
  /** The server is up (logged in, every channel listened) or lost. */
  stateChanged(listener: Listener): void
}

/** After a failed login or a full max_db_connections, the next try. */
const RETRY_MS = 1000

/**
 * The one server connection of a database that LISTENs to the union of the
 * channels the pooler's clients listen to, in transaction and statement
 * mode. It lives in one worker (the coordinator picks it, notify.ts) and
 * borrows a pool's login; it is not one of the pool's servers and takes no
 * permit of the pool's size, only one of max_db_connections where that is
 * set. Lost, it is opened again and every channel listened again: the
 * notifications sent meanwhile are lost (a gap, counted and logged).
 */
export class Listener implements ServerPool, LinkedClient {
  readonly id = 0
  bytesSent = 0
  readonly totals = { serverParseCount: 0 }
  readonly worker: PoolHost
  database: DatabaseConfig
  readonly user: string
  server: Server | null = null
  /** Times the server was lost after it had listened. */
  gaps = 0
  /** Logged in and every channel sent. */
  up = false
  /** The channels, each with the refs waiting for its LISTEN to be in effect. */
  private readonly channels = new Map<string, number[]>()
  /** Per Query sent and not yet answered: the refs its ReadyForQuery makes ready. */
  private readonly inFlight: { channel: string; ref: number }[][] = []
  private reader = new FrameReader()
  private retry: NodeJS.Timeout | null = null
  private closed = false
  private readonly dbSem: Semaphore
  private permit = false
  private readonly pool: ListenerPool
  private readonly owner: ListenerOwner

  constructor(pool: ListenerPool, owner: ListenerOwner) {
    this.pool = pool
    this.worker = pool.worker
    this.database = pool.database
    this.user = pool.user
    this.owner = owner
    this.dbSem = pool.worker.shared.database(pool.databaseSlot)
  }

  get channelCount(): number {
    return this.channels.size
  }

  /** Listen to `channel`; `ref` > 0 is answered once the LISTEN is in effect. */
  listen(channel: string, ref: number): void {
    let refs = this.channels.get(channel)
    const known = refs !== undefined
    if (refs === undefined) this.channels.set(channel, (refs = []))
    if (known && this.up && !this.waiting(channel)) {
      if (ref > 0) this.owner.ready(this.database.name, channel, ref)
      return
    }
    if (ref > 0) refs.push(ref)
    if (this.up) this.send([channel], 'LISTEN')
    else this.open()
  }

  unlisten(channel: string): void {
    const refs = this.channels.get(channel)
    if (refs === undefined) return
    this.channels.delete(channel)
    for (const ref of refs) this.owner.ready(this.database.name, channel, ref)
    if (this.up) this.send([channel], 'UNLISTEN')
  }

  private waiting(channel: string): boolean {
    for (const batch of this.inFlight)
      for (const item of batch) if (item.channel === channel) return true
    return false
  }

  /** Sends one Query of LISTENs (or UNLISTENs); its ReadyForQuery answers their refs. */
  private send(channels: string[], verb: 'LISTEN' | 'UNLISTEN'): void {
    const batch: { channel: string; ref: number }[] = []
    if (verb === 'LISTEN') {
      for (const channel of channels) {
        const refs = this.channels.get(channel)
        if (refs === undefined) continue
        for (const ref of refs) batch.push({ channel, ref })
        refs.length = 0
        batch.push({ channel, ref: 0 })
      }
    }
    this.inFlight.push(batch)
    this.server!.write(query(channels.map((c) => `${verb} ${quoteChannel(c)}`).join('; ')))
  }

  private open(): void {
    if (this.closed || this.server !== null || this.retry !== null) return
    const maxDb = this.database.maxDbConnections ?? this.worker.settings.maxDbConnections
    if (maxDb > 0 && !this.permit) {
      if (!this.dbSem.tryAcquire(maxDb, this.worker.id)) {
        this.worker.log.warn(
          { database: this.database.name },
          'notification listener waits: max_db_connections reached',
        )
        this.answerWaiting()
        this.later()
        return
      }
      this.permit = true
    }
    this.server = new Server(this, 0, 0)
    this.worker.log.debug(
      { server: this.server.id, database: this.database.name },
      'opening the notification listener',
    )
  }

  private later(): void {
    this.retry = setTimeout(() => {
      this.retry = null
      if (this.channels.size > 0) this.open()
    }, RETRY_MS)
  }

  /** No LISTEN can be in effect soon: the clients waiting are answered (the gap is logged). */
  private answerWaiting(): void {
    for (const [channel, refs] of this.channels) {
      for (const ref of refs) this.owner.ready(this.database.name, channel, ref)
      refs.length = 0
    }
  }

  /** No channel is left: the server goes, and that is no gap. */
  close(): void {
    this.closed = true
    this.up = false
    if (this.retry !== null) clearTimeout(this.retry)
    this.retry = null
    this.answerWaiting()
    this.server?.close()
  }

  // ---- ServerPool: the one server's life ----------------------------------------

  serverSecret(): ServerSecret {
    return this.pool.serverSecret()
  }

  serverLoggedIn(server: Server): void {
    if (this.closed) {
      server.close()
      return
    }
    this.reader = new FrameReader()
    // Linked to the listener for its whole life: never released, never pooled.
    server.link(this, 0, 0, this.worker.now)
    this.up = true
    this.worker.log.info(
      { server: server.id, database: this.database.name, channels: this.channels.size },
      'notification listener logged in',
    )
    if (this.channels.size > 0) this.send([...this.channels.keys()], 'LISTEN')
    this.owner.stateChanged(this)
  }

  serverLoginFailed(server: Server, failure: LoginFailure): void {
    this.worker.log.warn(
      {
        server: server.id,
        database: this.database.name,
        sqlstate: failure.code,
        error: failure.message,
      },
      'notification listener could not log in; trying again',
    )
  }

  serverRestarting(): void {}

  /** The listener keeps to the first host whatever its role (target_session_attrs routes the pools' servers). */
  serverReportedRole(): void {}

  release(): void {}

  serverChecked(): void {}

  serverClosed(server: Server): void {
    if (this.server !== server || this.closed) return
    if (this.up) {
      this.gaps++
      this.worker.log.warn(
        { server: server.id, database: this.database.name, gaps: this.gaps },
        'notification listener lost; notifications sent until it listens again are lost',
      )
    }
    this.up = false
    this.inFlight.length = 0
    this.owner.stateChanged(this)
  }

  serverGone(server: Server): void {
    if (this.server !== server) return
    this.server = null
    if (this.permit) {
      this.dbSem.release(this.worker.id)
      this.permit = false
    }
    if (this.closed) return
    this.answerWaiting()
    if (this.channels.size > 0) this.later()
  }

  // ---- LinkedClient: what the server says -------------------------------------

  onReadyForQuery(): boolean {
    return false
  }

  write(buf: Buffer): void {
    this.forwardFromServer(buf)
  }

  forwardFromServer(buf: Buffer): void {
    // A view of the server's read buffer, which the next read may overwrite
    // while the reader still holds a message split across reads: a copy.
    this.reader.push(Buffer.from(buf), this.onMessage)
  }

  private readonly onMessage = (type: number, msg: Buffer): void => {
    if (type === BackendCode.NotificationResponse) {
      const pid = msg.readInt32BE(5)
      const nul = msg.indexOf(0, 9)
      const channel = msg.toString('utf8', 9, nul)
      const payload = msg.toString('utf8', nul + 1, msg.length - 1)
      this.owner.notification(this.database.name, channel, payload, pid)
    } else if (type === BackendCode.ReadyForQuery) {
      const batch = this.inFlight.shift()
      if (batch === undefined) return
      for (const { channel, ref } of batch) {
        if (ref > 0) this.owner.ready(this.database.name, channel, ref)
      }
    } else if (type === BackendCode.ErrorResponse) {
      const fields = parseErrorFields(msg)
      this.worker.log.warn(
        { database: this.database.name, sqlstate: fields.code, error: fields.message },
        'notification listener: statement failed',
      )
    }
  }

  releaseServer(): void {}

  serverLost(): void {}

  serverReportedVar(_name: TrackedName, _value: string): void {}
}
