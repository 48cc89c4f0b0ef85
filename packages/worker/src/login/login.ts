import { Buffer } from 'node:buffer'
import type tls from 'node:tls'
import { FrameReader } from '@pgbouncer-cluster/protocol/frame-reader'
import { FrontendCode, MAX_STARTUP_PACKET_SIZE } from '@pgbouncer-cluster/protocol/messages'
import {
  authenticationOk,
  negotiateProtocolVersion,
  parameterStatus,
  setWelcomeKey,
  welcomeFor,
  welcomeTemplate,
} from '@pgbouncer-cluster/protocol/serializer'
import { ClientAuth } from '../auth.ts'
import type { AuthType, DatabaseConfig, Replication } from '../config-types.ts'
import { fatal, SlotError, SqlState, Texts } from '../errors.ts'
import { matchHba } from '../hba.ts'
import { parseOptions, shareVars, trackedName } from '../params.ts'
import type { Pool } from '../pool/pool.ts'
import type { Server } from '../server.ts'
import { pauseReading, remoteOf, startReading, TcpConnection } from '../socket-io.ts'
import { type KnownStartup, StartupPackets } from '../startup-cache.ts'
import { acceptTls, type TlsSetup, tlsRequired } from '../tls.ts'
import { HOLD_LIMIT } from '../unfinished.ts'
import type { ClientSlots, LoginClient, LoginHost } from './host.ts'
import { type WelcomeMemo, welcomeStart, withServerValues } from './welcome.ts'

/** The console's own user, as PgBouncer names it. */
const ADMIN_USER = 'pgbouncer'
/** The console as a database, for its clients' counts (max_db_client_connections). */
const ADMIN_DATABASE: DatabaseConfig = {
  name: 'pgbouncer',
  host: '',
  port: 0,
  hosts: [],
  dbname: 'pgbouncer',
}

const startupPackets = new StartupPackets<WelcomeMemo>()

// Frame callbacks run synchronously inside push(), one login at a time per
// thread: the login being read is passed through this slot.
let reading: Login
function onLoginFrame(type: number, msg: Buffer): boolean {
  return reading.onMessage(type, msg)
}

/**
 * A client's login: the startup packet, TLS, the client limits, the
 * authentication and the welcome. The session drops it at its welcome:
 * thousands of clients may sit idle, and none of them carries it. (An admin
 * console session keeps it; those are few.)
 */
export class Login {
  private readonly client: LoginClient
  private readonly host: LoginHost
  /** Frames the startup packets, then the authentication messages. */
  private reader: FrameReader | null = new FrameReader({
    startup: true,
    maxLength: MAX_STARTUP_PACKET_SIZE,
  })
  /** Bytes a pipelining client sent before our welcome: replayed once it is out. */
  private early: Buffer[] | null = null
  private auth: ClientAuth | null = null
  /** Answered 'S' to SSLRequest; the handshake starts after this packet. */
  private tlsAccepted = false
  private forgetHandshake: (() => void) | null = null
  /** Came in (through the unix socket) while a shutdown waits: the console only, as PgBouncer. */
  private readonly arrivedClosing: boolean
  /** The database entry; null for the admin console. */
  private db: DatabaseConfig | null = null
  /** auth_type, or the method of the hba rule that matched. */
  private authType: AuthType = 'trust'
  /** The StartupMessage, as this thread's logins share it (startup-cache.ts). */
  private startup: KnownStartup<WelcomeMemo> | null = null
  /** The console's own user `pgbouncer`, come through a private unix socket: an admin. */
  private ownUser = false
  /**
   * The database asked for is not configured: the password is checked all the
   * same and only then is `no such database` told (PgBouncer's fake database).
   */
  private unknownDatabase = false
  /** A replication client's parameters for its own server (as PgBouncer sends them on). */
  private replicationParams: Record<string, string> | null = null

  constructor(client: LoginClient, host: LoginHost) {
    this.client = client
    this.host = host
    this.arrivedClosing = host.closing
  }

  /** The session closed: a TLS handshake under way is dropped. */
  closed(): void {
    this.forgetHandshake?.()
  }

