// A hand-rolled PostgreSQL client for tests that must send what no real driver
// sends: garbage, lying length fields, half packets, arbitrary startup
// parameters, CancelRequests. Built by hand (not with our serializer) so that
// the pooler is never tested against its own idea of the protocol.

import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto'
import net from 'node:net'

export interface BackendMessage {
  /** The message type letter, e.g. 'E', 'R', 'Z'. */
  type: string
  body: Buffer
}

export interface ErrorFields {
  severity: string
  code: string
  message: string
}

const PROTOCOL_3_0 = 196608
const CANCEL_REQUEST_CODE = 80877102

/** StartupMessage (protocol 3.0) with the given parameters; a Buffer value goes as its bytes. */
export function startupPacket(params: Record<string, string | Buffer>): Buffer {
  const parts: Buffer[] = []
  for (const [name, value] of Object.entries(params)) {
    parts.push(Buffer.from(`${name}\0`), Buffer.from(value), Buffer.from([0]))
  }
  parts.push(Buffer.from([0]))
  const body = Buffer.concat(parts)
  const head = Buffer.alloc(8)
  head.writeInt32BE(8 + body.length, 0)
  head.writeInt32BE(PROTOCOL_3_0, 4)
  return Buffer.concat([head, body])
}

export function cancelRequestPacket(pid: number, secret: number): Buffer {
  const b = Buffer.alloc(16)
  b.writeInt32BE(16, 0)
  b.writeInt32BE(CANCEL_REQUEST_CODE, 4)
  b.writeInt32BE(pid | 0, 8)
  b.writeInt32BE(secret | 0, 12)
  return b
}

/** Simple-protocol Query ('Q'). */
export function queryMessage(sql: string): Buffer {
  const text = Buffer.from(`${sql}\0`)
  const head = Buffer.alloc(5)
  head[0] = 0x51 // Q
  head.writeInt32BE(4 + text.length, 1)
  return Buffer.concat([head, text])
}

function frontend(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head[0] = type.charCodeAt(0)
  head.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}

const cstr = (s: string) => Buffer.from(`${s}\0`)
const int16 = (n: number) => {
  const b = Buffer.alloc(2)
  b.writeInt16BE(n)
  return b
}

/** Extended protocol, text format throughout. */
export const extended = {
  parse: (name: string, sql: string) =>
    frontend('P', Buffer.concat([cstr(name), cstr(sql), int16(0)])),
  bind: (statement: string, params: (string | null)[] = [], portal = '') => {
    const values = params.map((p) => {
      if (p === null) return Buffer.from([0xff, 0xff, 0xff, 0xff])
      const v = Buffer.from(p)
      const len = Buffer.alloc(4)
      len.writeInt32BE(v.length)
      return Buffer.concat([len, v])
    })
    return frontend(
      'B',
      Buffer.concat([
        cstr(portal),
        cstr(statement),
        int16(0),
        int16(params.length),
        ...values,
        int16(0),
      ]),
    )
  },
  describeStatement: (name: string) => frontend('D', Buffer.concat([Buffer.from('S'), cstr(name)])),
  execute: (portal = '') => frontend('E', Buffer.concat([cstr(portal), Buffer.alloc(4)])),
  closeStatement: (name: string) => frontend('C', Buffer.concat([Buffer.from('S'), cstr(name)])),
  sync: () => frontend('S', Buffer.alloc(0)),
}

/** The S/C/M fields of an ErrorResponse or NoticeResponse body. */
export function errorFields(body: Buffer): ErrorFields {
  const out: ErrorFields = { severity: '', code: '', message: '' }
  let pos = 0
  while (pos < body.length && body[pos] !== 0) {
    const field = String.fromCharCode(body[pos]!)
    const end = body.indexOf(0, pos + 1)
    if (end < 0) break
    const value = body.toString('utf8', pos + 1, end)
    if (field === 'S') out.severity = value
    else if (field === 'C') out.code = value
    else if (field === 'M') out.message = value
    pos = end + 1
  }
  return out
}

