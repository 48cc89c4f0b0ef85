// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, for both sides of the pooler:
//   ScramServer — authenticates a client against a stored secret (auth_file / pg_authid copy);
//   ScramClient — authenticates the pooler to PostgreSQL, with a password or with the keys
//                 recovered from the client's proof (PgBouncer's SCRAM pass-through).
//
// Key schedule:  SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, i)
//                ClientKey = HMAC(SaltedPassword, "Client Key")   StoredKey = SHA-256(ClientKey)
//                ServerKey = HMAC(SaltedPassword, "Server Key")
//                ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)
//                ServerSignature = HMAC(ServerKey, AuthMessage)
// A server that verifies a proof learns ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage);
// with the ServerKey from the same secret that is everything a client needs to log in to any
// server holding that secret (same salt and iteration count: a secret copied from pg_authid).
//
// Messages are handled as latin1 strings: byte-preserving, so the AuthMessage we sign is exactly
// the bytes on the wire. Every attribute we interpret is ASCII; the user name (ignored, as
// PostgreSQL ignores it in favour of the startup packet's) may be any bytes.
// No channel binding: we never offer SCRAM-SHA-256-PLUS, so clients send 'n' or 'y'.

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto'
import { saslprep } from './saslprep.ts'

export const SCRAM_SHA_256 = 'SCRAM-SHA-256'
export const SCRAM_DEFAULT_ITERATIONS = 4096
// Iteration counts come from the other side; refuse ones that would pin a core for seconds.
export const SCRAM_MAX_ITERATIONS = 10_000_000

const KEY_LEN = 32
const SALT_LEN = 16
const NONCE_BYTES = 18

const SQLSTATE_PROTOCOL_VIOLATION = '08P01'
const SQLSTATE_INVALID_PASSWORD = '28P01'

// sqlstate: '08P01' for malformed or out-of-order messages (and unsupported options such as
// channel binding), '28P01' for a failed authentication: the server's 'e=' answer or a server
// signature that does not verify. A client's wrong proof is not an error: see handleClientFinal.
export class ScramError extends Error {
  readonly code = 'ERR_SCRAM' as const
  readonly sqlstate: string
  constructor(message: string, sqlstate: string = SQLSTATE_PROTOCOL_VIOLATION) {
    super(message)
    this.name = 'ScramError'
    this.sqlstate = sqlstate
  }
}

export interface ScramSecret {
  iterations: number
  salt: Buffer
  storedKey: Buffer
  serverKey: Buffer
}

export interface ScramKeys {
  clientKey: Buffer
  serverKey: Buffer
}

// ---- primitives -------------------------------------------------------------------------

const sha256 = (data: Buffer): Buffer => createHash('sha256').update(data).digest()
const hmac = (key: Buffer, data: Buffer | string): Buffer =>
  createHmac('sha256', key).update(data).digest()

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length)
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!
  return out
}

// Buffer.from(s, 'base64') skips junk silently; SCRAM wants the strict alphabet with padding.
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
// RFC 5802 'printable': %x21-2B / %x2D-7E (visible ASCII without ',').
const NONCE_RE = /^[\x21-\x2b\x2d-\x7e]+$/
const ITERATIONS_RE = /^[1-9][0-9]{0,9}$/
const ATTR_RE = /^[A-Za-z]=/

function decodeBase64(s: string, what: string): Buffer {
  if (!BASE64_RE.test(s)) throw new ScramError(`malformed SCRAM message (invalid base64 ${what})`)
  const b = Buffer.from(s, 'base64')
  if (b.length === 0) throw new ScramError(`malformed SCRAM message (empty ${what})`)
  return b
}

function attr(part: string | undefined, name: string, where: string): string {
  if (part === undefined || part[0] !== name || part[1] !== '=') {
    throw new ScramError(`malformed SCRAM message (expected attribute "${name}" in ${where})`)
  }
  return part.slice(2)
}

// Optional trailing extensions: ignored, as PostgreSQL does, but they must look like attributes.
function checkExtensions(parts: string[], from: number, where: string): void {
  for (let i = from; i < parts.length; i++) {
    if (!ATTR_RE.test(parts[i]!)) {
      throw new ScramError(`malformed SCRAM message (garbage at end of ${where})`)
    }
  }
}

