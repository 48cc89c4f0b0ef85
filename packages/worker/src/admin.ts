import type { AdminColumn } from '@pgbouncer-cluster/protocol/control'
import { FrameReader } from '@pgbouncer-cluster/protocol/frame-reader'
import { FrontendCode, TxStatus } from '@pgbouncer-cluster/protocol/messages'
import {
  authenticationOk,
  backendKeyData,
  commandComplete,
  dataRow,
  noticeResponse,
  parameterStatus,
  readyForQuery,
  rowDescription,
} from '@pgbouncer-cluster/protocol/serializer'
import type { WorkerSettings } from './config-types.ts'
import { error, fatal, SqlState, Texts } from './errors.ts'
import type { Logger } from './log.ts'
import type { Vars } from './params.ts'

/** A console command's result, as the coordinator sends it back. */
export interface AdminReply {
  tag: string
  columns: AdminColumn[]
  rows: (string | null)[][]
  error?: string
  sqlstate?: string
  notice?: string
}

/** What a console session needs of its worker (worker.ts's PoolerWorker is one). */
export interface AdminContext {
  readonly settings: WorkerSettings
  readonly log: Logger
  /** The worker's side of the console (admin-state.ts's WorkerAdmin). */
  readonly admin: {
    queries: number
    request(command: string, arg: string | undefined): Promise<AdminReply>
  }
}

/** The client connection a console session speaks through (client.ts's ClientSession). */
export interface AdminClient {
  readonly worker: AdminContext
  readonly state: string
  /** SHOW CLIENTS' id. */
  readonly id: number
  readonly pid: number
  readonly secret: number
  readonly user: string
  readonly remote: string
  readonly vars: Vars
  writeAll(messages: Buffer[]): void
  fail(error: Buffer): void
  close(reason: string | null): void
  logPoolerError(error: Buffer): void
}

/**
 * PgBouncer's texts for the console (admin.c), so that scripts matching on
 * them keep working. All carry SQLSTATE 08P01, as PgBouncer's do.
 */
const Text = {
  notAllowed: 'not allowed',
  adminNeeded: 'admin access needed',
  invalid: (query: string) => `invalid command '${query}', use SHOW HELP;`,
  extended: 'extended query protocol not supported by admin console',
  unsupportedPacket: (type: number) => `unsupported packet type for admin console: ${type}`,
  badPacket: 'bad packet',
  badArguments: 'bad arguments',
  notSupported: (what: string) => `${what} is not supported by pgbouncer-cluster`,
} as const

/** What SHOW shows, answered by the coordinator for the whole cluster. */
const SHOW_VIEWS = new Set([
  'CONFIG',
  'DATABASES',
  'POOLS',
  'CLIENTS',
  'SERVERS',
  'SOCKETS',
  'ACTIVE_SOCKETS',
  'MEM',
  'USERS',
  'VERSION',
  'LISTS',
  'STATS',
  'STATS_TOTALS',
  'STATS_AVERAGES',
  'TOTALS',
  'DNS_HOSTS',
  'DNS_ZONES',
  'STATE',
  'PEERS',
  'PEER_POOLS',
  'HOSTS',
  // Ours: the session state each pool's clients leave (issue 29).
  'SESSION_STATE',
])
/** PgBouncer's file descriptors, to hand to a new process (-R): worker threads cannot. */
const SHOW_UNSUPPORTED = new Set(['FDS'])
/**
 * Commands run cluster-wide by the coordinator, which also checks the database
 * named after PAUSE, RESUME, RECONNECT, KILL, DISABLE, ENABLE and WAIT_CLOSE.
 */
const COMMANDS = new Set([
  'PAUSE',
  'RESUME',
  'RECONNECT',
  'KILL',
  'KILL_CLIENT',
  'RELOAD',
  'SHUTDOWN',
  'SUSPEND',
  'DISABLE',
  'ENABLE',
  'WAIT_CLOSE',
])
const WITHOUT_ARGUMENT = new Set(['RELOAD', 'SUSPEND'])
/** SHUTDOWN's optional argument (PgBouncer 1.23+). */
const SHUTDOWN_MODES = new Set(['WAIT_FOR_CLIENTS', 'WAIT_FOR_SERVERS'])

