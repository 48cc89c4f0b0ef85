import type { ControlMessage } from '@pgbouncer-cluster/protocol/control'
import { BreakerState, type SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
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
 */
export class Breakers {
  private readonly options: BreakerOptions
  private readonly entries = new Map<string, Entry>()

  constructor(options: BreakerOptions) {
    this.options = options
  }

  loginFailed(slot: number, database: string, sqlstate: string, message: string): void {
    const entry = this.entry(slot, database)
    entry.sqlstate = sqlstate
    entry.message = message
    const words = this.options.shared.breaker(slot)
    const failures = words.failures() + 1
    words.setFailures(failures)
    const state = words.state()
    // A failure while half-open or probing is the probe's (or one that raced it): back to open.
    if (state === BreakerState.halfOpen || state === BreakerState.probing)
      this.open(entry, failures)
    else if (state === BreakerState.closed && failures >= BREAKER_THRESHOLD)
      this.open(entry, failures)
  }

  loginSucceeded(slot: number, database: string): void {
    const words = this.options.shared.breaker(slot)
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
    }
  }

  /** Reload changed how to reach these databases: the old failures say nothing any more. */
  reset(databases: Iterable<string>): void {
    for (const database of databases) {
      const entry = this.entries.get(database)
      if (entry === undefined) continue
      this.clearTimer(entry)
      const words = this.options.shared.breaker(entry.slot)
      words.setFailures(0)
      if (words.state() !== BreakerState.closed) {
        words.setState(BreakerState.closed)
        this.options.log.info({ database }, 'circuit breaker closed: configuration reloaded')
      }
    }
  }

  /** Databases the breakers know of (had a failure). */
  databases(): IterableIterator<string> {
    return this.entries.keys()
  }

  close(): void {
    for (const e of this.entries.values()) this.clearTimer(e)
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
      entry = { slot, database, sqlstate: '', message: '', seq: 0, timer: null }
      this.entries.set(database, entry)
    }
    return entry
  }

  private clearTimer(entry: Entry): void {
    if (entry.timer !== null) clearTimeout(entry.timer)
    entry.timer = null
  }
}