function parseIterations(s: string): number {
  const n = ITERATIONS_RE.test(s) ? Number(s) : 0
  if (n < 1 || n > SCRAM_MAX_ITERATIONS) {
    throw new ScramError(`malformed SCRAM message (invalid iteration count "${s.slice(0, 16)}")`)
  }
  return n
}

function makeNonce(given: string | undefined): string {
  if (given === undefined) return randomBytes(NONCE_BYTES).toString('base64')
  if (!NONCE_RE.test(given)) throw new ScramError('invalid SCRAM nonce option')
  return given
}

// ---- key derivation -----------------------------------------------------------------------

// PBKDF2 at 4096 rounds is milliseconds of blocked event loop; the pooler logs in to the same
// server with the same password and salt over and over, so remember recent derivations.
const KEY_CACHE_MAX = 64
const keyCache = new Map<string, ScramKeys>()

function deriveKeys(password: string, salt: Buffer, iterations: number): ScramKeys {
  const cacheKey = `${iterations}:${salt.toString('base64')}:${sha256(Buffer.from(password)).toString('base64')}`
  const hit = keyCache.get(cacheKey)
  if (hit !== undefined) return hit
  const salted = pbkdf2Sync(saslprep(password), salt, iterations, KEY_LEN, 'sha256')
  const keys = { clientKey: hmac(salted, 'Client Key'), serverKey: hmac(salted, 'Server Key') }
  if (keyCache.size >= KEY_CACHE_MAX) keyCache.delete(keyCache.keys().next().value!)
  keyCache.set(cacheKey, keys)
  return keys
}

// ---- stored secrets -----------------------------------------------------------------------

