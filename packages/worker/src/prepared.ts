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
  readonly on: Map<PreparedServer, Placed>
}

/** A statement prepared on one server under a name of ours. */
interface Placed {
  readonly name: string
  readonly gen: number
  /** The name with its NUL, as it goes into each Bind. */
  readonly cstring: Buffer
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

/**
 * The rewrites found in one read, in order: per message its type, its range in
 * the read and, for a Parse, Bind, Describe or Close, the statement (none: the
 * unnamed one) and, for a Close, the client's name, sent as it is to a server
 * the statement is not on. A session reuses its list once the read is written.
 */
export class EditList {
  count = 0
  readonly types: number[] = []
  readonly starts: number[] = []
  readonly ends: number[] = []
  readonly stmts: (Statement | undefined)[] = []
  readonly names: string[] = []

  add(type: number, start: number, end: number, stmt: Statement | undefined, name: string): void {
    const i = this.count++
    this.types[i] = type
    this.starts[i] = start
    this.ends[i] = end
    this.stmts[i] = stmt
    this.names[i] = name
  }

  /** Empty, holding no statement. */
  clear(): void {
    for (let i = 0; i < this.count; i++) {
      this.stmts[i] = undefined
      this.names[i] = ''
    }
    this.count = 0
  }
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
  // Entries [head, tail) are in flight. The arrays keep their length when
  // emptied, so a transaction writes into slots it does not allocate.
  private readonly kinds: number[] = []
  private readonly stmts: (Statement | undefined)[] = []
  private readonly names: string[] = []
  private head = 0
  private tail = 0

  get idle(): boolean {
    return this.head === this.tail
  }

