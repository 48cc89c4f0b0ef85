// The untyped packets a client sends before its session starts.

import { isUtf8 } from 'node:buffer'
import { ProtocolError } from './errors.ts'
import { MAX_STARTUP_PACKET_SIZE, StartupCode } from './messages.ts'

export type StartupPacket =
  | {
      kind: 'startup'
      major: number
      minor: number
      // Null-prototype object: keys come from the client.
      params: Record<string, string>
      // Names of the `_pq_.*` protocol options requested; not in `params`.
      protocolOptions: string[]
    }
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; secret: number }

function bad(why: string): never {
  throw new ProtocolError(`invalid startup packet layout: ${why}`)
}

/** SQLSTATE character_not_in_repertoire, as PostgreSQL reports bytes invalid in the encoding. */
const INVALID_ENCODING = '22021'

/**
 * PostgreSQL's report_invalid_encoding text for the first bad sequence in
 * packet[start, end): its lead byte and the bytes the lead byte announces.
 */
function invalidEncoding(packet: Buffer, start: number, end: number): never {
  let pos = start
  while (pos < end) {
    const length = utf8Length(packet[pos]!)
    if (length === 0 || pos + length > end || !isUtf8(packet.subarray(pos, pos + length))) break
    pos += length
  }
  const shown = Math.max(1, Math.min(utf8Length(packet[pos]!), end - pos))
  const bytes: string[] = []
  for (let i = pos; i < pos + shown; i++)
    bytes.push(`0x${packet[i]!.toString(16).padStart(2, '0')}`)
  throw new ProtocolError(
    `invalid byte sequence for encoding "UTF8": ${bytes.join(' ')}`,
    INVALID_ENCODING,
  )
}

/** The length a UTF-8 lead byte announces; 0 for a byte that cannot lead. */
function utf8Length(lead: number): number {
  if (lead < 0x80) return 1
  if ((lead & 0xe0) === 0xc0) return 2
  if ((lead & 0xf0) === 0xe0) return 3
  if ((lead & 0xf8) === 0xf0) return 4
  return 0
}

/**
 * Parses one startup-phase packet (int32 length including itself + body), as
 * FrameReader hands out in startup mode. Protocol 3.x of any minor version is
 * accepted: the caller answers a minor above 0, or any `_pq_.` option, with
 * NegotiateProtocolVersion(0, protocolOptions).
 */
export function parseStartupPacket(packet: Buffer): StartupPacket {
  const len = packet.length
  if (len < 8 || len > MAX_STARTUP_PACKET_SIZE) bad(`length ${len}`)
  if (packet.readInt32BE(0) !== len) bad('length field does not match packet size')
  const code = packet.readInt32BE(4)
  switch (code) {
    case StartupCode.SSLRequest:
      if (len !== 8) bad('SSLRequest with a body')
      return { kind: 'ssl' }
    case StartupCode.GSSENCRequest:
      if (len !== 8) bad('GSSENCRequest with a body')
      return { kind: 'gssenc' }
    case StartupCode.CancelRequest:
      // Protocol 3.2 allows longer secrets, but we only ever hand out 4 bytes.
      if (len !== 16) bad(`CancelRequest of ${len} bytes`)
      return { kind: 'cancel', pid: packet.readInt32BE(8), secret: packet.readInt32BE(12) }
  }
  const major = code >>> 16
  const minor = code & 0xffff
  if (major !== 3) throw new ProtocolError(`unsupported protocol version ${major}.${minor}`)

  // name NUL value NUL ... NUL; the final NUL must be the last byte.
  if (packet[len - 1] !== 0) bad('expected terminator as last byte')
  const params: Record<string, string> = Object.create(null)
  const protocolOptions: string[] = []
  let pos = 8
  for (;;) {
    if (pos >= len) bad('missing terminator')
    const nameEnd = packet.indexOf(0, pos)
    if (nameEnd === pos) break // the terminator
    const valueEnd = packet.indexOf(0, nameEnd + 1)
    // The name's NUL was the last byte: a name without a value.
    if (valueEnd < 0) bad('parameter without value')
    const name = packet.toString('utf8', pos, nameEnd)
    // The names that pick a role and a database are compared with auth_file,
    // hba and the config, and sent to PostgreSQL: one that is not UTF-8 would
    // be decoded into another name (U+FFFD for each bad byte), so it is refused.
    if ((name === 'user' || name === 'database') && !isUtf8(packet.subarray(nameEnd + 1, valueEnd)))
      invalidEncoding(packet, nameEnd + 1, valueEnd)
    const value = packet.toString('utf8', nameEnd + 1, valueEnd)
    if (name.startsWith('_pq_.')) {
      if (protocolOptions.includes(name)) bad(`duplicate parameter "${name}"`)
      protocolOptions.push(name)
    } else {
      if (name in params) bad(`duplicate parameter "${name}"`)
      params[name] = value
    }
    pos = valueEnd + 1
  }
  if (pos !== len - 1) bad('trailing bytes')
  // PgBouncer's wording.
  if (!params.user) throw new ProtocolError('No username supplied')
  return { kind: 'startup', major, minor, params, protocolOptions }
}