  /** Bytes from a client that is not yet at work. */
  onData(chunk: Buffer): void {
    const client = this.client
    const reader = this.reader
    if (reader === null) {
      this.early ??= []
      this.early.push(chunk)
      // Sent before the welcome: kept in the kernel, as toServer does, past a bound.
      if (this.early.length > 1 && byteLength(this.early) > HOLD_LIMIT) pauseReading(client.socket)
      return
    }
    try {
      reading = this
      reader.push(chunk, onLoginFrame)
    } catch (err) {
      const e = err as Error & { sqlstate?: string }
      client.fail(fatal(e.message, e.sqlstate ?? SqlState.ProtocolViolation))
      return
    }
    if (this.tlsAccepted && !client.encrypted) {
      if (reader.takeRemainder().length > 0) {
        // Sent before the handshake, so not protected by it: PostgreSQL and
        // PgBouncer refuse it too, as a man-in-the-middle could have put it there.
        client.fail(fatal(Texts.unencryptedAfterSslRequest))
        return
      }
      this.startTls(this.host.tls.client!)
      return
    }
    const state = client.state
    if (state === 'welcome' || state === 'active' || state === 'admin') {
      // Authenticated: what follows is for a server, not for the login reader.
      this.reader = null
      const rest = reader.takeRemainder()
      if (rest.length > 0) client.onBytes(rest)
    }
  }

  onMessage(type: number, msg: Buffer): boolean {
    const client = this.client
    if (client.state === 'closed') return true
    if (type === 0) {
      this.onStartupPacket(msg)
    } else if (this.auth !== null) {
      if (type === FrontendCode.Terminate) {
        client.close('client close request')
        return true
      }
      this.authStep(this.auth.next(msg))
    } else {
      client.fail(fatal(`unexpected message '${String.fromCharCode(type)}' during login`))
    }
    // Stop at an accepted SSLRequest: what follows must come through TLS.
    if (this.tlsAccepted && !client.encrypted) return true
    return client.state !== 'startup' && client.state !== 'auth'
  }

  private onStartupPacket(packet: Buffer): void {
    const client = this.client
    const startup = startupPackets.parse(packet)
    switch (startup.kind) {
      case 'ssl': {
        if (client.encrypted) {
          client.close('SSL req inside SSL')
          return
        }
        const setup = this.host.tls.client
        if (setup === null || client.unix) {
          client.write(NO_ENCRYPTION)
          return
        }
        // The handshake starts once the login reader has stopped at this
        // packet (onData): nothing may follow it in plain text.
        client.write(ENCRYPTION_ACCEPTED)
        this.tlsAccepted = true
        return
      }
      case 'gssenc':
        // GSSAPI encryption is not offered: the client goes on without it.
        client.write(NO_ENCRYPTION)
        return
      case 'cancel':
        // Nothing more is read; the connection closes once PostgreSQL has
        // taken the cancel, which is what the client waits for.
        pauseReading(client.socket)
        this.host.cancel(startup.pid, startup.secret, () => client.close(null))
        return
      case 'startup':
        if (
          !client.encrypted &&
          !client.unix &&
          tlsRequired(this.host.tls.client?.mode ?? 'disable')
        ) {
          client.fail(fatal(Texts.sslRequired))
          return
        }
        this.reader!.startup = false
        this.startup = startup
        this.onStartup(startup.list, startup.minor, startup.protocolOptions)
        return
    }
  }

