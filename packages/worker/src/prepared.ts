// Named prepared statements in transaction and statement mode
// (max_prepared_statements, as PgBouncer 1.21+ has it).
//
// A client's statement lives on whichever server its transaction ran on, and
// its next transaction may get another server. So a client's statement names
// never reach PostgreSQL: each Parse goes out under a name of the pooler's own
// (PGBOUNCER_<n>), unique on its server, and each Bind or Describe of a
// statement the linked server has not seen is preceded by that Parse, whose
// ParseComplete the client never sees. Close goes to the linked server only;
// copies left on other servers count toward max_prepared_statements there,
// and past it the server gets DEALLOCATE ALL when it is next released.
//
// The edits are found while scanning (their positions in the chunk) and made
// when the bytes are written, because only then is the server known.

import { Buffer } from 'node:buffer'
import { FrontendCode } from '@pgbouncer-cluster/protocol/messages'

/** One client statement: its Parse after the name, and where it is prepared. */
export interface Statement {
  /** The Parse body after the statement name: query text, parameter types. */
  readonly rest: Buffer
  /** Per server: the name it has there, and the server's statement generation then. */
  readonly on: Map<PreparedServer, { name: string; gen: number }>
}

/** What a server connection keeps for this (implemented by Server). */
export interface PreparedServer {
  /** Bumped when the server's statements are all gone (DEALLOCATE ALL, DISCARD ALL). */
  preparedGen: number
  /** Statements prepared under our names and not deallocated. */
  preparedCount: number
  /** Parses and request ends in flight, in order (see ParseTracker). */
  readonly tracker: ParseTracker
  /** Its pool's totals: SHOW STATS' server_parse_count. */
  readonly totals: { serverParseCount: number }
}

/** A rewrite of one message, found while scanning. */
export interface Edit {
  start: number
  end: number
  type: number
  /** Parse: the new statement (none: unnamed); Bind/Describe/Close: the one named. */
  stmt: Statement | undefined
  /** Close: the client's name, sent as it is to a server the statement is not on. */
  name: string
}

const P_FORWARD = 0
const P_DROP = 1
const REQUEST_END = 2

/**
 * The server's answers to Parse, matched to what we sent, so the ParseComplete
 * of a Parse the pooler added can be left out. A Sync or Query ends a request:
 * its ReadyForQuery retires every Parse before it, answered or not (after an
 * error PostgreSQL skips to the Sync).
 */
export class ParseTracker {
  private kinds: number[] = []
  private stmts: (Statement | undefined)[] = []
  private names: string[] = []
  private head = 0

  get idle(): boolean {
    return this.head === this.kinds.length
  }

  private push(kind: number, stmt: Statement | undefined, name: string): void {
    this.kinds.push(kind)
    this.stmts.push(stmt)
    this.names.push(name)
  }

  parse(drop: boolean, stmt?: Statement, name = ''): void {
    this.push(drop ? P_DROP : P_FORWARD, stmt, name)
  }

  requestEnd(): void {
    this.push(REQUEST_END, undefined, '')
  }

  /** A ParseComplete arrived: true when the client must not see it. */
  parseComplete(): boolean {
    if (this.idle || this.kinds[this.head] === REQUEST_END) return false
    return this.kinds[this.head++] === P_DROP
  }

  /** A ReadyForQuery arrived: Parses still unanswered were skipped after an error. */
  readyForQuery(server: PreparedServer): void {
    while (!this.idle) {
      const i = this.head++
      if (this.kinds[i] === REQUEST_END) break
      const stmt = this.stmts[i]
      if (stmt !== undefined && stmt.on.get(server)?.name === this.names[i]) {
        stmt.on.delete(server)
        server.preparedCount--
      }
    }
    if (this.idle) this.clear()
  }

  clear(): void {
    this.kinds.length = 0
    this.stmts.length = 0
    this.names.length = 0
    this.head = 0
  }
}

/** Index just past the NUL that ends the string starting at `from`. */
function cstringEnd(buf: Buffer, from: number, end: number): number {
  const nul = buf.indexOf(0, from)
  if (nul < 0 || nul >= end) throw new Error('malformed message: unterminated string')
  return nul + 1
}

function message(type: number, parts: (Buffer | string)[]): Buffer {
  const bufs = parts.map((p) => (typeof p === 'string' ? Buffer.from(`${p}\0`) : p))
  const length = 4 + bufs.reduce((n, b) => n + b.length, 0)
  const head = Buffer.allocUnsafe(5)
  head[0] = type
  head.writeInt32BE(length, 1)
  return Buffer.concat([head, ...bufs])
}

