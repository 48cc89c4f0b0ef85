// What a failed server login says about its server, for the clients waiting
// for one and for when to try again (pool/pool.ts, and the coordinator's breaker).
//
//   restarting   PostgreSQL is there and cannot take a login now: 57P03
//                ("the database system is starting up", "... is shutting
//                down", "... is in recovery mode"), 57P01 and 57P02 (a
//                shutdown or crash ended the login), or it dropped the
//                connection in the middle of the login (reset, closed).
//                Clients wait, within query_wait_timeout; it is tried again
//                soon, and sooner than server_login_retry.
//   unreachable  nothing answers: connection refused, no route, a name that
//                does not resolve, no socket file, server_connect_timeout. The
//                first such failure since the database last took a login, and
//                those right after PostgreSQL said it was restarting (a
//                restart's gap refuses connections too), keep clients waiting
//                for the coordinator's grace; past it they get the error at
//                once. Also tried again soon.
//   refused      PostgreSQL or the pooler refused this login: a password, a
//                role, a database, TLS. Trying again soon would change
//                nothing: server_login_retry.

import type { LoginFailure } from './server.ts'

export const LoginFailureKind = { restarting: 0, unreachable: 1, refused: 2 } as const
export type LoginFailureKindValue = (typeof LoginFailureKind)[keyof typeof LoginFailureKind]

/** SQLSTATEs PostgreSQL ends a login with while it starts, stops or recovers. */
const RESTARTING_STATES: ReadonlySet<string> = new Set(['57P01', '57P02', '57P03'])

/** Errors (Node's codes, as they appear in the message) of a server that went away mid-login. */
const DROPPED = /\b(ECONNRESET|EPIPE)\b|server closed the connection during login/
/**
 * Errors of a server nothing answers for; over a unix socket, a socket file
 * that is not there (PostgreSQL removes it when it stops and makes it when it starts).
 */
const UNANSWERED =
  /\b(ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|ENOENT)\b|server connect timeout/

export function loginFailureKind(failure: LoginFailure): LoginFailureKindValue {
  if (failure.fromServer)
    return RESTARTING_STATES.has(failure.code)
      ? LoginFailureKind.restarting
      : LoginFailureKind.refused
  if (DROPPED.test(failure.message)) return LoginFailureKind.restarting
  if (UNANSWERED.test(failure.message)) return LoginFailureKind.unreachable
  return LoginFailureKind.refused
}

/** Whether the login may be tried again before server_login_retry (a backoff from 100 ms). */
export function retrySoon(kind: number): boolean {
  return kind === LoginFailureKind.restarting || kind === LoginFailureKind.unreachable
}
