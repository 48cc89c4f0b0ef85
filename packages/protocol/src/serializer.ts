// Builders of whole protocol messages. Each call returns one complete message
// in a Buffer sized exactly once; messages without parameters are built at
// load time and shared, so callers must never write into a returned Buffer.
// Strings are written as UTF-8 and must not contain NUL.

import { AuthCode, BackendCode, FrontendCode, StartupCode, TxStatus } from './messages.ts'

export interface ErrorFields {
  severity: string // ERROR, FATAL, PANIC, WARNING, NOTICE, DEBUG, INFO, LOG
  code: string // SQLSTATE
  message: string
  detail?: string
  hint?: string
}

// Typed message with room for `body` bytes; the body starts at offset 5.
function typed(type: number, body: number): Buffer {
  const buf = Buffer.allocUnsafe(5 + body)
  buf[0] = type
  buf.writeInt32BE(4 + body, 1)
  return buf
}

function cstr(buf: Buffer, off: number, s: string): number {
  off += buf.write(s, off, 'utf8')
  buf[off] = 0
  return off + 1
}

function cstrLen(s: string): number {
  return Buffer.byteLength(s, 'utf8') + 1
}

function fixed(type: number, body: number[] = []): Buffer {
  const buf = typed(type, body.length)
  buf.set(body, 5)
  return buf
}

function authBody(code: number, data: Buffer): Buffer {
  const buf = typed(BackendCode.Authentication, 4 + data.length)
  buf.writeInt32BE(code, 5)
  data.copy(buf, 9)
  return buf
}

// ---- backend ----

const AUTH_OK = authBody(AuthCode.Ok, Buffer.alloc(0))
const AUTH_CLEARTEXT = authBody(AuthCode.CleartextPassword, Buffer.alloc(0))
const RFQ_IDLE = fixed(BackendCode.ReadyForQuery, [TxStatus.Idle])
const RFQ_IN_TX = fixed(BackendCode.ReadyForQuery, [TxStatus.InTransaction])
const RFQ_FAILED = fixed(BackendCode.ReadyForQuery, [TxStatus.Failed])
const EMPTY_QUERY = fixed(BackendCode.EmptyQueryResponse)

export function authenticationOk(): Buffer {
  return AUTH_OK
}

export function authenticationCleartextPassword(): Buffer {
  return AUTH_CLEARTEXT
}

export function authenticationMD5Password(salt: Buffer): Buffer {
  if (salt.length !== 4) throw new RangeError('MD5 salt must be 4 bytes')
  return authBody(AuthCode.MD5Password, salt)
}

export function authenticationSASL(mechanisms: string[]): Buffer {
  let size = 4 + 1
  for (const m of mechanisms) size += cstrLen(m)
  const buf = typed(BackendCode.Authentication, size)
  buf.writeInt32BE(AuthCode.SASL, 5)
  let off = 9
  for (const m of mechanisms) off = cstr(buf, off, m)
  buf[off] = 0
  return buf
}

export function authenticationSASLContinue(data: Buffer): Buffer {
  return authBody(AuthCode.SASLContinue, data)
}

export function authenticationSASLFinal(data: Buffer): Buffer {
  return authBody(AuthCode.SASLFinal, data)
}

export function parameterStatus(name: string, value: string): Buffer {
  const buf = typed(BackendCode.ParameterStatus, cstrLen(name) + cstrLen(value))
  cstr(buf, cstr(buf, 5, name), value)
  return buf
}

// pid and secret may be given as int32 or uint32; parsers return int32.
export function backendKeyData(pid: number, secret: number): Buffer {
  const buf = typed(BackendCode.BackendKeyData, 8)
  buf.writeInt32BE(pid | 0, 5)
  buf.writeInt32BE(secret | 0, 9)
  return buf
}

/** BackendKeyData then ReadyForQuery(I): how every welcome ends. */
const WELCOME_END_LENGTH = 13 + 6

/**
 * A welcome as one buffer: `head` (AuthenticationOk and the ParameterStatus
 * messages), then BackendKeyData with a zero key, then ReadyForQuery(I).
 * Built once and copied per client, whose key welcomeFor writes in.
 */
export function welcomeTemplate(head: Buffer): Buffer {
  return Buffer.concat([head, backendKeyData(0, 0), RFQ_IDLE])
}

/** A client's welcome: a copy of the template with its key. */
export function welcomeFor(template: Buffer, pid: number, secret: number): Buffer {
  const welcome = Buffer.allocUnsafe(template.length)
  template.copy(welcome)
  return setWelcomeKey(welcome, pid, secret)
}

/** Writes another client's key into a welcome (a template's copy): the rest stays as it is. */
export function setWelcomeKey(welcome: Buffer, pid: number, secret: number): Buffer {
  const key = welcome.length - WELCOME_END_LENGTH + 5
  welcome.writeInt32BE(pid | 0, key)
  welcome.writeInt32BE(secret | 0, key + 4)
  return welcome
}