/** The statement name a Parse defines ('' for the unnamed one). */
export function parseName(chunk: Buffer, start: number, end: number): string {
  return chunk.toString('utf8', start + 5, cstringEnd(chunk, start + 5, end) - 1)
}

/** A new statement from a client's Parse. */
export function statementOf(chunk: Buffer, start: number, end: number): Statement {
  const afterName = cstringEnd(chunk, start + 5, end)
  return { rest: Buffer.from(chunk.subarray(afterName, end)), on: new Map() }
}

/** The statement a Bind uses ('' for the unnamed one). */
export function bindName(chunk: Buffer, start: number, end: number): string {
  const afterPortal = cstringEnd(chunk, start + 5, end)
  return chunk.toString('utf8', afterPortal, cstringEnd(chunk, afterPortal, end) - 1)
}

/** Describe or Close: the statement named, or null for a portal. */
export function targetStatement(chunk: Buffer, start: number, end: number): string | null {
  if (end - start < 7 || chunk[start + 5] !== 0x53 /* S */) return null
  return chunk.toString('utf8', start + 6, cstringEnd(chunk, start + 6, end) - 1)
}

export function parseMessage(name: string, rest: Buffer): Buffer {
  return message(FrontendCode.Parse, [name, rest])
}

function renamedBind(chunk: Buffer, start: number, end: number, name: string): Buffer {
  const afterPortal = cstringEnd(chunk, start + 5, end)
  const afterName = cstringEnd(chunk, afterPortal, end)
  return message(FrontendCode.Bind, [
    chunk.subarray(start + 5, afterPortal),
    name,
    chunk.subarray(afterName, end),
  ])
}

function statementMessage(type: number, name: string): Buffer {
  return message(type, [Buffer.from('S'), name])
}

/** Hands out server-side statement names; one counter per worker thread. */
let nextStatement = 1

/** The statement under a name of ours on `server`, preparing it there first if needed. */
function ensure(stmt: Statement, server: PreparedServer, out: Buffer[], drop: boolean): string {
  const known = stmt.on.get(server)
  if (known !== undefined && known.gen === server.preparedGen) return known.name
  const name = `PGBOUNCER_${nextStatement++}`
  stmt.on.set(server, { name, gen: server.preparedGen })
  server.preparedCount++
  server.totals.serverParseCount++
  server.tracker.parse(drop, stmt, name)
  out.push(parseMessage(name, stmt.rest))
  return name
}

/**
 * The bytes for `server`: `chunk` with the edits made. Messages marked as
 * request ends (Sync, Query, FunctionCall) and unnamed Parses are kept as
 * they are and only recorded.
 */
export function applyEdits(chunk: Buffer, edits: Edit[], server: PreparedServer): Buffer {
  const out: Buffer[] = []
  let last = 0
  for (const e of edits) {
    switch (e.type) {
      case FrontendCode.Parse:
        if (e.stmt === undefined) {
          server.tracker.parse(false)
          continue
        }
        out.push(chunk.subarray(last, e.start))
        ensure(e.stmt, server, out, false)
        break
      case FrontendCode.Bind:
      case FrontendCode.Describe: {
        if (e.stmt === undefined) continue
        out.push(chunk.subarray(last, e.start))
        const name = ensure(e.stmt, server, out, true)
        out.push(
          e.type === FrontendCode.Bind
            ? renamedBind(chunk, e.start, e.end, name)
            : statementMessage(FrontendCode.Describe, name),
        )
        break
      }
      case FrontendCode.Close: {
        out.push(chunk.subarray(last, e.start))
        const known = e.stmt!.on.get(server)
        if (known !== undefined && known.gen === server.preparedGen) {
          e.stmt!.on.delete(server)
          server.preparedCount--
          out.push(statementMessage(FrontendCode.Close, known.name))
        } else {
          // Not prepared here: PostgreSQL answers CloseComplete for a name it does not know.
          out.push(statementMessage(FrontendCode.Close, e.name))
        }
        break
      }
      default:
        server.tracker.requestEnd()
        continue
    }
    last = e.end
  }
  if (last === 0 && out.length === 0) return chunk
  out.push(chunk.subarray(last))
  return Buffer.concat(out)
}
