import type { ControlMessage, ControlOf } from '@pgbouncer-cluster/protocol/control'
import { TxStatus } from '@pgbouncer-cluster/protocol/messages'
import {
  commandComplete,
  errorResponse,
  readyForQuery,
} from '@pgbouncer-cluster/protocol/serializer'
import { fatal } from '../errors.ts'
import type { Logger } from '../log.ts'
import { Listener, type ListenerOwner, type ListenerPool } from './listener.ts'
import type { ChannelOp } from './statements.ts'

/**
 * Bytes of notifications a client may have waiting in the pooler (while it is
 * linked to a server, or its socket does not take what was written) before it
 * is disconnected.
 */
export const NOTIFY_QUEUE_LIMIT = 8 << 20
export const QUEUE_FULL =
  'client does not read its notifications: more than 8 MB of them queued in the pooler'
/** configuration_limit_exceeded */
const QUEUE_FULL_CODE = '53400'

/** What the hub needs of a client session (client.ts's ClientSession). */
export interface NotifyClient {
  readonly id: number
  readonly database: string
  readonly user: string
  /** Linked to a server: what it forwards may stop inside a message. */
  readonly server: object | null
  readonly queuedWrites: number
  readonly pool: ListenerPool | null
  notify: ClientNotify | null
  write(buf: Buffer): void
  writeAll(messages: Buffer[]): void
  fail(error: Buffer): void
}

/** What the hub needs of its worker. */
export interface NotifyHost {
  readonly id: number
  readonly log: Logger
  send(msg: ControlMessage): void
  /** A pool of this worker for the database (the user's when there is one), to lend the listener its login. */
  listenerPool(database: string, user: string): ListenerPool | null
}

/** What a client that ever listened carries (client.ts keeps it in `notify`). */
export class ClientNotify {
  readonly channels = new Set<string>()
  /** Notifications not yet written (the client is linked, or its socket is full). */
  queue: Buffer[] | null = null
  queued = 0
  /** LISTEN and UNLISTEN in the open transaction: applied if it commits. */
  txOps: ChannelOp[] | null = null
  /** The transaction's status when the client sent COMMIT (T: it commits); 0 if it has not. */
  commitStatus = 0
  /** Named statements of LISTEN or UNLISTEN the client prepared (notify/extended.ts). */
  statements: Map<string, ChannelOp> | null = null
  /** LISTENs whose listening server has not confirmed yet. */
  waiting = 0
  answer: (() => void) | null = null
}

/** One channel of one database in this worker: its clients, and whether its LISTEN is in effect. */
interface Channel {
  readonly clients: Set<NotifyClient>
  /** Clients waiting for the listening server's confirmation; null once it came. */
  waiters: NotifyClient[] | null
}

const LISTEN_DONE = commandComplete('LISTEN')
const UNLISTEN_DONE = commandComplete('UNLISTEN')
const ABORTED = errorResponse({
  severity: 'ERROR',
  code: '25P02',
  message: 'current transaction is aborted, commands ignored until end of transaction block',
})

/**
 * The answer PostgreSQL gives to these statements (or to the extended
 * protocol's batch that ran them, `answers`), ending with ReadyForQuery(status).
 */
export function listenAnswer(
  ops: readonly ChannelOp[],
  status: number,
  answers: readonly Buffer[] | null,
  ready = true,
): Buffer[] {
  if (status === TxStatus.Failed) return ready ? [ABORTED, readyForQuery(status)] : [ABORTED]
  const out: Buffer[] =
    answers === null ? ops.map((op) => (op.listen ? LISTEN_DONE : UNLISTEN_DONE)) : [...answers]
  if (ready) out.push(readyForQuery(status))
  return out
}

/** A NotificationResponse (A). */
export function notificationResponse(pid: number, channel: string, payload: string): Buffer {
  const c = Buffer.byteLength(channel)
  const p = Buffer.byteLength(payload)
  const buf = Buffer.allocUnsafe(1 + 4 + 4 + c + 1 + p + 1)
  buf[0] = 0x41
  buf.writeInt32BE(buf.length - 1, 1)
  buf.writeInt32BE(pid, 5)
  buf.write(channel, 9, 'utf8')
  buf[9 + c] = 0
  buf.write(payload, 10 + c, 'utf8')
  buf[buf.length - 1] = 0
  return buf
}

