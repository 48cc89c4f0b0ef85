// Message codes of the PostgreSQL v3 wire protocol. Codes are the type byte of
// a typed message; the letter each byte spells is in the comment.

export const BackendCode = {
  Authentication: 0x52, // R
  ParameterStatus: 0x53, // S
  BackendKeyData: 0x4b, // K
  ReadyForQuery: 0x5a, // Z
  ErrorResponse: 0x45, // E
  NoticeResponse: 0x4e, // N
  RowDescription: 0x54, // T
  DataRow: 0x44, // D
  CommandComplete: 0x43, // C
  EmptyQueryResponse: 0x49, // I
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  ParseComplete: 0x31, // 1
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  NoData: 0x6e, // n
  ParameterDescription: 0x74, // t
  PortalSuspended: 0x73, // s
  NotificationResponse: 0x41, // A
  NegotiateProtocolVersion: 0x76, // v
  FunctionCallResponse: 0x56, // V
} as const

export const FrontendCode = {
  Query: 0x51, // Q
  Parse: 0x50, // P
  Bind: 0x42, // B
  Describe: 0x44, // D
  Execute: 0x45, // E
  Sync: 0x53, // S
  Flush: 0x48, // H
  Close: 0x43, // C
  Terminate: 0x58, // X
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  FunctionCall: 0x46, // F
  // Also carries SASLInitialResponse, SASLResponse and GSSResponse.
  PasswordMessage: 0x70, // p
} as const

// Int32 right after the 'R' message's length field.
export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const

// Int32 right after the length of an untyped startup-phase packet.
export const StartupCode = {
  ProtocolVersion3: 196608, // 3 << 16 | 0
  CancelRequest: 80877102, // 1234 << 16 | 5678
  SSLRequest: 80877103, // 1234 << 16 | 5679
  GSSENCRequest: 80877104, // 1234 << 16 | 5680
} as const

// Status byte of ReadyForQuery.
export const TxStatus = {
  Idle: 0x49, // I
  InTransaction: 0x54, // T
  Failed: 0x45, // E
} as const

// PgBouncer's max_packet_size default is 2 GiB - 1: no limit beyond int32.
export const DEFAULT_MAX_PACKET_SIZE = 2147483647
// PostgreSQL's own cap (MAX_STARTUP_PACKET_LENGTH); nothing legitimate is larger.
export const MAX_STARTUP_PACKET_SIZE = 10000
