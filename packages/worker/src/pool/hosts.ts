import { SessionAttrs } from '@pgbouncer-cluster/protocol/host-role'
import { BreakerState, type BreakerWords } from '@pgbouncer-cluster/protocol/shared-memory'
import type { DatabaseConfig } from '../config-types.ts'
import type { TargetSession } from './target-session.ts'

/**
 * Which host of a database's list a new server goes to, by the breakers the
 * workers share (each host has its own, besides the database's).
 */
export class HostChoice {
  private readonly breaker: BreakerWords
  /** With a host list: the next host to try (round-robin), or the one in use (disable). */
  private cursor: number

  constructor(breaker: BreakerWords, database: DatabaseConfig, workerId: number) {
    this.breaker = breaker
    // round-robin: workers start at different hosts, so their first servers
    // spread too; disable: every worker starts at the first host.
    this.cursor = database.loadBalanceHosts === 'disable' ? 0 : workerId
  }

  /**
   * The host for the next login. A host whose breaker is open (it refused a
   * login or timed out, here or in another worker) is skipped; a half-open
   * one is taken by the one login that claims its probe. With every host
   * down, the next in turn is tried all the same: those logins feed the
   * database's breaker.
   *
   * With target_session_attrs (`roles`), only hosts whose known role fits (or
   * is not known yet) are picked; prefer-standby then takes any host. When
   * none fits (a failover in progress), -1, unless a host that did not fit is
   * due to be logged in to again (TargetSession.recheck) or `mustOpen` (a
   * claimed database probe): then the next in turn.
   */
  pick(database: DatabaseConfig, roles: TargetSession, mustOpen: boolean, now: number): number {
    const n = database.hosts.length
    const any = roles.attrs === SessionAttrs.any
    if (n === 1 && any) return 0
    const start = this.cursor % n
    let chosen = -1
    for (let pass = 0; pass < roles.passes && chosen < 0; pass++) {
      for (let k = 0; k < n; k++) {
        const h = (start + k) % n
        if (!any && !roles.candidate(h, pass)) continue
        const state = this.breaker.hostState(h)
        if (
          state === BreakerState.closed ||
          (state === BreakerState.halfOpen && this.breaker.claimHostProbe(h))
        ) {
          chosen = h
          break
        }
      }
    }
    if (chosen < 0) {
      chosen = any || mustOpen ? start : roles.recheck(start, now)
      if (chosen < 0) return -1
    }
    // round-robin: each login the next host; disable: the same host until it fails.
    this.cursor = database.loadBalanceHosts === 'disable' ? chosen : chosen + 1
    return chosen
  }

  /** Whether a host of the list may still take a login (its breaker is not open). */
  available(database: DatabaseConfig): boolean {
    const n = database.hosts.length
    for (let h = 0; h < n; h++) {
      const state = this.breaker.hostState(h)
      if (state === BreakerState.closed || state === BreakerState.halfOpen) return true
    }
    return false
  }
}

/** A server's index in the host list, when the database has one (-1: a single host). */
export function hostOf(database: DatabaseConfig, hostIndex: number): number {
  const n = database.hosts.length
  return n > 1 && hostIndex < n ? hostIndex : -1
}
