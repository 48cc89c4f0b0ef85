import type { ControlMessage, ControlOf } from '@pgbouncer-cluster/protocol/control'
import type { Logger } from '@pgbouncer-cluster/worker/log'

/** One database whose clients listen, as the coordinator routes it. */
interface Database {
  /** The worker that runs its listening server. */
  owner: number
  /** The user the listener logs in as (the first listening client's pool's). */
  user: string
  /** Per channel: the workers with clients listening to it. */
  readonly channels: Map<string, Set<number>>
}

/** What /metrics shows of one database's listening. */
export interface NotifyFigures {
  database: string
  channels: number
  up: boolean
  gaps: number
  notifications: number
}

interface Figures {
  up: boolean
  /** Gaps the current listener reported, and those of listeners before it (and their moves). */
  reported: number
  before: number
  notifications: number
}

/**
 * LISTEN/NOTIFY in transaction and statement mode, seen from the
 * coordinator: the union of the channels every worker's clients listen to,
 * per database; which worker runs the database's one listening server (the
 * first to ask, and on its death another with listening clients); and the
 * fan-out of each notification to the workers listening to its channel. The
 * listener cannot live here: a server login may need the SCRAM keys that
 * only the worker of a client's login holds, and a socket cannot move
 * between threads.
 */
export class NotifyRouter {
  private readonly databases = new Map<string, Database>()
  /** LISTENs asked of a listener worker, by our ref: who waits for them. */
  private readonly asked = new Map<
    number,
    { database: string; channel: string; waiters: { worker: number; ref: number }[] }
  >()
  private nextRef = 1
  private readonly figures = new Map<string, Figures>()
  private readonly send: (worker: number, msg: ControlMessage) => void
  private readonly log: Logger

  constructor(send: (worker: number, msg: ControlMessage) => void, log: Logger) {
    this.send = send
    this.log = log
  }

  private figuresOf(database: string): Figures {
    let f = this.figures.get(database)
    if (f === undefined)
      this.figures.set(database, (f = { up: false, reported: 0, before: 0, notifications: 0 }))
    return f
  }

  onListen(from: number, msg: ControlOf<'notify-listen'>): void {
    let db = this.databases.get(msg.database)
    if (msg.on === 0) {
      const workers = db?.channels.get(msg.channel)
      if (db === undefined || workers === undefined) return
      workers.delete(from)
      if (workers.size > 0) return
      db.channels.delete(msg.channel)
      this.send(db.owner, { ...msg, worker: db.owner, user: db.user, ref: 0 })
      if (db.channels.size === 0) this.databases.delete(msg.database)
      return
    }
    if (db === undefined) {
      db = { owner: from, user: msg.user, channels: new Map() }
      this.databases.set(msg.database, db)
      this.figuresOf(msg.database)
    }
    let workers = db.channels.get(msg.channel)
    const fresh = workers === undefined
    if (workers === undefined) db.channels.set(msg.channel, (workers = new Set()))
    workers.add(from)
    const waiter = { worker: from, ref: msg.ref }
    for (const ask of this.asked.values()) {
      if (ask.database === msg.database && ask.channel === msg.channel) {
        if (msg.ref > 0) ask.waiters.push(waiter)
        return
      }
    }
    if (!fresh) {
      if (msg.ref > 0)
        this.send(from, {
          type: 'notify-ready',
          database: msg.database,
          channel: msg.channel,
          ref: msg.ref,
        })
      return
    }
    this.ask(db, msg.database, msg.channel, msg.ref > 0 ? [waiter] : [])
  }

  private ask(
    db: Database,
    database: string,
    channel: string,
    waiters: { worker: number; ref: number }[],
  ): void {
    const ref = this.nextRef++
    this.asked.set(ref, { database, channel, waiters })
    this.send(db.owner, {
      type: 'notify-listen',
      worker: db.owner,
      database,
      user: db.user,
      channel,
      on: 1,
      ref,
    })
  }

  onReady(msg: ControlOf<'notify-ready'>): void {
    const ask = this.asked.get(msg.ref)
    if (ask === undefined) return
    this.asked.delete(msg.ref)
    for (const { worker, ref } of ask.waiters)
      this.send(worker, { type: 'notify-ready', database: ask.database, channel: ask.channel, ref })
  }

  onNotification(msg: ControlOf<'notification'>): void {
    const workers = this.databases.get(msg.database)?.channels.get(msg.channel)
    if (workers === undefined) return
    this.figuresOf(msg.database).notifications++
    for (const worker of workers) this.send(worker, msg)
  }

  onListenerState(from: number, msg: ControlOf<'notify-listener'>): void {
    const db = this.databases.get(msg.database)
    if (db !== undefined && db.owner !== from) return
    const f = this.figuresOf(msg.database)
    f.up = msg.up === 1
    f.reported = msg.gaps
  }

  /**
   * A worker died: its clients left their channels. If it ran a listening
   * server, another worker with listening clients opens one and listens to
   * every channel again; the notifications in between are lost (a gap).
   */
  workerGone(id: number): void {
    for (const [name, db] of this.databases) {
      for (const [channel, workers] of db.channels) {
        workers.delete(id)
        if (workers.size === 0) {
          db.channels.delete(channel)
          if (db.owner !== id)
            this.send(db.owner, {
              type: 'notify-listen',
              worker: db.owner,
              database: name,
              user: db.user,
              channel,
              on: 0,
              ref: 0,
            })
        }
      }
      if (db.owner !== id) {
        if (db.channels.size === 0) this.databases.delete(name)
        continue
      }
      const f = this.figuresOf(name)
      f.before += f.reported + (f.up ? 1 : 0)
      f.reported = 0
      f.up = false
      let next = -1
      for (const workers of db.channels.values()) for (const w of workers) if (next < 0) next = w
      if (next < 0) {
        this.databases.delete(name)
        continue
      }
      db.owner = next
      this.log.warn(
        { database: name, worker: next, channels: db.channels.size },
        'notification listener moves to another worker; notifications until it listens again are lost',
      )
      // The LISTENs the dead worker never confirmed are asked again, their waiters kept.
      const waiting = new Map<string, { worker: number; ref: number }[]>()
      for (const [ref, ask] of this.asked) {
        if (ask.database !== name) continue
        this.asked.delete(ref)
        waiting.set(
          ask.channel,
          ask.waiters.filter((w) => w.worker !== id),
        )
      }
      for (const channel of db.channels.keys())
        this.ask(db, name, channel, waiting.get(channel) ?? [])
    }
    // Asks of databases now gone: nobody waits in a live worker that still listens.
    for (const [ref, ask] of this.asked) {
      if (this.databases.has(ask.database)) continue
      this.asked.delete(ref)
      for (const { worker, ref: theirs } of ask.waiters)
        if (worker !== id)
          this.send(worker, {
            type: 'notify-ready',
            database: ask.database,
            channel: ask.channel,
            ref: theirs,
          })
    }
  }

  stats(): NotifyFigures[] {
    const out: NotifyFigures[] = []
    for (const [database, f] of this.figures) {
      out.push({
        database,
        channels: this.databases.get(database)?.channels.size ?? 0,
        up: f.up,
        gaps: f.before + f.reported,
        notifications: f.notifications,
      })
    }
    return out
  }
}
