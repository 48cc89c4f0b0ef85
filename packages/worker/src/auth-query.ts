// auth_user and auth_query: a user who is not in auth_file is looked up in
// PostgreSQL, as PgBouncer does. The query runs on a server of the
// (database, auth_user) pool, borrowed like any client borrows one, so it
// counts toward that pool's limits; its answer is the secret (password, md5
// hash or SCRAM secret) the client is then checked against, and the one the
// pooler logs in to PostgreSQL with for that user.

import { Buffer } from 'node:buffer'
import { FrameReader } from '@pgbouncer-cluster/protocol/frame-reader'
import { TxStatus } from '@pgbouncer-cluster/protocol/messages'
import { parseErrorFields } from '@pgbouncer-cluster/protocol/parser'
import { bind, execute, parse, sync } from '@pgbouncer-cluster/protocol/serializer'
import { SqlState, Texts } from './errors.ts'
import type { Pool, PoolClient } from './pool/pool.ts'
import type { Server } from './server.ts'

/** What auth_query said about a user. */
export type Lookup =
  | { kind: 'found'; secret: string | null }
  | { kind: 'unknown' }
  | {
      kind: 'error'
      sqlstate: string
      message: string
      /** PostgreSQL's own error for the query: for the log, not the client. */
      fromQuery?: true
    }

const DATA_ROW = 0x44 // D
const ERROR_RESPONSE = 0x45 // E

export class AuthQuery implements PoolClient {
  readonly id = 0
  waitingSince = 0
  xactCount = 0
  queryCount = 0
  bytesReceived = 0
  bytesSent = 0
  clientParseCount = 0
  bindCount = 0
  private readonly pool: Pool
  private readonly request: Buffer
  private readonly reply: Buffer[] = []
  private server: Server | null = null
  private readonly outcome = Promise.withResolvers<Lookup>()

  constructor(pool: Pool, sql: string, user: string) {
    this.pool = pool
    this.request = Buffer.concat([parse('', sql), bind('', '', [user]), execute(''), sync()])
  }

  run(): Promise<Lookup> {
    this.pool.request(this)
    return this.outcome.promise
  }

  attachServer(server: Server): void {
    this.server = server
    server.write(this.request)
  }

  onReadyForQuery(status: number): boolean {
    return status === TxStatus.Idle
  }

  write(buf: Buffer): void {
    this.reply.push(Buffer.from(buf))
  }

  forwardFromServer(buf: Buffer): void {
    this.reply.push(Buffer.from(buf))
  }

  releaseServer(): void {
    const server = this.server!
    this.server = null
    this.pool.release(server)
    this.outcome.resolve(readReply(Buffer.concat(this.reply), true))
  }

  serverLost(): void {
    this.server = null
    this.outcome.resolve({
      kind: 'error',
      sqlstate: SqlState.ConnectionFailure,
      message: Texts.serverConnCrashed,
    })
  }

  serverReportedVar(): void {}

  /** query_wait_timeout, or the breaker: the error a client would have got. */
  fail(error: Buffer): void {
    this.outcome.resolve(readReply(error, false))
  }
}

/** The first row's second column (the secret; NULL for a user who may not log in). */
function readReply(bytes: Buffer, fromQuery: boolean): Lookup {
  let lookup: Lookup = { kind: 'unknown' }
  new FrameReader().push(bytes, (type, msg) => {
    if (type === ERROR_RESPONSE) {
      const { code, message } = parseErrorFields(msg)
      lookup = fromQuery
        ? { kind: 'error', sqlstate: code, message, fromQuery }
        : { kind: 'error', sqlstate: code, message }
      return true
    }
    if (type === DATA_ROW && lookup.kind === 'unknown') {
      lookup = { kind: 'found', secret: secondColumn(msg) }
    }
    return false
  })
  return lookup
}

function secondColumn(msg: Buffer): string | null {
  const columns = msg.readInt16BE(5)
  if (columns < 2) return null
  let off = 7
  const first = msg.readInt32BE(off)
  off += 4 + Math.max(first, 0)
  const length = msg.readInt32BE(off)
  return length < 0 ? null : msg.toString('utf8', off + 4, off + 4 + length)
}