export function readyForQuery(status: number): Buffer {
  switch (status) {
    case TxStatus.Idle:
      return RFQ_IDLE
    case TxStatus.InTransaction:
      return RFQ_IN_TX
    case TxStatus.Failed:
      return RFQ_FAILED
    default:
      throw new RangeError(`invalid transaction status ${status}`)
  }
}

function errorOrNotice(type: number, f: ErrorFields): Buffer {
  // S (localized) and V (never localized) severities, then C, M, D?, H?, NUL.
  const sev = cstrLen(f.severity)
  let size = 2 + sev * 2 + 1 + cstrLen(f.code) + 1 + cstrLen(f.message) + 1
  if (f.detail !== undefined) size += 1 + cstrLen(f.detail)
  if (f.hint !== undefined) size += 1 + cstrLen(f.hint)
  const buf = typed(type, size)
  let off = 5
  buf[off++] = 0x53 // S
  off = cstr(buf, off, f.severity)
  buf[off++] = 0x56 // V
  off = cstr(buf, off, f.severity)
  buf[off++] = 0x43 // C
  off = cstr(buf, off, f.code)
  buf[off++] = 0x4d // M
  off = cstr(buf, off, f.message)
  if (f.detail !== undefined) {
    buf[off++] = 0x44 // D
    off = cstr(buf, off, f.detail)
  }
  if (f.hint !== undefined) {
    buf[off++] = 0x48 // H
    off = cstr(buf, off, f.hint)
  }
  buf[off] = 0
  return buf
}

export function errorResponse(fields: ErrorFields): Buffer {
  return errorOrNotice(BackendCode.ErrorResponse, fields)
}

export function noticeResponse(fields: ErrorFields): Buffer {
  return errorOrNotice(BackendCode.NoticeResponse, fields)
}

// pg_type.typlen of common types; clients mostly ignore it, -1 is "varlena".
function typeSize(oid: number): number {
  switch (oid) {
    case 16: // bool
    case 18: // char
      return 1
    case 21: // int2
      return 2
    case 23: // int4
    case 26: // oid
    case 700: // float4
      return 4
    case 20: // int8
    case 701: // float8
    case 1114: // timestamp
    case 1184: // timestamptz
      return 8
    default:
      return -1
  }
}

export function rowDescription(columns: { name: string; typeOid?: number }[]): Buffer {
  let size = 2
  for (const c of columns) size += cstrLen(c.name) + 18
  const buf = typed(BackendCode.RowDescription, size)
  buf.writeInt16BE(columns.length, 5)
  let off = 7
  for (const c of columns) {
    const oid = c.typeOid ?? 25
    off = cstr(buf, off, c.name)
    buf.writeUInt32BE(0, off) // table oid
    buf.writeInt16BE(0, off + 4) // column number
    buf.writeUInt32BE(oid, off + 6)
    buf.writeInt16BE(typeSize(oid), off + 10)
    buf.writeInt32BE(-1, off + 12) // type modifier
    buf.writeInt16BE(0, off + 16) // text format
    off += 18
  }
  return buf
}

export function dataRow(values: (string | null)[]): Buffer {
  let size = 2
  for (const v of values) size += 4 + (v === null ? 0 : Buffer.byteLength(v, 'utf8'))
  const buf = typed(BackendCode.DataRow, size)
  buf.writeInt16BE(values.length, 5)
  let off = 7
  for (const v of values) {
    if (v === null) {
      buf.writeInt32BE(-1, off)
      off += 4
    } else {
      const n = buf.write(v, off + 4, 'utf8')
      buf.writeInt32BE(n, off)
      off += 4 + n
    }
  }
  return buf
}

export function commandComplete(tag: string): Buffer {
  const buf = typed(BackendCode.CommandComplete, cstrLen(tag))
  cstr(buf, 5, tag)
  return buf
}

export function emptyQueryResponse(): Buffer {
  return EMPTY_QUERY
}

export function negotiateProtocolVersion(newestMinor: number, unsupported: string[]): Buffer {
  let size = 8
  for (const o of unsupported) size += cstrLen(o)
  const buf = typed(BackendCode.NegotiateProtocolVersion, size)
  buf.writeInt32BE(StartupCode.ProtocolVersion3 | newestMinor, 5)
  buf.writeInt32BE(unsupported.length, 9)
  let off = 13
  for (const o of unsupported) off = cstr(buf, off, o)
  return buf
}

// ---- frontend ----

function untyped(code: number, body: number): Buffer {
  const buf = Buffer.allocUnsafe(8 + body)
  buf.writeInt32BE(8 + body, 0)
  buf.writeInt32BE(code, 4)
  return buf
}