/**
 * LISTEN/NOTIFY in transaction and statement mode, in one worker: which of
 * its clients listen to which channels, what it asked the coordinator, and
 * the listening servers the coordinator gave it to run (one per database in
 * the cluster). Clients that never listen are not seen here.
 */
export class Notifications implements ListenerOwner {
  private readonly host: NotifyHost
  private readonly byDatabase = new Map<string, Map<string, Channel>>()
  /** Our requests to the coordinator waiting for 'notify-ready', by ref. */
  private readonly asked = new Map<number, Channel>()
  private nextRef = 1
  /** The listening servers this worker runs, by database. */
  readonly listeners = new Map<string, Listener>()
  /** Clients disconnected for not reading their notifications. */
  dropped = 0

  constructor(host: NotifyHost) {
    this.host = host
  }

  private channelsOf(database: string): Map<string, Channel> {
    let channels = this.byDatabase.get(database)
    if (channels === undefined) this.byDatabase.set(database, (channels = new Map()))
    return channels
  }

  /**
   * Applies a client's LISTENs and UNLISTENs; `done` runs once every LISTEN
   * is in effect on the listening server (at once when none had to wait).
   */
  apply(client: NotifyClient, ops: readonly ChannelOp[], done: () => void): void {
    const state = (client.notify ??= new ClientNotify())
    for (const op of ops) {
      if (op.channel === null) {
        for (const channel of [...state.channels]) this.unlisten(client, state, channel)
      } else if (op.listen) this.listen(client, state, op.channel)
      else this.unlisten(client, state, op.channel)
    }
    if (state.waiting === 0) done()
    else state.answer = done
  }

  private listen(client: NotifyClient, state: ClientNotify, name: string): void {
    if (state.channels.has(name)) return
    state.channels.add(name)
    const channels = this.channelsOf(client.database)
    let channel = channels.get(name)
    if (channel === undefined) {
      channel = { clients: new Set(), waiters: [] }
      channels.set(name, channel)
      const ref = this.nextRef++
      this.asked.set(ref, channel)
      this.host.send({
        type: 'notify-listen',
        worker: this.host.id,
        database: client.database,
        user: client.user,
        channel: name,
        on: 1,
        ref,
      })
    }
    channel.clients.add(client)
    if (channel.waiters !== null) {
      channel.waiters.push(client)
      state.waiting++
    }
  }

  private unlisten(client: NotifyClient, state: ClientNotify, name: string): void {
    if (!state.channels.delete(name)) return
    const channels = this.byDatabase.get(client.database)
    const channel = channels?.get(name)
    if (channel === undefined) return
    channel.clients.delete(client)
    if (channel.clients.size > 0) return
    channels!.delete(name)
    if (channels!.size === 0) this.byDatabase.delete(client.database)
    this.host.send({
      type: 'notify-listen',
      worker: this.host.id,
      database: client.database,
      user: client.user,
      channel: name,
      on: 0,
      ref: 0,
    })
  }

  /** A LISTEN or UNLISTEN inside a transaction: kept until it ends. */
  defer(client: NotifyClient, ops: readonly ChannelOp[]): void {
    const state = (client.notify ??= new ClientNotify())
    ;(state.txOps ??= []).push(...ops)
  }

  /** The client's server went back to the pool: its transaction is over, and it is at a message boundary. */
  released(client: NotifyClient): void {
    const state = client.notify!
    const ops = state.txOps
    if (ops !== null) {
      const commits = state.commitStatus === TxStatus.InTransaction
      state.txOps = null
      state.commitStatus = 0
      if (commits) this.apply(client, ops, noop)
    }
    this.flush(client)
  }

