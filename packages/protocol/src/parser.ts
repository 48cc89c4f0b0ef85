// Parsers of the message bodies the pooler must understand. Each takes exactly
// one whole message (type byte + int32 length + body), as handed out by
// FrameReader or FrameScanner, and throws ProtocolError, never RangeError, on a
// malformed body. Returned Buffers are views into `msg`.

import { ProtocolError, typeName } from './errors.ts'
import { AuthCode, BackendCode, FrontendCode } from './messages.ts'
import type { ErrorFields } from './serializer.ts'

// One cursor reused by every parser: parsing is synchronous, so no two parses
// ever interleave.
class Cursor {
  buf: Buffer = Buffer.alloc(0)
  pos = 0
  type = 0

  begin(msg: Buffer, type: number): this {
    if (msg.length < 5 || msg[0] !== type || msg.readInt32BE(1) !== msg.length - 1) {
      if (msg.length >= 1 && msg[0] !== type) {
        throw new ProtocolError(`expected message type ${typeName(type)}, got ${typeName(msg[0]!)}`)
      }
      throw new ProtocolError(`invalid message length for type ${typeName(type)}`)
    }
    this.buf = msg
    this.pos = 5
    this.type = type
    return this
  }

  #need(n: number): void {
    if (this.pos + n > this.buf.length) this.#malformed('message too short')
  }

  #malformed(why: string): never {
    throw new ProtocolError(`invalid ${typeName(this.type)} message: ${why}`)
  }

  byte(): number {
    this.#need(1)
    return this.buf[this.pos++]!
  }

  int16(): number {
    this.#need(2)
    const v = this.buf.readInt16BE(this.pos)
    this.pos += 2
    return v
  }

  int32(): number {
    this.#need(4)
    const v = this.buf.readInt32BE(this.pos)
    this.pos += 4
    return v
  }

  uint32(): number {
    this.#need(4)
    const v = this.buf.readUInt32BE(this.pos)
    this.pos += 4
    return v
  }

  cstring(): string {
    const end = this.buf.indexOf(0, this.pos)
    if (end < 0) this.#malformed('missing string terminator')
    const s = this.buf.toString('utf8', this.pos, end)
    this.pos = end + 1
    return s
  }

  bytes(n: number): Buffer {
    if (n < 0) this.#malformed(`negative length ${n}`)
    this.#need(n)
    const v = this.buf.subarray(this.pos, this.pos + n)
    this.pos += n
    return v
  }

  rest(): Buffer {
    const v = this.buf.subarray(this.pos)
    this.pos = this.buf.length
    return v
  }

  end(): void {
    if (this.pos !== this.buf.length) this.#malformed('trailing bytes')
  }
}

const r = new Cursor()

export function readyForQueryStatus(msg: Buffer): number {
  r.begin(msg, BackendCode.ReadyForQuery)
  const status = r.byte()
  r.end()
  return status
}

export function parseParameterStatus(msg: Buffer): { name: string; value: string } {
  r.begin(msg, BackendCode.ParameterStatus)
  const name = r.cstring()
  const value = r.cstring()
  r.end()
  return { name, value }
}

/** ErrorResponse or NoticeResponse; `fields` is keyed by the field letter. */
export function parseErrorFields(msg: Buffer): ErrorFields & { fields: Record<string, string> } {
  r.begin(
    msg,
    msg[0] === BackendCode.NoticeResponse ? BackendCode.NoticeResponse : BackendCode.ErrorResponse,
  )
  const fields: Record<string, string> = {}
  for (;;) {
    const code = r.byte()
    if (code === 0) break
    fields[String.fromCharCode(code)] = r.cstring()
  }
  r.end()
  const out: ErrorFields & { fields: Record<string, string> } = {
    // V is never localized; servers before 9.6 send only S.
    severity: fields.V ?? fields.S ?? '',
    code: fields.C ?? '',
    message: fields.M ?? '',
    fields,
  }
  if (fields.D !== undefined) out.detail = fields.D
  if (fields.H !== undefined) out.hint = fields.H
  return out
}

export function parseBackendKeyData(msg: Buffer): { pid: number; secret: number } {
  r.begin(msg, BackendCode.BackendKeyData)
  const pid = r.int32()
  const secret = r.int32()
  r.end()
  return { pid, secret }
}