const HELP = [
  'SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION',
  'SHOW PEERS|PEER_POOLS|HOSTS',
  'SHOW SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE',
  'SHOW DNS_HOSTS|DNS_ZONES',
  'SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS',
  'SET key = arg',
  'RELOAD',
  'PAUSE [<db>]',
  'RESUME [<db>]',
  'DISABLE <db>',
  'ENABLE <db>',
  'RECONNECT [<db>]',
  'KILL [<db>]',
  'KILL_CLIENT <client_id>',
  'SUSPEND',
  'SHUTDOWN',
  'SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS',
  'WAIT_CLOSE [<db>]',
]
  .map((line) => `\n\t${line}`)
  .join('')

/**
 * Session parameters some drivers set or ask for on any connection: PgBouncer's
 * console answers with fixed values and ignores a SET of them.
 */
const FAKE_PARAMS = new Map([
  ['client_encoding', 'UTF-8'],
  ['default_transaction_isolation', 'read committed'],
  ['standard_conforming_strings', 'on'],
  ['datestyle', 'ISO'],
  ['timezone', 'GMT'],
])
/** PgBouncer's buffers for a SET's name and value: longer ones get `bad arguments`. */
const MAX_SET_NAME = 63
const MAX_SET_VALUE = 255

/** Queries longer than this are not console commands; PgBouncer's own limit is its packet buffer. */
const MAX_ADMIN_MESSAGE = 64 * 1024

/**
 * A client of the virtual database `pgbouncer`: PgBouncer's admin console.
 * It lives in the worker the client landed on and speaks the simple query
 * protocol only; each command travels to the coordinator, which answers for
 * the whole cluster (one row per pool, summed over workers).
 */
export class AdminSession {
  private readonly client: AdminClient
  private readonly reader = new FrameReader({ maxLength: MAX_ADMIN_MESSAGE })
  /** Messages not handled yet: one command runs at a time, answers keep their order. */
  private readonly queue: Buffer[] = []
  private running = false
  /** After an unsupported message PgBouncer drops whatever comes next. */
  private broken = false

  /** The console's own user through a private unix socket (client.ts): an admin whatever the lists say. */
  private readonly ownUser: boolean

  constructor(client: AdminClient, ownUser = false) {
    this.client = client
    this.ownUser = ownUser
  }

  /**
   * After authentication: only admin_users and stats_users get in (with
   * auth_type=any everyone does, as a stats user, as in PgBouncer).
   */
  start(): void {
    const client = this.client
    const settings = client.worker.settings
    const allowed =
      this.ownUser ||
      settings.authType === 'any' ||
      settings.adminUsers.includes(client.user) ||
      settings.statsUsers.includes(client.user)
    if (!allowed) {
      client.fail(fatal(Text.notAllowed))
      return
    }
    if (settings.logConnections) {
      client.worker.log.info(
        { client: client.id, remote: client.remote, db: 'pgbouncer', user: client.user },
        'login',
      )
    }
    const vars = client.vars
    const welcome = [authenticationOk()]
    for (const [name, value] of [
      ['server_version', '1.18.0/bouncer'],
      ['client_encoding', vars.client_encoding ?? 'UTF8'],
      ['server_encoding', 'UTF8'],
      ['DateStyle', 'ISO'],
      ['TimeZone', 'GMT'],
      ['standard_conforming_strings', 'on'],
      ['is_superuser', 'on'],
      ['application_name', vars.application_name ?? ''],
    ]) {
      welcome.push(parameterStatus(name, value))
    }
    welcome.push(backendKeyData(client.pid, client.secret), readyForQuery(TxStatus.Idle))
    client.writeAll(welcome)
  }