  /** Notifications held for the client go out, once nothing of a server's is on its way to it. */
  flush(client: NotifyClient): void {
    const state = client.notify!
    const queue = state.queue
    if (queue === null || client.server !== null || client.queuedWrites > 0) return
    state.queue = null
    state.queued = 0
    client.writeAll(queue)
  }

  /** The client is gone: it leaves its channels. */
  leave(client: NotifyClient): void {
    const state = client.notify!
    for (const channel of [...state.channels]) this.unlisten(client, state, channel)
    state.queue = null
    state.answer = null
    state.txOps = null
  }

  private deliver(client: NotifyClient, msg: Buffer): void {
    const state = client.notify!
    if (client.server === null && state.queue === null && client.queuedWrites === 0) {
      client.write(msg)
      return
    }
    if (state.queued + msg.length > NOTIFY_QUEUE_LIMIT) {
      this.dropped++
      this.host.log.warn(
        { client: client.id, db: client.database, queued_bytes: state.queued },
        'closing a client that does not read its notifications',
      )
      // Leave first: the notifications still coming skip it.
      this.leave(client)
      client.fail(fatal(QUEUE_FULL, QUEUE_FULL_CODE))
      return
    }
    ;(state.queue ??= []).push(msg)
    state.queued += msg.length
  }

  // ---- control messages ------------------------------------------------------

  onMessage(msg: ControlOf<'notify-listen' | 'notify-ready' | 'notification'>): void {
    switch (msg.type) {
      case 'notify-listen':
        this.onListen(msg)
        return
      case 'notify-ready':
        this.onReady(msg.ref)
        return
      case 'notification':
        this.onNotification(msg.database, msg.channel, msg.payload, msg.pid)
        return
    }
  }

  /** From the coordinator: this worker runs the database's listening server. */
  private onListen(msg: ControlOf<'notify-listen'>): void {
    let listener = this.listeners.get(msg.database)
    if (msg.on === 0) {
      listener?.unlisten(msg.channel)
      if (listener !== undefined && listener.channelCount === 0) {
        listener.close()
        this.listeners.delete(msg.database)
        this.stateChanged(listener)
      }
      return
    }
    if (listener === undefined) {
      const pool = this.host.listenerPool(msg.database, msg.user)
      if (pool === null) {
        // No pool of it here (cannot happen for a worker with such clients): answered, not hung.
        this.host.log.warn(
          { database: msg.database },
          'no pool to open the notification listener with',
        )
        if (msg.ref > 0) this.ready(msg.database, msg.channel, msg.ref)
        return
      }
      listener = new Listener(pool, this)
      this.listeners.set(msg.database, listener)
    }
    listener.listen(msg.channel, msg.ref)
  }

  private onReady(ref: number): void {
    const channel = this.asked.get(ref)
    if (channel === undefined) return
    this.asked.delete(ref)
    const waiters = channel.waiters
    channel.waiters = null
    if (waiters === null) return
    for (const client of waiters) {
      const state = client.notify
      if (state === null || --state.waiting > 0) continue
      const answer = state.answer
      state.answer = null
      answer?.()
    }
  }

  private onNotification(database: string, name: string, payload: string, pid: number): void {
    const channel = this.byDatabase.get(database)?.get(name)
    if (channel === undefined) return
    const msg = notificationResponse(pid, name, payload)
    for (const client of [...channel.clients]) this.deliver(client, msg)
  }

  // ---- ListenerOwner: what this worker's listening servers report ---------------

  notification(database: string, channel: string, payload: string, pid: number): void {
    this.host.send({ type: 'notification', database, channel, payload, pid })
  }

  ready(database: string, channel: string, ref: number): void {
    this.host.send({ type: 'notify-ready', database, channel, ref })
  }

  stateChanged(listener: Listener): void {
    this.host.send({
      type: 'notify-listener',
      worker: this.host.id,
      database: listener.database.name,
      up: listener.up && this.listeners.get(listener.database.name) === listener ? 1 : 0,
      gaps: listener.gaps,
    })
  }

  /** The worker stops: its listening servers close. */
  close(): void {
    for (const listener of this.listeners.values()) listener.close()
    this.listeners.clear()
  }
}

function noop(): void {}