  private push(kind: number, stmt: Statement | undefined, name: string): void {
    const i = this.tail++
    this.kinds[i] = kind
    this.stmts[i] = stmt
    this.names[i] = name
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
    // No statement stays reachable from a slot that is done with.
    for (let i = 0; i < this.tail; i++) this.stmts[i] = undefined
    this.head = 0
    this.tail = 0
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

/**
 * The statement a session bound last, under its name: a client binds the same
 * few statements again and again, and comparing the bytes of the name spares
 * decoding it into a new string for each Bind.
 */
export interface LastBound {
  name: string
  bytes: Buffer | null
}

/** The client statement a Bind uses, if it is one of `statements` (the unnamed one is not). */
export function boundStatement(
  statements: Map<string, Statement>,
  last: LastBound,
  chunk: Buffer,
  start: number,
  end: number,
): Statement | undefined {
  const from = cstringEnd(chunk, start + 5, end)
  const to = cstringEnd(chunk, from, end) - 1
  const bytes = last.bytes
  if (
    bytes !== null &&
    bytes.length === to - from &&
    chunk.compare(bytes, 0, bytes.length, from, to) === 0
  ) {
    return statements.get(last.name)
  }
  const name = chunk.toString('utf8', from, to)
  const stmt = statements.get(name)
  if (stmt !== undefined) {
    last.name = name
    last.bytes = Buffer.from(chunk.subarray(from, to))
  }
  return stmt
}

/**
 * A Query edit that empties the server of prepared statements: the client's
 * `DEALLOCATE ALL` or `DISCARD ALL`. Not a message type.
 */
export const RESETS_PREPARED = 1

// The longest simple Query that can be one of them with some blanks around.
const RESET_QUERY_MAX = 5 + 64
const RESET_QUERY = /^\s*(deallocate\s+(prepare\s+)?all|discard\s+all)\s*;?\s*$/i

/**
 * Is this simple Query `DEALLOCATE ALL` or `DISCARD ALL` (any case, blanks, a
 * trailing semicolon)? PgBouncer looks for the same in the command's tag.
 * Only short Queries get as far as the text.
 */
export function resetsPrepared(chunk: Buffer, start: number, end: number): boolean {
  const length = end - start
  if (length > RESET_QUERY_MAX || length < 5 + 12) return false
  return RESET_QUERY.test(chunk.toString('latin1', start + 5, end - 1))
}

/** Describe or Close: the statement named, or null for a portal. */
export function targetStatement(chunk: Buffer, start: number, end: number): string | null {
  if (end - start < 7 || chunk[start + 5] !== 0x53 /* S */) return null
  return chunk.toString('utf8', start + 6, cstringEnd(chunk, start + 6, end) - 1)
}

export function parseMessage(name: string, rest: Buffer): Buffer {
  return message(FrontendCode.Parse, [name, rest])
}

function statementMessage(type: number, name: string): Buffer {
  return message(type, [Buffer.from('S'), name])
}

/** Hands out server-side statement names; one counter per worker thread. */
let nextStatement = 1

/** The statement under a name of ours on `server`, preparing it there first if needed. */
function ensure(stmt: Statement, server: PreparedServer, drop: boolean): Placed {
  const known = stmt.on.get(server)
  if (known !== undefined && known.gen === server.preparedGen) return known
  const name = `PGBOUNCER_${nextStatement++}`
  const placed = { name, gen: server.preparedGen, cstring: Buffer.from(`${name}\0`, 'latin1') }
  stmt.on.set(server, placed)
  server.preparedCount++
  server.totals.serverParseCount++
  server.tracker.parse(drop, stmt, name)
  addBytes(parseMessage(name, stmt.rest))
  return placed
}

// applyEdits writes its result into one new buffer: the pieces are listed
// first (ranges of the client's chunk, bytes of our own, message headers),
// then copied once, so a transaction that binds a prepared statement
// allocates one buffer rather than a view and a copy per part. One
// applyEdits runs at a time per thread: the list is reused.
const HEADER = Buffer.alloc(0)
/** A piece's own bytes; null: [from, to) of the chunk; HEADER: type `from`, length `to`. */
const pieceBytes: (Buffer | null)[] = []
const pieceFrom: number[] = []
const pieceTo: number[] = []
let pieces = 0
let size = 0

function addRange(from: number, to: number): void {
  if (from === to) return
  pieceBytes[pieces] = null
  pieceFrom[pieces] = from
  pieceTo[pieces++] = to
  size += to - from
}

function addBytes(bytes: Buffer): void {
  pieceBytes[pieces] = bytes
  pieceFrom[pieces] = 0
  pieceTo[pieces++] = bytes.length
  size += bytes.length
}

function addHeader(type: number, length: number): void {
  pieceBytes[pieces] = HEADER
  pieceFrom[pieces] = type
  pieceTo[pieces++] = length
  size += 5
}

/** The client's Bind with our name for its statement. */
function addRenamedBind(chunk: Buffer, start: number, end: number, name: Buffer): void {
  const afterPortal = cstringEnd(chunk, start + 5, end)
  const afterName = cstringEnd(chunk, afterPortal, end)
  addHeader(FrontendCode.Bind, 4 + (afterPortal - start - 5) + name.length + (end - afterName))
  addRange(start + 5, afterPortal)
  addBytes(name)
  addRange(afterName, end)
}

/** The listed pieces in one buffer; the list is emptied. */
function joinPieces(chunk: Buffer): Buffer {
  const out = Buffer.allocUnsafe(size)
  let pos = 0
  for (let i = 0; i < pieces; i++) {
    const bytes = pieceBytes[i]
    if (bytes === null) {
      pos += chunk.copy(out, pos, pieceFrom[i], pieceTo[i])
    } else if (bytes === HEADER) {
      out[pos] = pieceFrom[i]!
      out.writeInt32BE(pieceTo[i]!, pos + 1)
      pos += 5
    } else {
      pos += bytes.copy(out, pos)
      pieceBytes[i] = null
    }
  }
  pieces = 0
  size = 0
  return out
}

/**
 * The bytes for `server`: `chunk` with the edits made. Messages marked as
 * request ends (Sync, Query, FunctionCall) and unnamed Parses are kept as
 * they are and only recorded.
 */
export function applyEdits(chunk: Buffer, edits: EditList, server: PreparedServer): Buffer {
  pieces = 0
  size = 0
  let last = 0
  for (let i = 0; i < edits.count; i++) {
    const type = edits.types[i]!
    const start = edits.starts[i]!
    const stmt = edits.stmts[i]
    switch (type) {
      case FrontendCode.Parse:
        if (stmt === undefined) {
          server.tracker.parse(false)
          continue
        }
        addRange(last, start)
        ensure(stmt, server, false)
        break
      case FrontendCode.Bind:
      case FrontendCode.Describe: {
        if (stmt === undefined) continue
        addRange(last, start)
        const placed = ensure(stmt, server, true)
        if (type === FrontendCode.Bind) addRenamedBind(chunk, start, edits.ends[i]!, placed.cstring)
        else addBytes(statementMessage(FrontendCode.Describe, placed.name))
        break
      }
      case FrontendCode.Close: {
        addRange(last, start)
        const known = stmt!.on.get(server)
        if (known !== undefined && known.gen === server.preparedGen) {
          stmt!.on.delete(server)
          server.preparedCount--
          addBytes(statementMessage(FrontendCode.Close, known.name))
        } else {
          // Not prepared here: PostgreSQL answers CloseComplete for a name it does not know.
          addBytes(statementMessage(FrontendCode.Close, edits.names[i]!))
        }
        break
      }
      case RESETS_PREPARED:
        // Whatever was prepared there under our names is gone: the next use
        // prepares it again, under a new name.
        server.preparedGen++
        server.preparedCount = 0
        server.tracker.requestEnd()
        continue
      default:
        server.tracker.requestEnd()
        continue
    }
    last = edits.ends[i]!
  }
  if (last === 0 && pieces === 0) return chunk
  addRange(last, chunk.length)
  return joinPieces(chunk)
}