  private onStartup(params: readonly string[], minor: number, protocolOptions: string[]): void {
    const client = this.client
    const host = this.host
    const settings = host.settings
    const ignored = settings.ignoreStartupParameters
    const vars = client.vars
    let appName: string | undefined
    // First `replication`: it decides how `options` is read (PgBouncer 1.23).
    let passOn: Record<string, string> | null = null
    for (let i = 0; i < params.length; i += 2) {
      if (params[i] !== 'replication') continue
      client.replication = replicationOf(params[i + 1]!)
      if (client.replication !== 'none') {
        passOn = { replication: client.replication === 'logical' ? 'database' : 'yes' }
      }
    }
    for (let i = 0; i < params.length; i += 2) {
      const key = params[i]!
      const value = params[i + 1]!
      if (key === 'user') client.user = value
      else if (key === 'database') client.database = value
      else if (key === 'application_name') appName = value
      else if (key === 'replication') continue
      else if (passOn !== null && key === 'options') {
        // The server is this client's alone: any options go to it as they are.
        passOn.options = value
      } else if (key === 'options') {
        const parsed = parseOptions(value, ignored)
        if ('error' in parsed) {
          client.fail(fatal(parsed.error))
          return
        }
        Object.assign(vars, parsed.vars)
      } else {
        const tracked = trackedName(key)
        if (tracked !== null) {
          vars[tracked] = value
          if (passOn !== null) passOn[key] = value
        } else if (!ignored.includes(key) && !ignored.includes(key.toLowerCase())) {
          client.fail(fatal(Texts.unsupportedParameter(key)))
          return
        }
      }
    }
    if (client.database === '') client.database = client.user
    if (settings.applicationNameAddHost) {
      // PgBouncer's form: "<name or app> - <address>:<port>", so a server's
      // pg_stat_activity tells which client a session serves.
      const peer = client.unix ? null : remoteOf(client.socket)
      const where =
        peer === null
          ? `unix:${settings.listenPort}`
          : peer.family === 'IPv6'
            ? `[${peer.address}]:${peer.port}`
            : `${peer.address}:${peer.port}`
      appName = `${appName ?? 'app'} - ${where}`
    }
    if (appName !== undefined) vars.application_name = appName
    if (passOn !== null) {
      if (appName !== undefined) passOn.application_name = appName
      this.replicationParams = passOn
    }
    if (minor > 0 || protocolOptions.length > 0) {
      client.write(negotiateProtocolVersion(0, protocolOptions))
    }
    if (!host.admitClient()) {
      client.fail(fatal(Texts.maxClientConn, SqlState.ProtocolViolation))
      return
    }
    client.admitted = true
    const adminConsole = host.isAdminDatabase(client.database)
    if (this.arrivedClosing && !adminConsole) {
      client.fail(fatal(Texts.shuttingDown, SqlState.CannotConnectNow))
      return
    }
    const db = adminConsole ? null : host.resolveDatabase(client.database)
    client.state = 'auth'
    this.db = db
    if (db === null && !adminConsole) {
      // The password first, then `no such database`: the answer tells a
      // stranger nothing about which databases exist.
      this.unknownDatabase = true
      this.authenticate(null)
      return
    }
    this.countAndAuthenticate(db)
  }

  /**
   * max_db_client_connections, max_user_client_connections: checked before
   * the password, as PgBouncer. The console counts as database `pgbouncer`,
   * where admin_users are let in over the limits (and still counted).
   */
  private countAndAuthenticate(db: DatabaseConfig | null): void {
    const settings = this.host.settings
    // auth_type any logs every client in as the database's forced user.
    const user = settings.authType === 'any' && db?.user ? db.user : this.client.user
    const admitted = this.host.admitToLimits(
      db ?? ADMIN_DATABASE,
      user,
      db === null && settings.adminUsers.includes(user),
    )
    // A promise only for the first login to a database and user in this thread.
    if (admitted instanceof Promise) void admitted.then((answer) => this.onAdmitted(db, answer))
    else this.onAdmitted(db, admitted)
  }

  private onAdmitted(
    db: DatabaseConfig | null,
    admitted: ClientSlots | 'db' | 'user' | SlotError,
  ): void {
    const client = this.client
    if (admitted instanceof SlotError) {
      client.fail(fatal(admitted.message, admitted.sqlstate))
      return
    }
    if (admitted === 'db' || admitted === 'user') {
      client.fail(
        fatal(admitted === 'db' ? Texts.maxDbClientConnections : Texts.maxUserClientConnections),
      )
      return
    }
    client.counted = admitted
    if (client.state === 'closed') {
      // Gone while the slots were looked up: give them back the usual way.
      this.host.releaseCounted(client)
      return
    }
    this.authenticate(db)
  }

  private authenticate(db: DatabaseConfig | null): void {
    const client = this.client
    const host = this.host
    const settings = host.settings
    if (db === null && client.unix && client.user === ADMIN_USER && host.unixSocketIsPrivate()) {
      // PgBouncer lets its own OS user into the console as `pgbouncer` without
      // a password (getpeereid); a private socket is how near Node comes.
      this.ownUser = true
      this.authStep({ kind: 'ok', final: null, scramKeys: null })
      return
    }
    let authType = settings.authType
    if (authType === 'hba') {
      // The first rule of auth_hba_file that fits says how (PgBouncer's hba_eval).
      const rule = matchHba(host.config.hba ?? [], {
        address: client.unix ? null : (client.socket.remoteAddress ?? null),
        tls: client.encrypted,
        database: client.database,
        user: client.user,
        replication: client.replication,
      })
      if (rule === null) {
        client.fail(fatal(Texts.noHbaRule))
        return
      }
      host.log.debug({ client: client.pid, file: rule.file, line: rule.line }, 'hba rule matched')
      if (rule.method === 'reject') {
        client.fail(fatal(Texts.loginRejected))
        return
      }
      authType = rule.method === 'password' ? 'plain' : rule.method
    }
    this.authType = authType
    if (authType === 'cert') {
      this.authenticateByCertificate()
      return
    }
    const stored = host.authUsers[client.user]
    if (stored === undefined && PASSWORD_AUTH.has(authType) && !this.unknownDatabase) {
      // Not for a database that does not exist (PgBouncer's fake database).
      const viaQuery = db === null ? settings.authUser : host.authUserFor(db)
      if (viaQuery !== null) {
        void this.authenticateByQuery(db)
        return
      }
    }
    if (authType === 'trust' && stored === undefined && host.hasAuthFile) {
      // A user auth_file does not know is not let through to PostgreSQL.
      client.fail(fatal(Texts.trustFailed))
      return
    }
    this.auth = new ClientAuth(
      authType,
      client.user,
      stored,
      host.hasAuthFile,
      settings.scramIterations,
    )
    this.authStep(this.auth.start())
  }

