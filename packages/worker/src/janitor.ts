import { noticeResponse } from '@pgbouncer-cluster/protocol/serializer'
import type { ClientSession } from './client.ts'
import type { UserConfig, WorkerConfig } from './config-types.ts'
import { fatal, Texts } from './errors.ts'
import type { Logger } from './log.ts'
import type { Pool, PoolClient } from './pool/pool.ts'

/** What the janitor sees of its worker. */
export interface JanitorHost {
  readonly config: WorkerConfig
  readonly log: Logger
  readonly pools: ReadonlyMap<string, Pool>
  readonly sessions: ReadonlyMap<number, ClientSession>
  /** Sessions still logging in, in the order they connected. */
  readonly loggingIn: ReadonlySet<ClientSession>
  /** Sessions in the middle of a message. */
  readonly unfinished: ReadonlySet<ClientSession>
  /** CancelRequests on their way to PostgreSQL, by when they were sent. */
  readonly cancels: Map<{ destroy(): void }, number>
}

/** PgBouncer's NOTICE to a client queued longer than query_wait_notify (1.25). */
const WAIT_NOTICE = noticeResponse({
  severity: 'NOTICE',
  code: '00000',
  message: 'No server connection available in postgres backend, client being queued',
})

/** The timeouts of one pool's servers: its user's [users] values win over the global ones. */
interface Limits {
  query: number
  idleTransaction: number
  transaction: number
}

/**
 * The worker's timers in one place, as PgBouncer's janitor.c: on each tick of
 * the worker (100 ms) it compares the timestamps sessions and servers keep on
 * the worker's coarse clock with the timeouts, and acts on the few that are
 * over. The pass-through path only stores those timestamps; no timer is
 * armed or cleared per transaction. With no client-side timeout configured
 * the sessions are not even visited.
 *
 * Semantics follow PgBouncer (janitor.c, 1.25):
 * - query_timeout: a linked server that is not ready (a request unanswered or
 *   a transaction open) while the client last sent longer ago than the
 *   timeout. So, as in PgBouncer, it also ends a transaction left idle.
 * - idle_transaction_timeout: the server's last word was ReadyForQuery in a
 *   transaction (T or E) and the client has been silent since, for that long.
 * - transaction_timeout: the transaction began longer ago than the timeout.
 * - client_idle_timeout: a logged-in client without a server, silent that long.
 * - query_wait_timeout, and query_timeout for a client still waiting.
 * - query_wait_notify: one NOTICE to a client queued longer than that.
 * - cancel_wait_timeout: a CancelRequest PostgreSQL has not taken by then is dropped.
 * - client_login_timeout: a client not logged in that long after it connected.
 *   Only the clients still logging in are visited, oldest first, up to the
 *   first within its time: a login costs no timer. The same bound closes a
 *   logged-in client that stopped in the middle of a message: sent nothing
 *   for that long since (PgBouncer has no such bound, and a client stopped
 *   halfway through a message on a linked server held it for ever).
 * Each ends the client with PgBouncer's FATAL (08P01) text; a linked server is
 * closed with it, never handed to another client.
 */
export class Janitor {
  private readonly host: JanitorHost
  /** Whether any [users] entry sets a timeout, for the config last seen. */
  private userTimeouts = false
  private seenConfig: WorkerConfig | null = null

  constructor(host: JanitorHost) {
    this.host = host
  }

  tick(now: number): void {
    const config = this.host.config
    if (config !== this.seenConfig) {
      this.seenConfig = config
      this.userTimeouts = Object.values(config.users).some(hasTimeout)
    }
    const s = config.settings
    for (const pool of this.host.pools.values()) {
      if (pool.waitingCount > 0) this.waiting(pool, now)
      pool.tick(now)
    }
    if (
      this.userTimeouts ||
      s.queryTimeout > 0 ||
      s.idleTransactionTimeout > 0 ||
      s.transactionTimeout > 0 ||
      s.clientIdleTimeout > 0 ||
      s.queryWaitNotify > 0 ||
      s.serverFastClose
    ) {
      this.sessions(now)
    }
    if (s.cancelWaitTimeout > 0 && this.host.cancels.size > 0) this.cancels(now)
    if (s.clientLoginTimeout > 0 && this.host.loggingIn.size > 0) {
      this.logins(now, s.clientLoginTimeout * 1000)
    }
    if (s.clientLoginTimeout > 0 && this.host.unfinished.size > 0) {
      this.stalled(now, s.clientLoginTimeout * 1000)
    }
  }

  /** Clients silent for `limit` in the middle of a message: what they hold goes back. */
  private stalled(now: number, limit: number): void {
    for (const session of this.host.unfinished) {
      // One waiting for a server is not read meanwhile; query_wait_timeout bounds it.
      if (now - session.lastRequest <= limit || session.waitingSince !== 0) continue
      // Closing the client takes it out of the set; a linked server, not clean, closes too.
      session.disconnect(Texts.incompleteMessage)
    }
  }

  /** client_login_timeout. The set is in connection order: the first one within its time ends the visit. */
  private logins(now: number, limit: number): void {
    for (const session of this.host.loggingIn) {
      if (now - session.connectedAt <= limit) return
      // Failing the session takes it out of the set (loginEnded).
      session.loginTimedOut()
    }
  }