/**
 * One raw TCP connection that frames what the server sends back. `next()`
 * resolves with the next whole message, or null once the peer closed (or the
 * timeout passed: check `closed`).
 */
export class RawConnection {
  readonly socket: net.Socket
  /** True once the peer closed or reset the connection. */
  closed = false
  /** When the connection closed (Date.now()), 0 while open. */
  closedAt = 0
  private buffered = Buffer.alloc(0)
  private readonly messages: BackendMessage[] = []
  private wake: (() => void) | null = null

  private constructor(socket: net.Socket) {
    this.socket = socket
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk])
      while (this.buffered.length >= 5) {
        const length = this.buffered.readInt32BE(1)
        if (this.buffered.length < 1 + length) break
        this.messages.push({
          type: String.fromCharCode(this.buffered[0]!),
          body: this.buffered.subarray(5, 1 + length),
        })
        this.buffered = this.buffered.subarray(1 + length)
      }
      this.notify()
    })
    // A reset is just another way of being closed on.
    socket.on('error', () => {})
    socket.on('close', () => {
      this.closed = true
      this.closedAt = Date.now()
      this.notify()
    })
  }

  static connect(host: string, port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true })
      socket.once('error', reject)
      socket.once('connect', () => {
        socket.off('error', reject)
        resolve(new RawConnection(socket))
      })
    })
  }

  send(buf: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(buf)
  }

  private notify(): void {
    const wake = this.wake
    this.wake = null
    wake?.()
  }

  /** The next message, or null when the connection closed or `timeoutMs` passed. */
  async next(timeoutMs: number): Promise<BackendMessage | null> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const msg = this.messages.shift()
      if (msg !== undefined) return msg
      const left = deadline - Date.now()
      if (this.closed || left <= 0) return null
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
    }
  }

  /**
   * Messages until one of type `type` arrived (included), the peer closed, or
   * the timeout; with `type` null, everything until the peer closes.
   */
  async until(type: string | null, timeoutMs: number): Promise<BackendMessage[]> {
    const deadline = Date.now() + timeoutMs
    const seen: BackendMessage[] = []
    for (;;) {
      const msg = await this.next(deadline - Date.now())
      if (msg === null) return seen
      seen.push(msg)
      if (msg.type === type) return seen
    }
  }

  /** Everything the peer sends until it closes or the timeout passes. */
  drain(timeoutMs: number): Promise<BackendMessage[]> {
    return this.until(null, timeoutMs)
  }

  /** Logs in with a StartupMessage (trust auth) and waits for ReadyForQuery. */
  async login(params: Record<string, string>, timeoutMs = 5000): Promise<BackendMessage[]> {
    this.send(startupPacket(params))
    const seen = await this.until('Z', timeoutMs)
    const last = seen.at(-1)
    if (last?.type !== 'Z') {
      const err = seen.find((m) => m.type === 'E')
      throw new Error(
        `login failed: ${err ? JSON.stringify(errorFields(err.body)) : `got ${seen.map((m) => m.type).join('')}`}`,
      )
    }
    return seen
  }

  /**
   * Logs in with a password, answering a cleartext, md5 or SCRAM-SHA-256
   * request by hand: unlike libpq and pg, it sends an empty password when told
   * to. The error that refused it, or null once ReadyForQuery came.
   */
  async passwordLogin(
    params: Record<string, string | Buffer>,
    password: string,
    timeoutMs = 5000,
  ): Promise<ErrorFields | null> {
    this.send(startupPacket(params))
    let scram: ScramClient | null = null
    for (;;) {
      const msg = await this.next(timeoutMs)
      if (msg === null) return { severity: '', code: '', message: 'connection closed' }
      if (msg.type === 'E') return errorFields(msg.body)
      if (msg.type === 'Z') return null
      if (msg.type !== 'R') continue
      const kind = msg.body.readInt32BE(0)
      if (kind === AUTH_CLEARTEXT) this.send(frontend('p', cstr(password)))
      else if (kind === AUTH_MD5) {
        const salt = msg.body.subarray(4, 8)
        const inner = md5Hex(Buffer.concat([Buffer.from(password), Buffer.from(params.user ?? '')]))
        this.send(frontend('p', cstr(`md5${md5Hex(Buffer.concat([Buffer.from(inner), salt]))}`)))
      } else if (kind === AUTH_SASL) {
        scram = new ScramClient(password)
        const first = Buffer.from(scram.clientFirst())
        const length = Buffer.alloc(4)
        length.writeInt32BE(first.length)
        this.send(frontend('p', Buffer.concat([cstr('SCRAM-SHA-256'), length, first])))
      } else if (kind === AUTH_SASL_CONTINUE && scram !== null) {
        this.send(frontend('p', Buffer.from(scram.clientFinal(msg.body.toString('utf8', 4)))))
      }
    }
  }

  /** Runs one simple Query; resolves with its rows as text (NULL as null), rejects on an error. */
  async query(sql: string, timeoutMs = 5000): Promise<(string | null)[][]> {
    this.send(queryMessage(sql))
    const seen = await this.until('Z', timeoutMs)
    const err = seen.find((m) => m.type === 'E')
    if (err !== undefined) {
      const fields = errorFields(err.body)
      throw Object.assign(new Error(fields.message), { code: fields.code })
    }
    if (seen.at(-1)?.type !== 'Z') throw new Error(`no ReadyForQuery for ${sql}`)
    return seen.filter((m) => m.type === 'D').map((m) => dataRowValues(m.body))
  }

  destroy(): void {
    this.socket.destroy()
  }
}

