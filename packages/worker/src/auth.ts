import { randomBytes, timingSafeEqual } from 'node:crypto'
import { isMd5Hash, md5Hash, md5Verify } from '@pgbouncer-cluster/protocol/auth/md5'
import {
  isScramSecret,
  parseScramSecret,
  SCRAM_DEFAULT_ITERATIONS,
  ScramServer,
  scramSecret,
} from '@pgbouncer-cluster/protocol/auth/scram'
import { FrontendCode } from '@pgbouncer-cluster/protocol/messages'
import {
  parsePasswordMessage,
  parseSASLInitialResponse,
  parseSASLResponse,
} from '@pgbouncer-cluster/protocol/parser'
import {
  authenticationCleartextPassword,
  authenticationMD5Password,
  authenticationSASL,
  authenticationSASLContinue,
  authenticationSASLFinal,
} from '@pgbouncer-cluster/protocol/serializer'
import type { AuthType } from './config-types.ts'

/**
 * Client authentication against auth_file, as PgBouncer does it: the stored
 * value may be a plaintext password, an md5 hash or a SCRAM secret, and the
 * method follows both auth_type and what is stored (an md5 auth_type with a
 * SCRAM secret stored runs SCRAM).
 */
export type AuthStep =
  | { kind: 'send'; message: Buffer }
  | {
      kind: 'ok'
      /** SASLFinal to send before AuthenticationOk after a SCRAM exchange. */
      final: Buffer | null
      /** Recovered when auth_file holds a SCRAM secret: lets the pool log in to PostgreSQL. */
      scramKeys: { clientKey: Buffer; serverKey: Buffer } | null
    }
  | {
      kind: 'fail'
      /** The client sent an empty password: PgBouncer names that apart, before any check. */
      empty?: true
    }

const OK: AuthStep = { kind: 'ok', final: null, scramKeys: null }
const FAIL: AuthStep = { kind: 'fail' }
const EMPTY: AuthStep = { kind: 'fail', empty: true }

type Method = 'none' | 'plain' | 'md5' | 'scram'

export class ClientAuth {
  private readonly user: string
  private readonly stored: string | undefined
  private readonly method: Method
  private salt: Buffer | null = null
  private scram: ScramServer | null = null
  private scramFromSecret = false
  private scramStage = 0
  /** scram_iterations: for the secrets made here from a plaintext password (PgBouncer 1.25). */
  private readonly iterations: number

  constructor(
    authType: AuthType,
    user: string,
    stored: string | undefined,
    hasAuthFile: boolean,
    iterations = SCRAM_DEFAULT_ITERATIONS,
  ) {
    this.user = user
    this.stored = stored
    this.iterations = iterations
    this.method = chooseMethod(authType, stored, hasAuthFile)
  }

  /** The first message toward the client, or `ok` when no password is asked. */
  start(): AuthStep {
    switch (this.method) {
      case 'none':
        return OK
      case 'plain':
        return { kind: 'send', message: authenticationCleartextPassword() }
      case 'md5':
        this.salt = randomBytes(4)
        return { kind: 'send', message: authenticationMD5Password(this.salt) }
      case 'scram':
        return { kind: 'send', message: authenticationSASL(['SCRAM-SHA-256']) }
    }
  }

  /**
   * A PasswordMessage / SASL message arrived. Throws ProtocolError/ScramError on malformed input.
   * An empty password never logs in, whichever side has it, as in PgBouncer's
   * check_client_passwd: an empty auth_file entry (or auth_query answer) is no password.
   */
  next(msg: Buffer): AuthStep {
    if (msg[0] !== FrontendCode.PasswordMessage) return FAIL
    switch (this.method) {
      case 'plain': {
        const given = parsePasswordMessage(msg)
        return given === '' ? EMPTY : this.checkPlain(given)
      }
      case 'md5': {
        const given = parsePasswordMessage(msg)
        if (given === '') return EMPTY
        if (this.stored === undefined || this.stored === '') return FAIL
        return md5Verify(this.user, this.stored, this.salt!, given) ? OK : FAIL
      }
      case 'scram':
        return this.scramStep(msg)
      default:
        return FAIL
    }
  }

  private checkPlain(given: string): AuthStep {
    const stored = this.stored
    if (stored === undefined || stored === '') return FAIL
    let ok: boolean
    if (isMd5Hash(stored)) ok = equal(md5Hash(this.user, given), stored)
    else if (isScramSecret(stored)) {
      const secret = parseScramSecret(stored)!
      const derived = parseScramSecret(
        scramSecret(given, { salt: secret.salt, iterations: secret.iterations }),
      )!
      ok = timingSafeEqual(derived.storedKey, secret.storedKey)
    } else ok = equal(given, stored)
    return ok ? OK : FAIL
  }

  private scramStep(msg: Buffer): AuthStep {
    if (this.scramStage === 0) {
      this.scramStage = 1
      const { mechanism, data } = parseSASLInitialResponse(msg)
      if (mechanism !== 'SCRAM-SHA-256') return FAIL
      this.scram = this.makeScramServer()
      // Unknown users still get a full exchange (with a throwaway secret) so the
      // answer does not reveal which user names exist.
      return {
        kind: 'send',
        message: authenticationSASLContinue(this.scram.handleClientFirst(data)),
      }
    }
    if (this.scramStage !== 1 || this.scram === null || this.stored === undefined) return FAIL
    this.scramStage = 2
    const result = this.scram.handleClientFinal(parseSASLResponse(msg))
    if (!result.ok) return FAIL
    const secret = this.scramFromSecret ? parseScramSecret(this.stored)! : null
    return {
      kind: 'ok',
      final: authenticationSASLFinal(result.serverFinal),
      scramKeys: secret ? { clientKey: result.clientKey, serverKey: secret.serverKey } : null,
    }
  }

  private makeScramServer(): ScramServer {
    const stored = this.stored
    if (stored !== undefined && isScramSecret(stored)) {
      this.scramFromSecret = true
      return new ScramServer(parseScramSecret(stored)!)
    }
    const iterations = this.iterations
    if (stored !== undefined && stored !== '' && !isMd5Hash(stored))
      return ScramServer.fromPassword(stored, { iterations })
    // Nothing to check against (an unknown user, an md5 hash, an empty
    // password): a throwaway secret no proof matches, after a full exchange.
    return ScramServer.fromPassword(randomBytes(16).toString('hex'), { iterations })
  }
}

function chooseMethod(
  authType: AuthType,
  stored: string | undefined,
  hasAuthFile: boolean,
): Method {
  switch (authType) {
    case 'any':
      return 'none'
    case 'trust':
      return 'none'
    case 'plain':
      return 'plain'
    case 'md5':
      return stored !== undefined && isScramSecret(stored) ? 'scram' : 'md5'
    case 'scram-sha-256':
      return 'scram'
    default:
      // cert is checked by the session (client.ts); hba/pam are refused by
      // the config loader. Without an auth file
      // there is nothing to check against.
      return hasAuthFile ? 'md5' : 'none'
  }
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}
