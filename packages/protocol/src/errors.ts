// Raised for any byte sequence that breaks the wire protocol: bad lengths,
// truncated bodies, unknown startup codes. The session that receives it closes
// the offending connection; nobody else is affected.
export class ProtocolError extends Error {
  readonly code = 'ERR_PG_PROTOCOL'
  // protocol_violation; sent to the client in the ErrorResponse.
  readonly sqlstate: string

  constructor(message: string, sqlstate = '08P01') {
    super(message)
    this.name = 'ProtocolError'
    this.sqlstate = sqlstate
  }
}

// Printable form of a type byte for error texts: 'Q', or 0x00 for non-ASCII.
export function typeName(type: number): string {
  return type >= 0x20 && type < 0x7f
    ? `'${String.fromCharCode(type)}'`
    : `0x${type.toString(16).padStart(2, '0')}`
}
