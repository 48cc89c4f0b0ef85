import type { Buffer } from 'node:buffer'
import type net from 'node:net'
import type { Lookup } from '../auth-query.ts'
import type { DatabaseConfig, Replication, WorkerConfig, WorkerSettings } from '../config-types.ts'
import type { SlotError } from '../errors.ts'
import type { Logger } from '../log.ts'
import type { Vars } from '../params.ts'
import type { Pool } from '../pool/pool.ts'
import type { ClientSocket, ConnectionOwner } from '../socket-io.ts'
import type { TlsSetups } from '../tls.ts'

/** Shared-memory slots of a database's and a user's client counts; -1: not counted. */
export interface ClientSlots {
  databaseSlot: number
  userSlot: number
}

export type ClientState = 'startup' | 'auth' | 'welcome' | 'active' | 'admin' | 'closed'

/**
 * What a login needs of its worker thread: a narrow context, so that
 * login.ts imports neither worker.ts nor client.ts.
 */
export interface LoginHost {
  readonly settings: WorkerSettings
  readonly log: Logger
  readonly tls: TlsSetups
  /** A shutdown is under way. */
  readonly closing: boolean
  readonly authUsers: Record<string, string>
  readonly hasAuthFile: boolean
  /** The running configuration (auth_hba_file's rules). */
  readonly config: Pick<WorkerConfig, 'hba'>
  /** max_client_conn, across the cluster. */
  admitClient(): boolean
  /**
   * max_db_client_connections / max_user_client_connections, across the
   * cluster. A promise only while the coordinator is asked for the slots.
   */
  admitToLimits(
    db: DatabaseConfig,
    user: string,
    exempt: boolean,
  ): ClientSlots | 'db' | 'user' | Promise<ClientSlots | 'db' | 'user' | SlotError>
  releaseCounted(client: LoginClient): void
  isAdminDatabase(name: string): boolean
  /** Only this process's OS user (and root) can reach the unix socket (worker.ts). */
  unixSocketIsPrivate(): boolean
  /** DISABLE db: its clients are refused after their login. */
  isDisabled(database: string): boolean
  resolveDatabase(name: string): DatabaseConfig | null
  authUserFor(db: DatabaseConfig): string | null
  authQuery(db: DatabaseConfig | null, user: string): Promise<Lookup>
  /** The pool; a promise only while the coordinator is asked for its slots. */
  getPool(db: DatabaseConfig, user: string): Pool | Promise<Pool>
  /** A CancelRequest: carried out here or routed to the worker that owns the key; `done` once it is over. */
  cancel(pid: number, secret: number, done: () => void): void
}

/**
 * The client connection a login speaks through (client.ts's ClientSession),
 * and the calls that hand it over to the pass-through or the console.
 */
export interface LoginClient extends ConnectionOwner {
  state: ClientState
  readonly socket: ClientSocket
  /** The connection is in TLS. */
  readonly encrypted: boolean
  /** Came in through the unix socket: no TLS, none required (as PgBouncer). */
  readonly unix: boolean
  readonly id: number
  readonly pid: number
  readonly secret: number
  user: string
  database: string
  /** The startup parameter `replication`: such a client gets a server of its own (PgBouncer 1.23). */
  replication: Replication
  /** Written while the client logs in; shared once it is welcome (adoptVars). */
  readonly vars: Vars
  readonly remote: string
  /** Took a max_client_conn slot. */
  admitted: boolean
  /** The client-count slots this login holds (max_db/user_client_connections). */
  counted: ClientSlots | null
  write(buf: Buffer): void
  /** Writes `buf`; true when the kernel took all of it, and `buf` may be written into again. */
  sendWhole(buf: Buffer): boolean
  fail(error: Buffer): void
  close(reason: string | null, terminated?: boolean): void
  /** Bytes read past the login: the session's to dispatch. */
  onBytes(chunk: Buffer): boolean
  /** The connection now runs over `socket` (a net.Socket for TLS, then the TLS socket). */
  adoptSocket(socket: net.Socket, encrypted: boolean): void
  /** The client's vars as shared (shareVars), and their key. */
  adoptVars(vars: Vars, key: string): void
  /** Logged in to the admin console: it takes the socket over. */
  startAdmin(ownUser: boolean): void
  /** Logged in to a pool: the pass-through's pool, mode and prepared statements. */
  joinPool(pool: Pool): void
  /** The pool has never seen a server: the welcome waits for the first one. */
  askForServer(): void
  /** A replication client: a server of its own, opened with `params`; the welcome waits for it. */
  openDedicated(params: Record<string, string>): void
  /** The welcome is out: the pass-through begins, with the bytes sent before it. */
  startWork(early: Buffer[] | null, resume: boolean): void
}
