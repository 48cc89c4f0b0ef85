import { errorResponse } from '@pgbouncer-cluster/protocol/serializer'

/**
 * Errors the pooler itself raises toward clients, with PgBouncer's texts and
 * SQLSTATEs so that client code and runbooks matching on them keep working.
 */
export const SqlState = {
  SuccessfulCompletion: '00000',
  ConnectionFailure: '08006',
  ProtocolViolation: '08P01',
  InvalidPassword: '28P01',
  InvalidAuthorization: '28000',
  TooManyConnections: '53300',
  AdminShutdown: '57P01',
  CannotConnectNow: '57P03',
  OutOfMemory: '53200',
  FeatureNotSupported: '0A000',
} as const

/** A login the coordinator could give no pool slot to: its text and SQLSTATE, for the client. */
export class SlotError extends Error {
  readonly sqlstate: string

  constructor(message: string, sqlstate: string) {
    super(message)
    this.name = 'SlotError'
    this.sqlstate = sqlstate
  }
}

export function fatal(message: string, code: string = SqlState.ProtocolViolation): Buffer {
  return errorResponse({ severity: 'FATAL', code, message })
}

export function error(message: string, code: string = SqlState.ProtocolViolation): Buffer {
  return errorResponse({ severity: 'ERROR', code, message })
}

/** The message text of an ErrorResponse we built (log_pooler_errors); not for the hot path. */
export function errorMessage(buf: Buffer): string {
  let i = 5
  while (i < buf.length && buf[i] !== 0) {
    const code = buf[i]
    const end = buf.indexOf(0, i + 1)
    if (end < 0) break
    if (code === 0x4d /* M */) return buf.toString('utf8', i + 1, end)
    i = end + 1
  }
  return ''
}

export const Texts = {
  noSuchDatabase: (db: string) => `no such database: ${db}`,
  /** DISABLE db (PgBouncer's finish_client_login). */
  databaseDisabled: (db: string) => `database "${db}" is disabled`,
  authDatabaseDisabled: (db: string) => `authentication database "${db}" is disabled`,
  noSuchUser: (user: string) => `no such user: ${user}`,
  passwordFailed: (user: string) => `password authentication failed for user "${user}"`,
  /** A PasswordMessage with nothing in it (PgBouncer and PostgreSQL's recv_password_packet). */
  emptyPassword: 'empty password returned by client',
  maxClientConn: 'no more connections allowed (max_client_conn)',
  maxDbClientConnections: 'client connections exceeded (max_db_client_connections)',
  maxUserClientConnections: 'client connections exceeded (max_user_client_connections)',
  sslRequired: 'SSL required',
  certificateFailed: 'certificate authentication failed',
  /** auth_type trust (or an hba trust rule) for a user auth_file does not list. */
  trustFailed: '"trust" authentication failed',
  /** auth_query failed or is misconfigured: the detail goes to the log only. */
  configError: 'bouncer config error',
  /** auth_type hba: no rule fits (PgBouncer 1.21+; 1.18 said "login rejected"). */
  noHbaRule: 'no authentication method is found',
  loginRejected: 'login rejected',
  unencryptedAfterSslRequest: 'received unencrypted data after SSL request',
  serverRefusedSsl: 'server refused SSL',
  unsupportedParameter: (key: string) => `unsupported startup parameter: ${key}`,
  queryWaitTimeout: 'query_wait_timeout',
  queryTimeout: 'query timeout',
  /** A client still waiting for a server when query_timeout ran out (1.18 said `query timeout`). */
  queryTimeoutWaiting: 'query_timeout',
  idleTransactionTimeout: 'idle transaction timeout',
  transactionTimeout: 'transaction timeout',
  clientIdleTimeout: 'client_idle_timeout',
  configurationChanged: 'database configuration changed',
  clientLoginTimeout: 'client_login_timeout (server down)',
  /** A client that stopped in the middle of a message (PostgreSQL's text for a message cut short). */
  incompleteMessage: 'incomplete message from client',
  /** A message too large for this host's memory to hold whole. */
  outOfMemory: 'out of memory',
  serverConnCrashed: 'server conn crashed?',
  serverLoginRetry: 'server login has been failing, try again later (server_login_retry)',
  cannotConnect: 'pgbouncer cannot connect to server',
  statementModeTransaction: 'transaction blocks not allowed in statement pooling mode',
  shuttingDown: 'pooler is shutting down',
  adminForcedDisconnect: 'admin forced disconnect',
  pqexecDisallowed: 'PQexec disallowed',
  /** A replication connection's login to PostgreSQL failed (PgBouncer's text; the detail is logged). */
  loginFailed: 'login failed',
  /** A Parse of a name the client has prepared already (transaction and statement mode). */
  statementNameInUse: 'prepared statement name is already in use',
} as const