  /**
   * auth_type cert: a TLS client whose certificate (checked against
   * client_tls_ca_file) names the user in its CommonName, as in PgBouncer.
   */
  private authenticateByCertificate(): void {
    const client = this.client
    const socket = client.socket as unknown as tls.TLSSocket
    const commonName = client.encrypted ? socket.getPeerCertificate().subject?.CN : undefined
    if (commonName !== client.user || !socket.authorized) {
      this.host.log.info(
        { client: client.id, user: client.user, tls: client.encrypted, cn: commonName ?? null },
        'certificate authentication failed',
      )
      client.fail(fatal(Texts.certificateFailed))
      return
    }
    this.authStep({ kind: 'ok', final: null, scramKeys: null })
  }

  /** Not in auth_file: auth_query says what the password is, then the usual exchange. */
  private async authenticateByQuery(db: DatabaseConfig | null): Promise<void> {
    const client = this.client
    const lookup = await this.host.authQuery(db, client.user)
    if (client.state === 'closed') return
    if (lookup.kind === 'error') {
      client.fail(fatal(lookup.message, lookup.sqlstate))
      return
    }
    // An unknown user, or one whose password is NULL, goes through the
    // exchange all the same and fails it: the answer does not tell which.
    const secret = lookup.kind === 'found' ? (lookup.secret ?? undefined) : undefined
    this.auth = new ClientAuth(
      this.authType,
      client.user,
      secret,
      true,
      this.host.settings.scramIterations,
    )
    this.authStep(this.auth.start())
  }

  private authStep(step: ReturnType<ClientAuth['start']>): void {
    const client = this.client
    if (step.kind === 'send') {
      client.write(step.message)
      return
    }
    if (step.kind === 'fail') {
      client.fail(
        step.empty === true
          ? fatal(Texts.emptyPassword)
          : fatal(Texts.passwordFailed(client.user), SqlState.InvalidPassword),
      )
      return
    }
    this.auth = null
    if (this.unknownDatabase) {
      client.fail(fatal(Texts.noSuchDatabase(client.database)))
      return
    }
    const db = this.db
    client.state = db === null ? 'admin' : 'welcome'
    if (step.final !== null) client.write(step.final)
    if (db !== null) {
      this.enterPool(db, step.scramKeys)
      return
    }
    // The virtual database `pgbouncer`: the admin console takes the socket over.
    client.startAdmin(this.ownUser)
  }

  private enterPool(
    db: DatabaseConfig,
    scramKeys: { clientKey: Buffer; serverKey: Buffer } | null,
  ): void {
    const client = this.client
    if (this.host.isDisabled(db.name)) {
      client.fail(fatal(Texts.databaseDisabled(db.name)))
      return
    }
    const pool = this.host.getPool(db, db.user ?? client.user)
    // A promise only for the first login to a database and user in this thread.
    if (pool instanceof Promise) {
      void pool.then(
        (opened) => this.joinPool(db, opened, scramKeys),
        (err: Error) =>
          client.fail(fatal(err.message, err instanceof SlotError ? err.sqlstate : undefined)),
      )
      return
    }
    this.joinPool(db, pool, scramKeys)
  }

