import type { ControlMessage } from '@pgbouncer-cluster/protocol/control'
import {
  BreakerState,
  MAX_HOSTS,
  type SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import type { Logger } from '@pgbouncer-cluster/worker/log'

/**
 * Server login failures in a row that open a database's breaker. PgBouncer
 * backs off after one (server_login_retry); a few in a row keep one dropped
 * connection from locking a database out for the whole cool-down.
 */
export const BREAKER_THRESHOLD = 3

export interface BreakerOptions {
  shared: SharedMemory
  log: Logger
  /** server_login_retry of the running configuration, in seconds: the cool-down. */
  retrySeconds(): number
  /** Sends to every live worker. */
  broadcast(msg: ControlMessage): void
}

interface Entry {
  readonly slot: number
  readonly database: string
  sqlstate: string
  message: string
  seq: number
  timer: NodeJS.Timeout | null
  /** Per host of a host list: the cool-down of a host that is down. */
  readonly hostTimers: (NodeJS.Timeout | null)[]
}

/** Which host of a database's list a login went to, and how many the list has. */
export interface HostOf {
  index: number
  count: number
}

/**
 * The circuit breakers, one per database (PgBouncer's server_login_retry,
 * made cluster-wide). Workers report server logins that fail, and the first
 * success after a failure; the coordinator alone moves the state in shared
 * memory, where workers read it before opening a server:
 *
 *   closed ──N failures in a row──▶ open ──server_login_retry──▶ halfOpen
 *      ▲                              ▲                              │ a worker claims
 *      └────── probe logs in ─────────┴──── probe fails ─── probing ◀┘ the one probe
 *
 * While open, clients get the last error the server gave (broadcast once per
 * opening as a `breaker` message, matched to the shared error sequence).
 *
 * A database with a host list has a breaker per host besides, in the same
 * shared words. One failed login opens a host's breaker (the worker that saw
 * it marks it at once; the coordinator times the cool-down): new logins skip
 * it while another host answers, and clients see nothing. Only failures while
 * no host of the list is closed count toward the database's breaker, so one
 * dead host never opens it while another host answers.
 */
export class Breakers {
  private readonly options: BreakerOptions
  private readonly entries = new Map<string, Entry>()

  constructor(options: BreakerOptions) {
    this.options = options
  }

  loginFailed(
    slot: number,
    database: string,
    sqlstate: string,
    message: string,
    host?: HostOf,
  ): void {
    const entry = this.entry(slot, database)
    entry.sqlstate = sqlstate
    entry.message = message
    const words = this.options.shared.breaker(slot)
    if (host !== undefined && host.count > 1) {
      this.hostFailed(entry, host.index, sqlstate, message)
      // Another host may still answer: the database's breaker is not concerned.
      for (let h = 0; h < host.count; h++) {
        if (words.hostState(h) === BreakerState.closed) return
      }
    }
    const failures = words.failures() + 1
    words.setFailures(failures)
    const state = words.state()
    // A failure while half-open or probing is the probe's (or one that raced it): back to open.
    if (state === BreakerState.halfOpen || state === BreakerState.probing)
      this.open(entry, failures)
    else if (state === BreakerState.closed && failures >= BREAKER_THRESHOLD)
      this.open(entry, failures)
  }

  loginSucceeded(slot: number, database: string, host?: HostOf): void {
    const words = this.options.shared.breaker(slot)
    if (host !== undefined && host.count > 1) {
      const entry = this.entry(slot, database)
      const timer = entry.hostTimers[host.index]
      if (timer) clearTimeout(timer)
      entry.hostTimers[host.index] = null
      if (words.hostState(host.index) !== BreakerState.closed) {
        words.setHostState(host.index, BreakerState.closed)
        this.options.log.info(
          { database, host_index: host.index },
          'host breaker closed: server login succeeded',
        )
      }
    }
    words.setFailures(0)
    if (words.state() === BreakerState.closed) return
    const entry = this.entry(slot, database)
    this.clearTimer(entry)
    words.setState(BreakerState.closed)
    this.options.log.info({ database }, 'circuit breaker closed: server login succeeded')
  }

  /** The error texts of open breakers, for a worker that starts while they are open. */
  messages(): ControlMessage[] {
    const out: ControlMessage[] = []
    for (const e of this.entries.values()) {
      if (this.options.shared.breaker(e.slot).state() === BreakerState.closed) continue
      out.push(this.message(e))
    }
    return out
  }

  /** A worker died: a probe it claimed will never report, so let another worker probe. */
  workerDied(): void {
    for (const e of this.entries.values()) {
      const words = this.options.shared.breaker(e.slot)
      if (words.state() === BreakerState.probing) words.setState(BreakerState.halfOpen)
      for (let h = 0; h < MAX_HOSTS; h++) {
        if (words.hostState(h) === BreakerState.probing) {
          words.setHostState(h, BreakerState.halfOpen)
        }
      }
    }
  }

  /** Reload changed how to reach these databases: the old failures say nothing any more. */
  reset(databases: Iterable<string>): void {
    for (const database of databases) {
      const entry = this.entries.get(database)
      if (entry === undefined) continue
      this.clearTimer(entry)
      this.clearHostTimers(entry)
      const words = this.options.shared.breaker(entry.slot)
      for (let h = 0; h < MAX_HOSTS; h++) words.setHostState(h, BreakerState.closed)
      words.setFailures(0)
      if (words.state() !== BreakerState.closed) {
        words.setState(BreakerState.closed)
        this.options.log.info({ database }, 'circuit breaker closed: configuration reloaded')
      }
    }
  }

  /** The database's slot was freed (an unused automatic database): its breaker goes with it. */
  forget(database: string): void {
    const entry = this.entries.get(database)
    if (entry === undefined) return
    this.clearTimer(entry)
    this.clearHostTimers(entry)
    this.entries.delete(database)
  }

  /** Databases the breakers know of (had a failure). */
  databases(): IterableIterator<string> {
    return this.entries.keys()
  }

  close(): void {
    for (const e of this.entries.values()) {
      this.clearTimer(e)
      this.clearHostTimers(e)
    }
  }

  /**
   * Host `h` refused a login or did not answer: skipped by new logins for
   * server_login_retry, then half-open, when the next login to pick it probes.
   * Failures of logins that started before it was marked find it open with
   * its cool-down running, and change nothing.
   */
  private hostFailed(entry: Entry, h: number, sqlstate: string, message: string): void {
    const words = this.options.shared.breaker(entry.slot)
    const state = words.hostState(h)
    if (state === BreakerState.open && entry.hostTimers[h]) return
    const old = entry.hostTimers[h]
    if (old) clearTimeout(old)
    words.setHostState(h, BreakerState.open)
    const retry = this.options.retrySeconds()
    this.options.log.warn(
      {
        database: entry.database,
        host_index: h,
        sqlstate,
        error: message,
        server_login_retry: retry,
      },
      'host breaker open: new server logins skip this host',
    )
    const timer = setTimeout(() => {
      entry.hostTimers[h] = null
      if (words.hostState(h) !== BreakerState.open) return
      words.setHostState(h, BreakerState.halfOpen)
      this.options.log.info(
        { database: entry.database, host_index: h },
        'host breaker half-open: next login to this host probes',
      )
    }, retry * 1000)
    timer.unref()
    entry.hostTimers[h] = timer
  }

  private open(entry: Entry, failures: number): void {
    const words = this.options.shared.breaker(entry.slot)
    this.clearTimer(entry)
    // Text first, then state: a worker that sees the breaker open finds the
    // server's error beside it in shared memory.
    words.setError(entry.sqlstate, entry.message)
    entry.seq = words.bumpErrorSeq()
    this.options.broadcast(this.message(entry))
    words.setState(BreakerState.open)
    const retry = this.options.retrySeconds()
    this.options.log.warn(
      {
        database: entry.database,
        sqlstate: entry.sqlstate,
        error: entry.message,
        failures,
        server_login_retry: retry,
      },
      'circuit breaker open: clients get the server error until a probe logs in',
    )
    entry.timer = setTimeout(() => {
      entry.timer = null
      if (words.state() !== BreakerState.open) return
      words.setState(BreakerState.halfOpen)
      this.options.log.info(
        { database: entry.database },
        'circuit breaker half-open: next login probes',
      )
    }, retry * 1000)
    entry.timer.unref()
  }

  private message(e: Entry): ControlMessage {
    return {
      type: 'breaker',
      database: e.database,
      seq: e.seq,
      sqlstate: e.sqlstate,
      message: e.message,
    }
  }

  private entry(slot: number, database: string): Entry {
    let entry = this.entries.get(database)
    if (entry === undefined) {
      entry = {
        slot,
        database,
        sqlstate: '',
        message: '',
        seq: 0,
        timer: null,
        hostTimers: new Array<NodeJS.Timeout | null>(MAX_HOSTS).fill(null),
      }
      this.entries.set(database, entry)
    }
    return entry
  }

  private clearTimer(entry: Entry): void {
    if (entry.timer !== null) clearTimeout(entry.timer)
    entry.timer = null
  }

  private clearHostTimers(entry: Entry): void {
    for (let h = 0; h < MAX_HOSTS; h++) {
      const timer = entry.hostTimers[h]
      if (timer) clearTimeout(timer)
      entry.hostTimers[h] = null
    }
  }
}