  /** Clients waiting for a server: query_timeout and query_wait_timeout. */
  private waiting(pool: Pool, now: number): void {
    const s = this.host.config.settings
    const queryTimeout = s.queryTimeout * 1000
    for (const client of pool.waitingClients()) {
      const age = now - client.waitingSince
      let reason: string | null = null
      if (queryTimeout > 0 && age > queryTimeout) reason = Texts.queryTimeoutWaiting
      else {
        const limit = this.queryWaitTimeout(pool, client) * 1000
        // No host fitted target_session_attrs all along: say so, as libpq would.
        if (limit > 0 && age > limit) reason = pool.roles.waitText() ?? Texts.queryWaitTimeout
      }
      if (reason === null) continue
      pool.cancelWait(client)
      client.fail(fatal(reason))
    }
  }

  /** The user's value (-1 in the file: unset), else the database's, else the global one. */
  private queryWaitTimeout(pool: Pool, client: PoolClient): number {
    const user = this.host.config.users[client.user ?? pool.user]?.queryWaitTimeout
    return user ?? pool.database.queryWaitTimeout ?? this.host.config.settings.queryWaitTimeout
  }

  private sessions(now: number): void {
    const config = this.host.config
    const s = config.settings
    // Per pool, once per tick: the limits of its servers' user.
    let limitsPool: Pool | null = null
    let limits: Limits = { query: 0, idleTransaction: 0, transaction: 0 }
    for (const session of this.host.sessions.values()) {
      const pool = session.pool
      if (session.state !== 'active' || pool === null) continue
      const server = session.server
      if (server === null) {
        if (session.waitingSince !== 0) {
          if (
            s.queryWaitNotify > 0 &&
            session.notifiedWait !== session.waitingSince &&
            Math.floor((now - session.waitingSince) / 1000) > s.queryWaitNotify
          ) {
            session.notifiedWait = session.waitingSince
            session.write(WAIT_NOTICE)
          }
          continue
        }
        const idle = override(config.users[session.user]?.clientIdleTimeout, s.clientIdleTimeout)
        if (idle > 0 && now - session.lastRequest > idle * 1000) {
          session.disconnect(Texts.clientIdleTimeout)
        }
        continue
      }
      if (pool !== limitsPool) {
        limitsPool = pool
        limits = poolLimits(config.users[pool.user], s)
      }
      let reason: string | null = null
      if (session.busy) {
        // A message still arriving is a request in flight from its first byte,
        // as PgBouncer times a query from its packet's header.
        const asked = session.unfinished?.since ?? session.lastRequest
        if (limits.query > 0 && now - asked > limits.query * 1000) {
          reason = Texts.queryTimeout
        } else if (
          limits.idleTransaction > 0 &&
          session.idleTxSince !== 0 &&
          now - session.idleTxSince > limits.idleTransaction * 1000
        ) {
          reason = Texts.idleTransactionTimeout
        } else if (
          limits.transaction > 0 &&
          session.xactStart !== 0 &&
          now - session.xactStart > limits.transaction * 1000
        ) {
          reason = Texts.transactionTimeout
        }
      } else if (
        s.serverFastClose &&
        server.closeNeeded &&
        session.mode === 'session' &&
        !pool.paused
      ) {
        // RECONNECT or a reload moved the database: a session between
        // transactions is ended now rather than when the client leaves
        // (not while PAUSE or a shutdown waits for servers).
        reason = Texts.configurationChanged
      }
      if (reason === null) continue
      this.host.log.info(
        { server: server.id, client: session.pid, backend_pid: server.pid, reason },
        'closing server',
      )
      // The server is linked and not clean: closing the client closes it too.
      session.disconnect(reason)
    }
  }

  /** cancel_wait_timeout: a forwarded CancelRequest PostgreSQL has not taken in time. */
  private cancels(now: number): void {
    const limit = this.host.config.settings.cancelWaitTimeout * 1000
    for (const [socket, since] of this.host.cancels) {
      if (now - since <= limit) continue
      this.host.cancels.delete(socket)
      this.host.log.warn('cancel request to server not taken in cancel_wait_timeout, dropped')
      socket.destroy()
    }
  }
}

/** A [users] timeout above 0 replaces the global one, as in PgBouncer. */
function override(user: number | undefined, global: number): number {
  return user !== undefined && user > 0 ? user : global
}

function poolLimits(user: UserConfig | undefined, s: WorkerConfig['settings']): Limits {
  return {
    query: override(user?.queryTimeout, s.queryTimeout),
    idleTransaction: override(user?.idleTransactionTimeout, s.idleTransactionTimeout),
    transaction: override(user?.transactionTimeout, s.transactionTimeout),
  }
}

function hasTimeout(user: UserConfig): boolean {
  return (
    (user.queryTimeout ?? 0) > 0 ||
    (user.idleTransactionTimeout ?? 0) > 0 ||
    (user.transactionTimeout ?? 0) > 0 ||
    (user.clientIdleTimeout ?? 0) > 0
  )
}
