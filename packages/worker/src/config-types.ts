import type { MessagePort } from 'node:worker_threads'
import type { TargetSessionAttrs } from '@pgbouncer-cluster/protocol/host-role'
import type { HbaRule } from './hba.ts'

/**
 * The part of the coordinator's validated configuration a worker reads. The
 * coordinator's `Config` is a structural superset: it arrives as plain data
 * (workerData at start, a control message on reload), already validated.
 */
export type PoolMode = 'session' | 'transaction' | 'statement'
/** A client's `replication` startup parameter, as SHOW CLIENTS / SERVERS name it (PgBouncer 1.23). */
export type Replication = 'none' | 'logical' | 'physical'
/** session_state_policy: what transaction pooling does with state that cannot follow a client (session-state/policy.ts). */
export type SessionStatePolicy = 'allow' | 'warn' | 'pin' | 'error'
export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full'
export type AuthType = 'trust' | 'any' | 'plain' | 'md5' | 'scram-sha-256' | 'cert' | 'hba' | 'pam'

/** One PostgreSQL host of a database entry, with its port. */
export interface HostPort {
  host: string
  port: number
}

/** Which host of a list a new server connection goes to (PgBouncer 1.24). */
export type LoadBalanceHosts = 'round-robin' | 'disable'

export interface DatabaseConfig {
  name: string
  /**
   * As written (`a,b,c` for a list), for SHOW DATABASES and log lines; '' when
   * the entry has none: then, as in PgBouncer, the socket in unix_socket_dir.
   */
  host: string
  /** The first host's port. */
  port: number
  /**
   * host split at commas, each with its port: what server connections use. A
   * host starting with '/' (or '@', abstract) is a unix socket's directory;
   * '' is unix_socket_dir's (address.ts).
   */
  hosts: HostPort[]
  /** Unset: round-robin. */
  loadBalanceHosts?: LoadBalanceHosts
  /** libpq's meaning: which hosts of the list a server may be on (unset: any). */
  targetSessionAttrs?: TargetSessionAttrs
  dbname: string
  user?: string
  password?: string
  poolSize?: number
  minPoolSize?: number
  reservePoolSize?: number
  poolMode?: PoolMode
  maxDbConnections?: number
  maxDbClientConnections?: number
  connectQuery?: string
  clientEncoding?: string
  datestyle?: string
  timezone?: string
  applicationName?: string
  /** Per database: who runs auth_query, in which database, which query. */
  authUser?: string
  authDbname?: string
  authQuery?: string
  /** Per database (PgBouncer 1.24): overrides the global value; the user's wins over it. */
  queryWaitTimeout?: number
  /** Per database (PgBouncer 1.23): above 0 it overrides the global server_lifetime. */
  serverLifetime?: number
  /** Ours: overrides the global value; the user's wins over it. */
  sessionStatePolicy?: SessionStatePolicy
}

export interface UserConfig {
  name: string
  poolMode?: PoolMode
  maxUserConnections?: number
  maxUserClientConnections?: number
  poolSize?: number
  /** Overrides of PgBouncer 1.24/1.25; a timeout of 0 leaves the global value in force. */
  reservePoolSize?: number
  queryTimeout?: number
  queryWaitTimeout?: number
  idleTransactionTimeout?: number
  transactionTimeout?: number
  clientIdleTimeout?: number
  sessionStatePolicy?: SessionStatePolicy
}

/** A [peers] entry: another pooler, by the peer_id it issues cancel keys with. */
export interface PeerConfig {
  id: number
  /** A host name or address, or a directory holding the peer's unix socket. */
  host: string
  port: number
  /** Cancel connections open to this peer at once, per worker (default_pool_size when unset). */
  poolSize?: number
}

export interface WorkerSettings {
  listenAddr: string
  listenPort: number
  authType: AuthType
  authUser: string | null
  authQuery: string
  authDbname: string | null
  poolMode: PoolMode
  maxClientConn: number
  maxDbClientConnections: number
  maxUserClientConnections: number
  defaultPoolSize: number
  minPoolSize: number
  reservePoolSize: number
  reservePoolTimeout: number
  maxDbConnections: number
  maxUserConnections: number
  serverResetQuery: string
  serverResetQueryAlways: boolean
  serverLifetime: number
  serverIdleTimeout: number
  /** SUSPEND: how long a connection may take to flush before it is dropped (0: no limit). */
  suspendTimeout: number
  serverConnectTimeout: number
  serverLoginRetry: number
  queryWaitTimeout: number
  queryWaitNotify: number
  queryTimeout: number
  idleTransactionTimeout: number
  transactionTimeout: number
  clientIdleTimeout: number
  cancelWaitTimeout: number
  serverCheckQuery: string
  serverCheckDelay: number
  serverFastClose: boolean
  serverRoundRobin: boolean
  clientLoginTimeout: number
  ignoreStartupParameters: string[]
  maxPacketSize: number
  scramIterations: number
  maxPreparedStatements: number
  sessionStatePolicy: SessionStatePolicy
  applicationNameAddHost: boolean
  trackExtraParameters: string[]
  adminUsers: string[]
  statsUsers: string[]
  logfile: string
  /** Also where a database entry without a host finds PostgreSQL's socket. */
  unixSocketDir: string
  listenBacklog: number
  logConnections: boolean
  logDisconnections: boolean
  logPoolerErrors: boolean
  disablePqexec: boolean
  tcpKeepalive: boolean
  peerId: number
  tcpKeepidle: number
}

/**
 * One side's TLS (client_tls_* or server_tls_*), files already read and
 * checked by the coordinator: what tls.createSecureContext takes, plus the mode.
 */
export interface TlsSide {
  sslmode: SslMode
  key?: string
  cert?: string
  ca?: string
  ciphers?: string
  minVersion: 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3'
  maxVersion: 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3'
}

/** null: that side's sslmode is disable. */
export interface TlsMaterial {
  client: TlsSide | null
  server: TlsSide | null
}

export interface WorkerConfig {
  settings: WorkerSettings
  tls: TlsMaterial
  databases: Record<string, DatabaseConfig>
  fallbackDatabase: DatabaseConfig | null
  users: Record<string, UserConfig>
  peers: Record<string, PeerConfig>
  authUsers: Record<string, string>
  /** auth_hba_file's rules, when auth_type is hba. */
  hba: HbaRule[] | null
}

/** What the coordinator hands a worker thread at start. */
export interface WorkerData {
  id: number
  sab: SharedArrayBuffer
  config: WorkerConfig
  listen: { host: string; port: number }
  /** unix_socket_dir's socket; worker 0 listens on it (a path has one listener). */
  unixSocket: { path: string; mode: number; gid: number } | null
  /**
   * `user =`: who worker 0's socket file is given to, so that the pooler can
   * replace and remove it once it runs as that user. (The TCP sockets the
   * coordinator hands over itself, once every worker has bound its own.)
   */
  listenOwner: { uid: number; gid: number } | null
  log: {
    level: string
    /** stdout as 'json' or 'pretty', a port to the coordinator, or none. */
    console: 'json' | 'pretty' | MessagePort | null
    /** The logfile's descriptor, opened once for the process by the coordinator. */
    logfileFd: number | null
    /** Bindings of a program's own logger. */
    base?: Record<string, unknown>
  }
}
