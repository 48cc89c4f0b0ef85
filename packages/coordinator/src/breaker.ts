import type { ControlMessage } from '@pgbouncer-cluster/protocol/control'
import {
  BreakerState,
  MAX_HOSTS,
  type SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import type { Logger } from '@pgbouncer-cluster/worker/log'
import { LoginFailureKind, retrySoon } from '@pgbouncer-cluster/worker/server-restart'

/**
 * Server login failures in a row that open a database's breaker. PgBouncer
 * backs off after one (server_login_retry); a few in a row keep one dropped
 * connection from locking a database out for the whole cool-down.
 */
export const BREAKER_THRESHOLD = 3

/**
 * The first cool-down after a failure that may be retried soon (a restart, a
 * refused connection): doubled at each reopening, up to server_login_retry.
 */
export const FIRST_RETRY_MS = 100

/**
 * How long a database that said it was restarting may refuse connections
 * before its clients get the error (at most server_login_retry): the gap
 * between the old postmaster and the new one, about 0.2 s for `pg_ctl restart`.
 */
export const RESTART_GRACE_MS = 5000

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
  /** What the last failure said of the server (worker/src/server-restart.ts). */
  kind: number
  seq: number
  timer: NodeJS.Timeout | null
  /** Openings since the breaker last closed: how often the next cool-down is doubled. */
  opens: number
  /** Runs while a database that said it was restarting refuses connections (RESTART_GRACE_MS). */
  graceTimer: NodeJS.Timeout | null
  /** Per host of a host list: the cool-down of a host that is down. */
  readonly hostTimers: (NodeJS.Timeout | null)[]
  readonly hostOpens: number[]
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
 * opening as a `breaker` message, matched to the shared error sequence),
 * unless the database is restarting (57P03 and the like; then the refusals of
 * the restart's gap, for RESTART_GRACE_MS): then they wait, within
 * query_wait_timeout, as the `clients wait` word says. After a failure that
 * may be retried soon, the cool-down is 100 ms, doubled at each reopening up
 * to server_login_retry, so a restart of 0.2 s costs clients well under a
 * second; after a refused login (a password, a role) it is server_login_retry.
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

  /** `kind`: what the failure says of the server; absent, the last failure's again. */
  loginFailed(
    slot: number,
    database: string,
    sqlstate: string,
    message: string,
    host?: HostOf,
    kind?: number,
  ): void {
    const entry = this.entry(slot, database)
    entry.sqlstate = sqlstate
    entry.message = message
    if (kind !== undefined) entry.kind = kind
    const words = this.options.shared.breaker(slot)
    this.noteRestart(entry, kind)
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

  /**
   * A worker saw PostgreSQL end a logged-in server in a shutdown or a crash
   * (and already set the `clients wait` word): the refusals that may follow
   * are the restart's gap, within the grace.
   */
  restarting(slot: number, database: string, sqlstate: string, message: string): void {
    const entry = this.entry(slot, database)
    this.clearGrace(entry)
    this.options.shared.breaker(slot).setClientsWait(true)
    this.options.log.info(
      { database, sqlstate, error: message },
      'database restarting: clients wait for its servers',
    )
  }

  loginSucceeded(slot: number, database: string, host?: HostOf): void {
    const words = this.options.shared.breaker(slot)
    const known = this.entries.get(database)
    if (known !== undefined) {
      known.opens = 0
      this.clearGrace(known)
    }
    if (words.clientsWait()) words.setClientsWait(false)
    if (host !== undefined && host.count > 1) {
      const entry = this.entry(slot, database)
      const timer = entry.hostTimers[host.index]
      if (timer) clearTimeout(timer)
      entry.hostTimers[host.index] = null
      entry.hostOpens[host.index] = 0
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
      this.clearGrace(entry)
      entry.opens = 0
      entry.hostOpens.fill(0)
      const words = this.options.shared.breaker(entry.slot)
      for (let h = 0; h < MAX_HOSTS; h++) words.setHostState(h, BreakerState.closed)
      words.setFailures(0)
      words.setClientsWait(false)
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
    this.clearGrace(entry)
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
      this.clearGrace(e)
    }
  }

  /**
   * Whether waiting clients keep waiting. A database that says it is starting
   * up or shutting down will take logins again soon: its clients wait. A
   * restart also has a gap in which nothing listens; refusals that follow the
   * restart's errors, or that are the first since the database last took a
   * login (the worker sets the word for those), keep them waiting for
   * RESTART_GRACE_MS (at most server_login_retry), after which the database is
   * down and they get the error. Any other failure gives them the error at once.
   */
  private noteRestart(entry: Entry, kind: number | undefined): void {
    const words = this.options.shared.breaker(entry.slot)
    if (kind === undefined) return
    if (kind === LoginFailureKind.restarting) {
      // The worker set the word already; set again, it is the coordinator's.
      this.clearGrace(entry)
      words.setClientsWait(true)
      return
    }
    if (kind === LoginFailureKind.unreachable && words.clientsWait()) {
      if (entry.graceTimer !== null) return
      const grace = Math.min(RESTART_GRACE_MS, this.options.retrySeconds() * 1000)
      entry.graceTimer = setTimeout(() => {
        entry.graceTimer = null
        if (!words.clientsWait()) return
        words.setClientsWait(false)
        this.options.log.warn(
          { database: entry.database, error: entry.message, grace_ms: grace },
          'database did not come back within the grace: clients get the error',
        )
      }, grace)
      entry.graceTimer.unref()
      return
    }
    this.clearGrace(entry)
    words.setClientsWait(false)
  }

  private clearGrace(entry: Entry): void {
    if (entry.graceTimer !== null) clearTimeout(entry.graceTimer)
    entry.graceTimer = null
  }

  /** The cool-down before the next login: a backoff from FIRST_RETRY_MS where that is safe. */
  private coolDownMs(kind: number, opens: number): number {
    const retry = this.options.retrySeconds() * 1000
    if (!retrySoon(kind)) return retry
    return Math.min(FIRST_RETRY_MS * 2 ** Math.min(opens, 20), retry)
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
    const coolDown = this.coolDownMs(entry.kind, entry.hostOpens[h]!++)
    this.options.log.warn(
      {
        database: entry.database,
        host_index: h,
        sqlstate,
        error: message,
        retry_ms: coolDown,
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
    }, coolDown)
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
    const coolDown = this.coolDownMs(entry.kind, entry.opens++)
    this.options.log.warn(
      {
        database: entry.database,
        sqlstate: entry.sqlstate,
        error: entry.message,
        failures,
        retry_ms: coolDown,
      },
      words.clientsWait()
        ? 'circuit breaker open: clients wait while the database restarts, a probe logs in after the cool-down'
        : 'circuit breaker open: clients get the server error until a probe logs in',
    )
    entry.timer = setTimeout(() => {
      entry.timer = null
      if (words.state() !== BreakerState.open) return
      words.setState(BreakerState.halfOpen)
      this.options.log.info(
        { database: entry.database },
        'circuit breaker half-open: next login probes',
      )
    }, coolDown)
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
        kind: LoginFailureKind.refused,
        seq: 0,
        timer: null,
        opens: 0,
        graceTimer: null,
        hostTimers: new Array<NodeJS.Timeout | null>(MAX_HOSTS).fill(null),
        hostOpens: new Array<number>(MAX_HOSTS).fill(0),
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
