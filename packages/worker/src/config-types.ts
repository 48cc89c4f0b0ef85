/**
 * The part of the coordinator's validated configuration a worker reads. The
 * coordinator's `Config` is a structural superset: it arrives as plain data
 * (workerData at start, a control message on reload), already validated.
 */
export type PoolMode = 'session' | 'transaction' | 'statement'
export type AuthType = 'trust' | 'any' | 'plain' | 'md5' | 'scram-sha-256' | 'cert' | 'hba' | 'pam'

export interface DatabaseConfig {
  name: string
  host: string
  port: number
  dbname: string
  user?: string
  password?: string
  poolSize?: number
  minPoolSize?: number
  reservePoolSize?: number
  poolMode?: PoolMode
  maxDbConnections?: number
  connectQuery?: string
  clientEncoding?: string
  datestyle?: string
  timezone?: string
  applicationName?: string
}

export interface UserConfig {
  name: string
  poolMode?: PoolMode
  maxUserConnections?: number
  poolSize?: number
}

export interface WorkerSettings {
  listenAddr: string
  listenPort: number
  authType: AuthType
  poolMode: PoolMode
  maxClientConn: number
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
  serverConnectTimeout: number
  serverLoginRetry: number
  queryWaitTimeout: number
  clientLoginTimeout: number
  ignoreStartupParameters: string[]
  maxPacketSize: number
  applicationNameAddHost: boolean
  adminUsers: string[]
  statsUsers: string[]
  logfile: string
  listenBacklog: number
  logConnections: boolean
  logDisconnections: boolean
  tcpKeepalive: boolean
}

export interface WorkerConfig {
  settings: WorkerSettings
  databases: Record<string, DatabaseConfig>
  fallbackDatabase: DatabaseConfig | null
  users: Record<string, UserConfig>
  authUsers: Record<string, string>
}