const AUTH_CLEARTEXT = 3
const AUTH_MD5 = 5
const AUTH_SASL = 10
const AUTH_SASL_CONTINUE = 11

function md5Hex(data: Buffer): string {
  return createHash('md5').update(data).digest('hex')
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest()
}

/** RFC 5802's client side, without channel binding (as libpq over plain TCP). */
class ScramClient {
  private readonly password: string
  private readonly nonce = randomBytes(18).toString('base64')

  constructor(password: string) {
    this.password = password
  }

  private get firstBare(): string {
    return `n=,r=${this.nonce}`
  }

  clientFirst(): string {
    return `n,,${this.firstBare}`
  }

  clientFinal(serverFirst: string): string {
    const fields = new Map(serverFirst.split(',').map((f) => [f[0], f.slice(2)] as const))
    const salt = Buffer.from(fields.get('s')!, 'base64')
    const salted = pbkdf2Sync(this.password, salt, Number(fields.get('i')), 32, 'sha256')
    const clientKey = hmac(salted, 'Client Key')
    const storedKey = createHash('sha256').update(clientKey).digest()
    const withoutProof = `c=biws,r=${fields.get('r')}`
    const signature = hmac(storedKey, `${this.firstBare},${serverFirst},${withoutProof}`)
    const proof = Buffer.alloc(32)
    for (let i = 0; i < 32; i++) proof[i] = clientKey[i]! ^ signature[i]!
    return `${withoutProof},p=${proof.toString('base64')}`
  }
}

export function dataRowValues(body: Buffer): (string | null)[] {
  const count = body.readInt16BE(0)
  const values: (string | null)[] = []
  let pos = 2
  for (let i = 0; i < count; i++) {
    const length = body.readInt32BE(pos)
    pos += 4
    if (length < 0) {
      values.push(null)
      continue
    }
    values.push(body.toString('latin1', pos, pos + length))
    pos += length
  }
  return values
}

/** Opens a connection, sends a CancelRequest and waits until the pooler closes it. */
export async function sendCancel(
  host: string,
  port: number,
  pid: number,
  secret: number,
): Promise<void> {
  const conn = await RawConnection.connect(host, port)
  conn.send(cancelRequestPacket(pid, secret))
  await conn.drain(2000)
  conn.destroy()
}