export function parseAuthentication(msg: Buffer): {
  code: number
  salt?: Buffer
  mechanisms?: string[]
  data?: Buffer
} {
  r.begin(msg, BackendCode.Authentication)
  const code = r.int32()
  switch (code) {
    case AuthCode.MD5Password: {
      const salt = r.bytes(4)
      r.end()
      return { code, salt }
    }
    case AuthCode.SASL: {
      const mechanisms: string[] = []
      for (;;) {
        const m = r.cstring()
        if (m === '') break
        mechanisms.push(m)
      }
      r.end()
      return { code, mechanisms }
    }
    case AuthCode.SASLContinue:
    case AuthCode.SASLFinal:
    case 8: // GSSContinue
      return { code, data: r.rest() }
    default:
      r.end()
      return { code }
  }
}

export function parseParse(msg: Buffer): { name: string; query: string; paramTypes: number[] } {
  r.begin(msg, FrontendCode.Parse)
  const name = r.cstring()
  const query = r.cstring()
  const n = r.int16()
  if (n < 0) throw new ProtocolError(`invalid 'P' message: negative parameter count ${n}`)
  const paramTypes = new Array<number>(n)
  for (let i = 0; i < n; i++) paramTypes[i] = r.uint32()
  r.end()
  return { name, query, paramTypes }
}

// Only the names: the pooler routes Bind by statement, it never rewrites values.
export function parseBind(msg: Buffer): { portal: string; statement: string } {
  r.begin(msg, FrontendCode.Bind)
  const portal = r.cstring()
  const statement = r.cstring()
  return { portal, statement }
}

function kindAndName(msg: Buffer, type: number): { kind: 'S' | 'P'; name: string } {
  r.begin(msg, type)
  const k = r.byte()
  if (k !== 0x53 && k !== 0x50) {
    throw new ProtocolError(`invalid ${typeName(type)} message: unknown target ${typeName(k)}`)
  }
  const name = r.cstring()
  r.end()
  return { kind: k === 0x53 ? 'S' : 'P', name }
}

export function parseDescribe(msg: Buffer): { kind: 'S' | 'P'; name: string } {
  return kindAndName(msg, FrontendCode.Describe)
}

export function parseClose(msg: Buffer): { kind: 'S' | 'P'; name: string } {
  return kindAndName(msg, FrontendCode.Close)
}

export function parseExecute(msg: Buffer): { portal: string; maxRows: number } {
  r.begin(msg, FrontendCode.Execute)
  const portal = r.cstring()
  const maxRows = r.int32()
  r.end()
  return { portal, maxRows }
}

export function parseQuery(msg: Buffer): string {
  r.begin(msg, FrontendCode.Query)
  const sql = r.cstring()
  r.end()
  return sql
}

export function commandCompleteTag(msg: Buffer): string {
  r.begin(msg, BackendCode.CommandComplete)
  const tag = r.cstring()
  r.end()
  return tag
}

/** CopyInResponse, CopyOutResponse or CopyBothResponse. */
export function parseCopyResponse(msg: Buffer): { format: number; columnFormats: number[] } {
  const t = msg[0]
  r.begin(
    msg,
    t === BackendCode.CopyOutResponse || t === BackendCode.CopyBothResponse
      ? t
      : BackendCode.CopyInResponse,
  )
  const format = r.byte()
  const n = r.int16()
  if (n < 0) throw new ProtocolError(`invalid ${typeName(t!)} message: negative column count ${n}`)
  const columnFormats = new Array<number>(n)
  for (let i = 0; i < n; i++) columnFormats[i] = r.int16()
  r.end()
  return { format, columnFormats }
}

export function parsePasswordMessage(msg: Buffer): string {
  r.begin(msg, FrontendCode.PasswordMessage)
  const password = r.cstring()
  r.end()
  return password
}

export function parseSASLInitialResponse(msg: Buffer): { mechanism: string; data: Buffer } {
  r.begin(msg, FrontendCode.PasswordMessage)
  const mechanism = r.cstring()
  const n = r.int32()
  // -1: no initial response.
  const data = n === -1 ? msg.subarray(0, 0) : r.bytes(n)
  r.end()
  return { mechanism, data }
}

export function parseSASLResponse(msg: Buffer): Buffer {
  r.begin(msg, FrontendCode.PasswordMessage)
  return r.rest()
}
