import type { ServerAddress } from '../address.ts'
import { describeAddress } from '../address.ts'
import { SqlState, Texts } from '../errors.ts'
import type { LoginFailure } from '../server.ts'

/**
 * A failed login as clients see it: PostgreSQL's own error with its SQLSTATE
 * (28P01, 3D000, 53300, 57P03, ...); when the server could not be reached,
 * 08006 naming the address and the cause.
 */
export function clientError(
  address: ServerAddress | null,
  failure: LoginFailure,
): { sqlstate: string; message: string } {
  if (failure.fromServer || failure.code !== CONNECTION_FAILURE) {
    return { sqlstate: failure.code, message: failure.message }
  }
  if (address === null) {
    return { sqlstate: CONNECTION_FAILURE, message: `${Texts.cannotConnect}: ${failure.message}` }
  }
  const errno = /\b(E[A-Z_]{3,})\b/.exec(failure.message)?.[1]
  const cause = (errno !== undefined ? ERRNO_TEXT[errno] : undefined) ?? failure.message
  return {
    sqlstate: CONNECTION_FAILURE,
    message: `${Texts.cannotConnect} at ${describeAddress(address)}: ${cause}`,
  }
}

const CONNECTION_FAILURE = SqlState.ConnectionFailure
const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset by peer',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network is unreachable',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name lookup failed',
  // A unix socket: no server listens there, or the pooler may not open it.
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
}