  onData(chunk: Buffer): void {
    try {
      this.reader.push(chunk, this.onMessage)
    } catch (err) {
      this.client.fail(fatal((err as Error).message))
      return
    }
    this.pump()
  }

  private readonly onMessage = (_type: number, msg: Buffer): void => {
    // The reader's views may point into a buffer reused by the next read.
    this.queue.push(Buffer.from(msg))
  }

  private pump(): void {
    if (this.running) return
    this.running = true
    void this.drain().finally(() => {
      this.running = false
    })
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && this.client.state === 'admin') {
      const msg = this.queue.shift()!
      try {
        await this.handle(msg)
      } catch (err) {
        // A console bug costs this session, never the worker and its clients.
        this.client.worker.log.error({ err: (err as Error).message }, 'admin console failed')
        this.client.fail(fatal('admin console error'))
      }
    }
  }

  private async handle(msg: Buffer): Promise<void> {
    const type = msg[0]
    if (this.broken) {
      this.client.fail(fatal(Text.badPacket))
      return
    }
    if (type === FrontendCode.Terminate) {
      this.client.close('client close request')
      return
    }
    if (type !== FrontendCode.Query) {
      const extended =
        type === FrontendCode.Parse || type === FrontendCode.Bind || type === FrontendCode.Execute
      this.broken = true
      this.finish(error(extended ? Text.extended : Text.unsupportedPacket(type)))
      return
    }
    if (this.client.worker.settings.disablePqexec) {
      // As PgBouncer: the console speaks only the simple protocol, so it is closed too.
      this.client.fail(fatal(Texts.pqexecDisallowed))
      return
    }
    const text = msg.toString('utf8', 5, msg.length - 1)
    this.client.worker.admin.queries++
    await this.query(text)
  }

  private async query(text: string): Promise<void> {
    const set = parseSet(text)
    if (set !== null) {
      await this.set(set)
      return
    }
    const parsed = parse(text)
    if (parsed === null) {
      this.finish(error(Text.invalid(text)))
      return
    }
    const { verb, arg } = parsed
    if (verb === 'SHOW') {
      if (arg === 'HELP') {
        this.finish(
          noticeResponse({
            severity: 'NOTICE',
            code: SqlState.SuccessfulCompletion,
            message: 'Console usage',
            detail: HELP,
          }),
          commandComplete('SHOW'),
        )
        return
      }
      const fake = arg === undefined ? undefined : FAKE_PARAMS.get(arg.toLowerCase())
      if (fake !== undefined) {
        const name = parsed.raw!.toLowerCase()
        this.finish(
          rowDescription([{ name, typeOid: 25 }]),
          dataRow([fake]),
          commandComplete('SHOW'),
        )
        return
      }
      if (arg !== undefined && SHOW_UNSUPPORTED.has(arg)) {
        this.finish(error(Text.notSupported(`SHOW ${arg}`), SqlState.FeatureNotSupported))
        return
      }
      if (arg === undefined || !SHOW_VIEWS.has(arg)) {
        this.finish(error(Text.invalid(text)))
        return
      }
    } else {
      if (
        !COMMANDS.has(verb) ||
        (WITHOUT_ARGUMENT.has(verb) && arg !== undefined) ||
        (verb === 'SHUTDOWN' && arg !== undefined && !SHUTDOWN_MODES.has(arg))
      ) {
        this.finish(error(Text.invalid(text)))
        return
      }
      if (!this.isAdmin()) {
        this.finish(error(Text.adminNeeded))
        return
      }
    }
    const reply = await this.client.worker.admin.request(verb, verb === 'SHOW' ? arg : parsed.raw)
    this.writeReply(reply)
  }

  /** SET name = value: changes a setting of the whole cluster (the coordinator's, as RELOAD). */
  private async set(set: { name: string; value: string } | 'bad'): Promise<void> {
    if (set === 'bad') {
      this.finish(error(Text.badArguments))
      return
    }
    if (FAKE_PARAMS.has(set.name.toLowerCase())) {
      this.finish(
        noticeResponse({
          severity: 'NOTICE',
          code: SqlState.SuccessfulCompletion,
          message: 'SET ignored',
        }),
        commandComplete('SET'),
      )
      return
    }
    if (!this.isAdmin()) {
      this.finish(error(Text.adminNeeded))
      return
    }
    this.writeReply(await this.client.worker.admin.request('SET', `${set.name}\u0000${set.value}`))
  }

  private isAdmin(): boolean {
    return this.ownUser || this.client.worker.settings.adminUsers.includes(this.client.user)
  }

  private writeReply(reply: AdminReply): void {
    if (reply.error !== undefined) {
      this.finish(error(reply.error, reply.sqlstate))
      return
    }
    const out: Buffer[] = []
    if (reply.notice !== undefined)
      out.push(
        noticeResponse({
          severity: 'NOTICE',
          code: SqlState.SuccessfulCompletion,
          message: reply.notice,
        }),
      )
    if (reply.columns.length > 0) {
      out.push(rowDescription(reply.columns.map(([name, typeOid]) => ({ name, typeOid }))))
      for (const row of reply.rows) out.push(dataRow(row))
    }
    out.push(commandComplete(reply.tag))
    this.finish(...out)
  }

  /** Writes one answer and the ReadyForQuery that ends it (the console never opens a transaction). */
  private finish(...messages: Buffer[]): void {
    const client = this.client
    if (client.state !== 'admin') return
    if (messages[0][0] === 0x45 /* E */) client.logPoolerError(messages[0])
    messages.push(readyForQuery(TxStatus.Idle))
    client.writeAll(messages)
  }
}