const SECRET_RE =
  /^SCRAM-SHA-256\$([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/

export function parseScramSecret(s: string): ScramSecret | null {
  const m = SECRET_RE.exec(s)
  if (m === null) return null
  const iterations = Number(m[1])
  if (iterations > 0x7fffffff) return null
  const [salt, storedKey, serverKey] = [m[2]!, m[3]!, m[4]!].map((b) =>
    BASE64_RE.test(b) ? Buffer.from(b, 'base64') : null,
  )
  if (!salt || salt.length === 0) return null
  if (storedKey?.length !== KEY_LEN || serverKey?.length !== KEY_LEN) return null
  return { iterations, salt, storedKey, serverKey }
}

export function isScramSecret(s: string): boolean {
  return parseScramSecret(s) !== null
}

function secretFromPassword(password: string, salt: Buffer, iterations: number): ScramSecret {
  const { clientKey, serverKey } = deriveKeys(password, salt, iterations)
  return { iterations, salt, storedKey: sha256(clientKey), serverKey }
}

export function scramSecret(
  password: string,
  opts: { salt?: Buffer; iterations?: number } = {},
): string {
  const salt = opts.salt ?? randomBytes(SALT_LEN)
  const iterations = opts.iterations ?? SCRAM_DEFAULT_ITERATIONS
  if (salt.length === 0) throw new ScramError('SCRAM salt must not be empty')
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > SCRAM_MAX_ITERATIONS) {
    throw new ScramError(`invalid SCRAM iteration count ${iterations}`)
  }
  const s = secretFromPassword(password, salt, iterations)
  const b64 = (b: Buffer) => b.toString('base64')
  return `SCRAM-SHA-256$${iterations}:${b64(salt)}$${b64(s.storedKey)}:${b64(s.serverKey)}`
}

// ---- client side (pooler → PostgreSQL) ----------------------------------------------------

// `nonce` and `user` exist for test vectors; PostgreSQL needs neither.
export type ScramClientOptions = ({ password: string } | ScramKeys) & {
  nonce?: string
  user?: string
}

export class ScramClient {
  #password: string | null
  #keys: ScramKeys | null
  #nonce: string
  #user: string
  #clientFirstBare = ''
  #serverSignature: Buffer | null = null
  #state: 'init' | 'first-sent' | 'final-sent' | 'done' = 'init'

  constructor(opts: ScramClientOptions) {
    if ('password' in opts) {
      this.#password = opts.password
      this.#keys = null
    } else {
      if (opts.clientKey.length !== KEY_LEN || opts.serverKey.length !== KEY_LEN) {
        throw new ScramError('SCRAM pass-through keys must be 32 bytes each')
      }
      this.#password = null
      this.#keys = { clientKey: opts.clientKey, serverKey: opts.serverKey }
    }
    this.#nonce = makeNonce(opts.nonce)
    this.#user = (opts.user ?? '').replaceAll('=', '=3D').replaceAll(',', '=2C')
  }

  // PostgreSQL takes the user from the startup packet and ignores this one, so send it empty.
  clientFirstMessage(): Buffer {
    if (this.#state !== 'init') throw new ScramError('SCRAM client-first-message already sent')
    this.#state = 'first-sent'
    this.#clientFirstBare = `n=${this.#user},r=${this.#nonce}`
    return Buffer.from(`n,,${this.#clientFirstBare}`, 'latin1')
  }

  clientFinalMessage(serverFirst: Buffer): Buffer {
    if (this.#state !== 'first-sent') throw new ScramError('unexpected SCRAM server-first-message')
    this.#state = 'final-sent'
    const text = serverFirst.toString('latin1')
    const parts = text.split(',')
    if (parts[0]?.startsWith('m=')) {
      throw new ScramError('server requires an unsupported SCRAM extension')
    }
    const where = 'server-first-message'
    const nonce = attr(parts[0], 'r', where)
    if (
      !NONCE_RE.test(nonce) ||
      nonce.length <= this.#nonce.length ||
      !nonce.startsWith(this.#nonce)
    ) {
      throw new ScramError('invalid SCRAM response (nonce mismatch)')
    }
    const salt = decodeBase64(attr(parts[1], 's', where), 'salt')
    const iterations = parseIterations(attr(parts[2], 'i', where))
    checkExtensions(parts, 3, where)

    const keys = this.#keys ?? deriveKeys(this.#password!, salt, iterations)
    const withoutProof = `c=biws,r=${nonce}`
    const authMessage = Buffer.from(`${this.#clientFirstBare},${text},${withoutProof}`, 'latin1')
    const proof = xor(keys.clientKey, hmac(sha256(keys.clientKey), authMessage))
    this.#serverSignature = hmac(keys.serverKey, authMessage)
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1')
  }

  verifyServerFinal(serverFinal: Buffer): void {
    if (this.#state !== 'final-sent') throw new ScramError('unexpected SCRAM server-final-message')
    this.#state = 'done'
    const parts = serverFinal.toString('latin1').split(',')
    if (parts[0]?.startsWith('e=')) {
      throw new ScramError(
        `SCRAM authentication failed: ${parts[0].slice(2, 200)}`,
        SQLSTATE_INVALID_PASSWORD,
      )
    }
    const where = 'server-final-message'
    const signature = decodeBase64(attr(parts[0], 'v', where), 'server signature')
    checkExtensions(parts, 1, where)
    const expected = this.#serverSignature!
    if (signature.length !== expected.length || !timingSafeEqual(signature, expected)) {
      throw new ScramError('invalid SCRAM server signature', SQLSTATE_INVALID_PASSWORD)
    }
  }
}

// ---- server side (client → pooler) --------------------------------------------------------

export type ScramServerResult = { ok: true; serverFinal: Buffer; clientKey: Buffer } | { ok: false }

// Plaintext passwords in an auth file get one random salt per password for the process lifetime,
// so each login costs an HMAC, not a PBKDF2.
const PASSWORD_SECRET_MAX = 256
const passwordSecrets = new Map<string, ScramSecret>()

export class ScramServer {
  #secret: ScramSecret
  #nonce: string
  #gs2Header = ''
  #clientFirstBare = ''
  #serverFirst = ''
  #state: 'init' | 'first-received' | 'done' = 'init'

  constructor(secret: ScramSecret, opts: { nonce?: string } = {}) {
    const { iterations, salt, storedKey, serverKey } = secret
    if (
      !Number.isInteger(iterations) ||
      iterations < 1 ||
      salt.length === 0 ||
      storedKey.length !== KEY_LEN ||
      serverKey.length !== KEY_LEN
    ) {
      throw new ScramError('invalid SCRAM secret')
    }
    this.#secret = secret
    this.#nonce = makeNonce(opts.nonce)
  }

  static fromPassword(
    password: string,
    opts: { nonce?: string; iterations?: number } = {},
  ): ScramServer {
    const iterations = opts.iterations ?? SCRAM_DEFAULT_ITERATIONS
    const key = `${iterations}:${sha256(Buffer.from(password)).toString('base64')}`
    let secret = passwordSecrets.get(key)
    if (secret === undefined) {
      secret = secretFromPassword(password, randomBytes(SALT_LEN), iterations)
      if (passwordSecrets.size >= PASSWORD_SECRET_MAX) {
        passwordSecrets.delete(passwordSecrets.keys().next().value!)
      }
      passwordSecrets.set(key, secret)
    }
    return new ScramServer(secret, opts)
  }

  handleClientFirst(data: Buffer): Buffer {
    if (this.#state !== 'init') throw new ScramError('unexpected SCRAM client-first-message')
    this.#state = 'done' // until it parses
    const text = data.toString('latin1')
    const parts = text.split(',')
    const flag = parts[0] ?? ''
    if (flag.startsWith('p=') || flag === 'p') {
      throw new ScramError('client requires SCRAM channel binding, but it is not supported')
    }
    if (flag !== 'n' && flag !== 'y') {
      throw new ScramError('malformed SCRAM message (unexpected channel-binding flag)')
    }
    if (parts[1] !== '') {
      throw new ScramError(
        parts[1]?.startsWith('a=')
          ? 'client uses authorization identity, but it is not supported'
          : 'malformed SCRAM message (unexpected attribute in client-first-message)',
      )
    }
    if (parts[2]?.startsWith('m=')) {
      throw new ScramError('client requires an unsupported SCRAM extension')
    }
    const where = 'client-first-message'
    attr(parts[2], 'n', where)
    const clientNonce = attr(parts[3], 'r', where)
    if (!NONCE_RE.test(clientNonce)) {
      throw new ScramError('malformed SCRAM message (invalid nonce in client-first-message)')
    }
    checkExtensions(parts, 4, where)

    this.#gs2Header = `${flag},,`
    this.#clientFirstBare = text.slice(this.#gs2Header.length)
    this.#nonce = clientNonce + this.#nonce
    const { salt, iterations } = this.#secret
    this.#serverFirst = `r=${this.#nonce},s=${salt.toString('base64')},i=${iterations}`
    this.#state = 'first-received'
    return Buffer.from(this.#serverFirst, 'latin1')
  }

  handleClientFinal(data: Buffer): ScramServerResult {
    if (this.#state !== 'first-received') {
      throw new ScramError('unexpected SCRAM client-final-message')
    }
    this.#state = 'done'
    const text = data.toString('latin1')
    const parts = text.split(',')
    const where = 'client-final-message'
    const binding = attr(parts[0], 'c', where)
    if (binding !== Buffer.from(this.#gs2Header, 'latin1').toString('base64')) {
      throw new ScramError('SCRAM channel binding check failed')
    }
    if (attr(parts[1], 'r', where) !== this.#nonce) throw new ScramError('SCRAM nonce mismatch')
    const last = parts.length - 1
    const proofAt = parts.findIndex((p, i) => i >= 2 && p.startsWith('p='))
    if (proofAt === -1) {
      throw new ScramError(
        'malformed SCRAM message (expected attribute "p" in client-final-message)',
      )
    }
    if (proofAt !== last) {
      throw new ScramError('malformed SCRAM message (garbage at end of client-final-message)')
    }
    checkExtensions(parts.slice(0, last), 2, where)
    const proof = decodeBase64(parts[last]!.slice(2), 'proof')
    if (proof.length !== KEY_LEN) {
      throw new ScramError('malformed SCRAM message (malformed proof in client-final-message)')
    }

    const withoutProof = text.slice(0, text.length - parts[last]!.length - 1)
    const authMessage = Buffer.from(
      `${this.#clientFirstBare},${this.#serverFirst},${withoutProof}`,
      'latin1',
    )
    const { storedKey, serverKey } = this.#secret
    const clientKey = xor(proof, hmac(storedKey, authMessage))
    if (!timingSafeEqual(sha256(clientKey), storedKey)) return { ok: false }
    const serverFinal = Buffer.from(
      `v=${hmac(serverKey, authMessage).toString('base64')}`,
      'latin1',
    )
    return { ok: true, serverFinal, clientKey }
  }
}