const SSL_REQUEST = untyped(StartupCode.SSLRequest, 0)
const SYNC = fixed(FrontendCode.Sync)
const FLUSH = fixed(FrontendCode.Flush)
const TERMINATE = fixed(FrontendCode.Terminate)
const COPY_DONE = fixed(FrontendCode.CopyDone)

export function startupMessage(params: Record<string, string>): Buffer {
  let size = 1
  for (const k in params) size += cstrLen(k) + cstrLen(params[k]!)
  const buf = untyped(StartupCode.ProtocolVersion3, size)
  let off = 8
  for (const k in params) off = cstr(buf, cstr(buf, off, k), params[k]!)
  buf[off] = 0
  return buf
}

export function sslRequest(): Buffer {
  return SSL_REQUEST
}

export function cancelRequest(pid: number, secret: number): Buffer {
  const buf = untyped(StartupCode.CancelRequest, 8)
  buf.writeInt32BE(pid | 0, 8)
  buf.writeInt32BE(secret | 0, 12)
  return buf
}

export function passwordMessage(password: string): Buffer {
  const buf = typed(FrontendCode.PasswordMessage, cstrLen(password))
  cstr(buf, 5, password)
  return buf
}

export function saslInitialResponse(mechanism: string, data: Buffer): Buffer {
  const buf = typed(FrontendCode.PasswordMessage, cstrLen(mechanism) + 4 + data.length)
  const off = cstr(buf, 5, mechanism)
  buf.writeInt32BE(data.length, off)
  data.copy(buf, off + 4)
  return buf
}

export function saslResponse(data: Buffer): Buffer {
  const buf = typed(FrontendCode.PasswordMessage, data.length)
  data.copy(buf, 5)
  return buf
}

export function query(sql: string): Buffer {
  const buf = typed(FrontendCode.Query, cstrLen(sql))
  cstr(buf, 5, sql)
  return buf
}

export function parse(name: string, sql: string, paramTypes: number[] = []): Buffer {
  const buf = typed(FrontendCode.Parse, cstrLen(name) + cstrLen(sql) + 2 + 4 * paramTypes.length)
  let off = cstr(buf, cstr(buf, 5, name), sql)
  buf.writeInt16BE(paramTypes.length, off)
  off += 2
  for (const oid of paramTypes) {
    buf.writeUInt32BE(oid, off)
    off += 4
  }
  return buf
}

// All parameters and results in text format; a Buffer param is sent as is.
export function bind(
  portal: string,
  statement: string,
  params: (string | Buffer | null)[],
): Buffer {
  let size = cstrLen(portal) + cstrLen(statement) + 2 + 2 + 2
  for (const p of params) {
    size += 4
    if (p === null) continue
    size += typeof p === 'string' ? Buffer.byteLength(p, 'utf8') : p.length
  }
  const buf = typed(FrontendCode.Bind, size)
  let off = cstr(buf, cstr(buf, 5, portal), statement)
  buf.writeInt16BE(0, off) // no parameter format codes: all text
  buf.writeInt16BE(params.length, off + 2)
  off += 4
  for (const p of params) {
    if (p === null) {
      buf.writeInt32BE(-1, off)
      off += 4
      continue
    }
    const n = typeof p === 'string' ? buf.write(p, off + 4, 'utf8') : p.copy(buf, off + 4)
    buf.writeInt32BE(n, off)
    off += 4 + n
  }
  buf.writeInt16BE(0, off) // no result format codes: all text
  return buf
}

function describeOrClose(type: number, kind: 'S' | 'P', name: string): Buffer {
  const buf = typed(type, 1 + cstrLen(name))
  buf[5] = kind === 'S' ? 0x53 : 0x50
  cstr(buf, 6, name)
  return buf
}

export function describe(kind: 'S' | 'P', name: string): Buffer {
  return describeOrClose(FrontendCode.Describe, kind, name)
}

export function close(kind: 'S' | 'P', name: string): Buffer {
  return describeOrClose(FrontendCode.Close, kind, name)
}

export function execute(portal: string, maxRows = 0): Buffer {
  const buf = typed(FrontendCode.Execute, cstrLen(portal) + 4)
  buf.writeInt32BE(maxRows, cstr(buf, 5, portal))
  return buf
}

export function sync(): Buffer {
  return SYNC
}

export function flush(): Buffer {
  return FLUSH
}

export function terminate(): Buffer {
  return TERMINATE
}

export function copyData(data: Buffer): Buffer {
  const buf = typed(FrontendCode.CopyData, data.length)
  data.copy(buf, 5)
  return buf
}

export function copyDone(): Buffer {
  return COPY_DONE
}

export function copyFail(message: string): Buffer {
  const buf = typed(FrontendCode.CopyFail, cstrLen(message))
  cstr(buf, 5, message)
  return buf
}
