import {
  HostRole,
  mismatchText,
  roleFits,
  roleOf,
  SessionAttrs,
  sessionAttrsCode,
} from '@pgbouncer-cluster/protocol/host-role'
import { BreakerState, type BreakerWords } from '@pgbouncer-cluster/protocol/shared-memory'
import type { DatabaseConfig } from '../config-types.ts'

/**
 * target_session_attrs for one pool: which hosts of its database's list a
 * server may be on, by the role every worker's logins wrote to shared memory
 * (the role word beside each host's breaker). A host whose role is unknown is
 * tried, and its server's login tells. The pool asks it at three points only:
 * when it picks a host, when a server logs in or reports in_hot_standby, and
 * when a server comes back (a known role that no longer fits closes it then,
 * never mid-transaction). With `any` each of them is one field test.
 */
export class TargetSession {
  /** SessionAttrs code of the entry; any: nothing is checked. */
  attrs: number
  private database: DatabaseConfig
  /** When a host that did not fit was last logged in to again, to see if it changed (worker clock ms). */
  private lastRecheck = 0
  private readonly breaker: BreakerWords
  private warnedNoReport = false

  constructor(database: DatabaseConfig, breaker: BreakerWords) {
    this.attrs = sessionAttrsCode(database.targetSessionAttrs)
    this.database = database
    this.breaker = breaker
  }

  /** A reload may change target_session_attrs. */
  reconfigure(database: DatabaseConfig): void {
    this.database = database
    this.attrs = sessionAttrsCode(database.targetSessionAttrs)
  }

  /**
   * Whether a new server may go to host h on this pass: pass 0 takes the
   * hosts that fit or whose role is unknown; pass 1, prefer-standby's
   * fallback, any host.
   */
  candidate(h: number, pass: number): boolean {
    if (pass > 0) return true
    const role = this.breaker.hostRole(h)
    return role === HostRole.unknown || roleFits(this.attrs, role)
  }

  /** Host h's breaker lets a login through: closed, or its half-open probe claimed here. */
  private takesLogin(h: number): boolean {
    const state = this.breaker.hostState(h)
    return (
      state === BreakerState.closed ||
      (state === BreakerState.halfOpen && this.breaker.claimHostProbe(h))
    )
  }

  /** Passes over the host list pickHost makes: prefer-standby falls back to any host. */
  get passes(): number {
    return this.attrs === SessionAttrs.preferStandby ? 2 : 1
  }

  /**
   * No host fits, and clients wait (a failover in progress): a host that is
   * up but did not fit is logged in to again, at most every RECHECK_MS per
   * pool, since only a login sees a promotion there. -1 when none is due.
   */
  recheck(start: number, now: number): number {
    if (now - this.lastRecheck < RECHECK_MS) return -1
    const n = this.database.hosts.length
    for (let k = 0; k < n; k++) {
      const h = (start + k) % n
      if (this.takesLogin(h)) {
        this.lastRecheck = now
        return h
      }
    }
    return -1
  }

  /**
   * A server's login ended: its host's role goes to shared memory for every
   * worker. Whether the server may serve this pool.
   */
  loggedIn(host: number, params: ReadonlyMap<string, string>, log: (msg: string) => void): boolean {
    const hot = params.get('in_hot_standby')
    if (hot === undefined) {
      // PostgreSQL before 14 reports neither value: the role stays unknown.
      if (this.attrs !== SessionAttrs.any && !this.warnedNoReport) {
        this.warnedNoReport = true
        log(
          'server reports no in_hot_standby (PostgreSQL before 14): target_session_attrs is not checked',
        )
      }
      return true
    }
    const role = roleOf(hot, params.get('default_transaction_read_only'))
    if (this.breaker.hostRole(host) !== role) this.breaker.setHostRole(host, role)
    return this.fits(host)
  }

  /**
   * A logged-in server reported in_hot_standby (a promotion): its host's role
   * changes for everyone. Whether the server still fits this pool.
   */
  reported(host: number, inHotStandby: string): boolean {
    const old = this.breaker.hostRole(host)
    const readOnly = (old & HostRole.readOnly) !== 0 ? 'on' : 'off'
    const role = roleOf(inHotStandby, readOnly)
    if (old !== role) this.breaker.setHostRole(host, role)
    return this.fits(host)
  }

  /** Whether a server on host h may serve this pool's next client. */
  fits(h: number): boolean {
    if (this.attrs === SessionAttrs.any) return true
    const role = this.breaker.hostRole(h)
    if (role === HostRole.unknown || roleFits(this.attrs, role)) return true
    // prefer-standby: a primary serves while no host that is or may be a standby is up.
    return this.attrs === SessionAttrs.preferStandby && !this.standbyMayBeUp()
  }

  /** prefer-standby: a host up (breaker closed) that is a standby, or whose role is not known yet. */
  private standbyMayBeUp(): boolean {
    const n = this.database.hosts.length
    for (let h = 0; h < n; h++) {
      if (this.breaker.hostState(h) !== BreakerState.closed) continue
      const role = this.breaker.hostRole(h)
      if (role === HostRole.unknown || (role & HostRole.standby) !== 0) return true
    }
    return false
  }

  /**
   * A host that is up (breaker closed) and fits; with `standbyOnly` and
   * prefer-standby, a standby. -1 when none: clients wait for a failover.
   */
  upHost(standbyOnly = false): number {
    const n = this.database.hosts.length
    for (let h = 0; h < n; h++) {
      if (this.breaker.hostState(h) !== BreakerState.closed) continue
      const role = this.breaker.hostRole(h)
      if (role === HostRole.unknown) {
        if (!standbyOnly) return h
      } else if (roleFits(this.attrs, role)) return h
    }
    return -1
  }

  /** Whether standbyToTry() would find a host now, without claiming a probe. */
  standbyDue(now: number): boolean {
    if (now - this.lastRecheck < RECHECK_MS) return false
    const n = this.database.hosts.length
    for (let h = 0; h < n; h++) {
      const role = this.breaker.hostRole(h)
      if (role !== HostRole.unknown && (role & HostRole.standby) === 0) continue
      const state = this.breaker.hostState(h)
      if (state === BreakerState.closed || state === BreakerState.halfOpen) return true
    }
    return false
  }

  /**
   * prefer-standby served by a primary: a host that may be a standby and
   * takes a login (unknown or standby, breaker closed, or its half-open probe
   * claimed), at most every RECHECK_MS per pool; -1 when none or not due.
   */
  standbyToTry(now: number): number {
    if (now - this.lastRecheck < RECHECK_MS) return -1
    const n = this.database.hosts.length
    for (let h = 0; h < n; h++) {
      const role = this.breaker.hostRole(h)
      if (role !== HostRole.unknown && (role & HostRole.standby) === 0) continue
      if (this.takesLogin(h)) {
        this.lastRecheck = now
        return h
      }
    }
    return -1
  }

  /** The error a client waiting past query_wait_timeout gets when no host fitted. */
  waitText(): string | null {
    // prefer-standby takes any host that is up: its clients wait only for a host at all.
    const attrs = this.attrs
    if (attrs === SessionAttrs.any || attrs === SessionAttrs.preferStandby) return null
    if (this.upHost() >= 0) return null
    const why = mismatchText(this.attrs)
    const { name, targetSessionAttrs } = this.database
    return `query_wait_timeout: no host of database "${name}" fits target_session_attrs=${targetSessionAttrs}${why === '' ? '' : `: ${why}`}`
  }
}

/** How often a pool whose clients wait logs in to a host that did not fit, to see a promotion. */
export const RECHECK_MS = 250