  private joinPool(
    db: DatabaseConfig,
    pool: Pool,
    scramKeys: { clientKey: Buffer; serverKey: Buffer } | null,
  ): void {
    const client = this.client
    if (client.state === 'closed') return
    // The pool's copies of the names, so that idle clients share them.
    if (pool.user === client.user) client.user = pool.user
    if (db.name === client.database) client.database = db.name
    client.joinPool(pool)
    if (scramKeys !== null && pool.user === client.user) pool.scramKeys = scramKeys
    if (this.host.settings.logConnections) {
      this.host.log.info(
        { client: client.id, remote: client.remote, db: client.database, user: client.user },
        'login',
      )
    }
    // An open breaker answers at once with the server's own last error.
    const refused = pool.fastFailError()
    if (refused !== null) {
      client.fail(refused)
      return
    }
    const passOn = this.replicationParams
    if (passOn !== null) {
      // A server of its own, linked for the whole session, never pooled.
      client.openDedicated(passOn)
      return
    }
    if (pool.welcomeParams !== null) {
      this.sendWelcome(pool)
      return
    }
    // The pool has never seen a server: its parameters come from the first one.
    client.askForServer()
  }

  /** AuthenticationOk, the server's parameters, our key, ReadyForQuery: the client is at work. */
  sendWelcome(pool: Pool): void {
    const client = this.client
    const params = pool.welcomeParams!
    // The client's vars come from its startup packet alone, unless
    // application_name_add_host adds its port to them.
    const known = this.host.settings.applicationNameAddHost ? null : this.startup
    let memo = known === null ? null : known.memo
    if (memo !== null && memo.pool === pool && memo.params === params) {
      client.adoptVars(memo.vars, memo.varsKey)
    } else {
      const shared = shareVars(withServerValues(client.vars, params))
      client.adoptVars(shared.vars, shared.key)
      const template = welcomeStart(pool, params, shared.vars, shared.key)
      memo = { pool, params, vars: shared.vars, varsKey: shared.key, template, welcome: null }
      if (known !== null) known.memo = memo
    }
    const last = memo.welcome
    const welcome =
      last !== null
        ? setWelcomeKey(last, client.pid, client.secret)
        : welcomeFor(memo.template, client.pid, client.secret)
    // Kept for the next login, unless a write left queued still points at it.
    memo.welcome = client.sendWhole(welcome) ? welcome : null
    this.welcomed()
  }

  /** A replication client's welcome: from its own server's parameters. */
  sendDedicatedWelcome(server: Server): void {
    const client = this.client
    const parts: Buffer[] = [authenticationOk()]
    for (const [name, value] of server.params) parts.push(parameterStatus(name, value))
    client.sendWhole(welcomeFor(welcomeTemplate(Buffer.concat(parts)), client.pid, client.secret))
    this.welcomed()
  }

  /** The welcome is out: what the client sent early is read. */
  private welcomed(): void {
    const client = this.client
    // A login that waited (client limits, auth_query) still holds its reader:
    // what it kept is the start of the client's first request.
    let early = this.early
    const rest = this.reader?.takeRemainder()
    if (rest !== undefined && rest.length > 0) (early ??= []).unshift(rest)
    // Reading stopped if the client sent much before its welcome (onData).
    client.startWork(early, this.early !== null)
  }

  /** The client asked for TLS and got 'S': the rest of its connection goes through TLS. */
  private startTls(setup: TlsSetup): void {
    const client = this.client
    let socket = client.socket
    if (socket instanceof TcpConnection) {
      // TLS runs over a net.Socket: one is built on the same handle now.
      socket = socket.toNetSocket()
      client.adoptSocket(socket, false)
    }
    pauseReading(socket)
    this.forgetHandshake = acceptTls(socket, setup, (secure) => {
      this.forgetHandshake = null
      if (secure === null) {
        // A failed handshake or a refused certificate: nothing to tell in plain text.
        client.close(null)
        return
      }
      if (client.state === 'closed') {
        secure.destroy()
        return
      }
      client.adoptSocket(secure, true)
      startReading(secure, client, false)
    })
  }
}

function byteLength(chunks: Buffer[]): number {
  let n = 0
  for (const chunk of chunks) n += chunk.length
  return n
}

const NO_ENCRYPTION = Buffer.from('N')
const ENCRYPTION_ACCEPTED = Buffer.from('S')
/** auth_type values that check a password; auth_query can supply it. */
const PASSWORD_AUTH = new Set(['plain', 'md5', 'scram-sha-256'])

/**
 * The startup parameter `replication` as PgBouncer reads it: `database` is
 * logical replication, a true boolean physical; anything else none.
 */
function replicationOf(value: string): Replication {
  if (value === 'database') return 'logical'
  return /^(t|tr|tru|true|y|ye|yes|on|1)$/i.test(value) ? 'physical' : 'none'
}