/**
 * PgBouncer's console grammar: a keyword, an optional argument, an optional
 * trailing semicolon. Keywords are case-insensitive; a database name keeps its
 * case unless double quotes are needed to say so.
 */
function parse(
  text: string,
): { verb: string; arg: string | undefined; raw: string | undefined } | null {
  const m = /^\s*([A-Za-z_]+)(?:\s+("(?:[^"]|"")+"|[^\s;"]+))?\s*;?\s*$/.exec(text)
  if (m === null) return null
  const verb = m[1].toUpperCase()
  const word = m[2]
  if (word === undefined) return { verb, arg: undefined, raw: undefined }
  const raw = word.startsWith('"') ? word.slice(1, -1).replaceAll('""', '"') : word
  return { verb, arg: raw.toUpperCase(), raw }
}

// PgBouncer's SET grammar: `SET name = value` or `SET name TO value`, the
// value one word or a single-quoted string ('' for a quote); the name a word
// or a double-quoted one. Case does not matter to the keywords.
const SET_WORD =
  /^\s*set\s+("(?:[^"]|"")*"|[0-9a-z_]+)\s*(?:=|to)\s*("(?:[^"]|"")*"|[0-9a-z_]+)\s*(?:;\s*)?$/i
const SET_STRING =
  /^\s*set\s+("(?:[^"]|"")*"|[0-9a-z_]+)\s*(?:=|to)\s*('(?:[^']|'')*')\s*(?:;\s*)?$/i

/** A SET command's name and value, unquoted; 'bad' when either is too long; null for another command. */
function parseSet(text: string): { name: string; value: string } | 'bad' | null {
  const m = SET_STRING.exec(text) ?? SET_WORD.exec(text)
  if (m === null) return null
  const name = unquote(m[1]!, '"')
  const value = unquote(m[2]!, m[2]![0] === "'" ? "'" : '"')
  if (name === '' || name.length > MAX_SET_NAME || value.length > MAX_SET_VALUE) return 'bad'
  return { name, value }
}

function unquote(word: string, quote: string): string {
  if (word[0] !== quote) return word
  return word.slice(1, -1).replaceAll(quote + quote, quote)
}
