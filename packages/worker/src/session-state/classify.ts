// Which session state a statement leaves on its server (issue 29): read from
// the statement's leading keywords only, and function names only in the
// statements that can call them (SELECT, WITH, VALUES). Nothing is decoded
// into strings and nothing is allocated: the bytes are compared in place,
// lower-cased with `| 0x20`. What is not recognised is not session state as
// far as the pooler knows, and passes as it would have.
//
// Not seen: dynamic SQL inside functions and DO blocks, functions called from
// INSERT/UPDATE/DELETE or from views, and statements named in a Parse whose
// text is split across reads (see client.ts).

/** The kinds, in the order SHOW SESSION_STATE lists them. */
export const SessionKind = {
  set: 0,
  prepare: 1,
  advisory_lock: 2,
  temp_table: 3,
  cursor_with_hold: 4,
  listen: 5,
  load: 6,
} as const
export type SessionKind = (typeof SessionKind)[keyof typeof SessionKind]

export const SESSION_KINDS = [
  'set',
  'prepare',
  'advisory_lock',
  'temp_table',
  'cursor_with_hold',
  'listen',
  'load',
] as const
export const KIND_COUNT = SESSION_KINDS.length

/** The bit of a kind in classify()'s result. */
export const bit = (kind: SessionKind): number => 1 << kind

/** A PREPARE itself, apart from EXECUTE and DEALLOCATE (which count as `prepare` too). */
export const PREPARE_NEW = 1 << 8

/**
 * The state a transaction-mode pool cannot carry to the client's next server:
 * session_state_policy applies to these. SQL PREPARE is one until the pooler
 * carries SQL prepared statements as it does the protocol's.
 */
export const CANNOT_FOLLOW =
  bit(SessionKind.advisory_lock) |
  bit(SessionKind.temp_table) |
  bit(SessionKind.cursor_with_hold) |
  bit(SessionKind.listen) |
  bit(SessionKind.load) |
  PREPARE_NEW

/** How an error names what was refused, by the lowest bit of CANNOT_FOLLOW found. */
export function refusedName(mask: number): string {
  if (mask & bit(SessionKind.advisory_lock)) return 'pg_advisory_lock'
  if (mask & bit(SessionKind.temp_table)) return 'CREATE TEMP TABLE'
  if (mask & bit(SessionKind.cursor_with_hold)) return 'DECLARE CURSOR WITH HOLD'
  if (mask & bit(SessionKind.listen)) return 'LISTEN'
  if (mask & bit(SessionKind.load)) return 'LOAD'
  return 'PREPARE'
}

/** The kind of the lowest CANNOT_FOLLOW bit in `mask` (SHOW CLIENTS' pin column). */
export function refusedKind(mask: number): string {
  for (let k = 2; k < KIND_COUNT; k++) if (mask & (1 << k)) return SESSION_KINDS[k]!
  return 'prepare'
}

// First bytes (lower-cased) a statement of interest can start with, plus
// whitespace and the openers of comments. Anything else ends the look at
// once unless the text holds a ';' (another statement may follow).
const LEADS = new Uint8Array(256)
for (const c of 'srpedclwv') LEADS[c.charCodeAt(0)] = 1
for (const c of 'SRPEDCLWV') LEADS[c.charCodeAt(0)] = 1
for (const c of ' \t\n\r\f\v/-(') LEADS[c.charCodeAt(0)] = 1

const SEMICOLON = 0x3b

const isSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d)
const isWord = (c: number) =>
  (c >= 0x61 && c <= 0x7a) ||
  (c >= 0x41 && c <= 0x5a) ||
  (c >= 0x30 && c <= 0x39) ||
  c === 0x5f ||
  c === 0x24 ||
  c >= 0x80

/** Skips whitespace and comments from `pos`; returns the first other position (or `to`). */
function skipBlank(buf: Buffer, pos: number, to: number): number {
  while (pos < to) {
    const c = buf[pos]!
    if (isSpace(c)) pos++
    else if (c === 0x2d && buf[pos + 1] === 0x2d && pos + 1 < to) {
      pos += 2
      while (pos < to && buf[pos] !== 0x0a) pos++
    } else if (c === 0x2f && buf[pos + 1] === 0x2a && pos + 1 < to) {
      let depth = 1
      pos += 2
      while (pos < to && depth > 0) {
        if (buf[pos] === 0x2a && buf[pos + 1] === 0x2f) {
          depth--
          pos += 2
        } else if (buf[pos] === 0x2f && buf[pos + 1] === 0x2a) {
          depth++
          pos += 2
        } else pos++
      }
    } else return pos
  }
  return to
}

/** Whether the word at `pos` is `word` (lower case, ASCII), as a whole word. */
function wordIs(buf: Buffer, pos: number, to: number, word: string): boolean {
  const n = word.length
  if (pos + n > to) return false
  // `| 0x20` lower-cases letters and maps '_' to itself on both sides.
  for (let i = 0; i < n; i++)
    if ((buf[pos + i]! | 0x20) !== (word.charCodeAt(i) | 0x20)) return false
  return pos + n === to || !isWord(buf[pos + n]!)
}

/** The end of the word at `pos`. */
function wordEnd(buf: Buffer, pos: number, to: number): number {
  while (pos < to && isWord(buf[pos]!)) pos++
  return pos
}

/** After the word at `pos` and the blanks behind it. */
function nextWord(buf: Buffer, pos: number, to: number): number {
  return skipBlank(buf, wordEnd(buf, pos, to), to)
}

/**
 * Past a quoted string, quoted identifier or dollar-quoted string starting at
 * `pos` (its opening character); `pos + 1` when `$` opens no quote.
 */
function skipQuoted(buf: Buffer, pos: number, to: number): number {
  const q = buf[pos]!
  if (q === 0x27 || q === 0x22) {
    // '...' and "..." (a doubled quote stays inside). E'\'' is read as ending
    // early; the worst that does is miss a later statement's kind.
    let p = pos + 1
    while (p < to) {
      if (buf[p] === q) {
        if (buf[p + 1] === q && p + 1 < to) p += 2
        else return p + 1
      } else p++
    }
    return to
  }
  // $tag$ ... $tag$
  let p = pos + 1
  while (p < to && buf[p] !== 0x24) {
    const c = buf[p]!
    if (!isWord(c) || (c >= 0x30 && c <= 0x39 && p === pos + 1)) return pos + 1
    p++
  }
  if (p >= to) return pos + 1
  const tagLen = p - pos + 1
  p++
  while (p < to) {
    if (
      buf[p] === 0x24 &&
      p + tagLen <= to &&
      buf.compare(buf, pos, pos + tagLen, p, p + tagLen) === 0
    ) {
      return p + tagLen
    }
    p++
  }
  return to
}

// The bytes a walk over a statement stops at: quotes, '(', ';' and the
// openers of comments. Any other byte costs one table lookup.
const STOPS = new Uint8Array(256)
for (const c of `'"$(;-/`) STOPS[c.charCodeAt(0)] = 1

/** What walk() found calls of (set while it walks; no object per statement). */
let called = 0

/**
 * The end of the statement starting at `pos`: its ';' (or `to`), outside
 * quotes and comments. With `calls`, the calls that take session state are
 * noted in `called` on the way.
 */
function walk(
  buf: Buffer,
  pos: number,
  to: number,
  calls: boolean,
  counts: Float64Array | null,
): number {
  while (pos < to) {
    const c = buf[pos]!
    if (STOPS[c] === 0) pos++
    else if (c === SEMICOLON) return pos
    else if (c === 0x28) {
      if (calls) called |= callBefore(buf, pos, to, counts)
      pos++
    } else if (c === 0x27 || c === 0x22 || c === 0x24) pos = skipQuoted(buf, pos, to)
    else if ((c === 0x2d && buf[pos + 1] === 0x2d) || (c === 0x2f && buf[pos + 1] === 0x2a)) {
      pos = skipBlank(buf, pos, to)
    } else pos++
  }
  return to
}

/** A SELECT, WITH or VALUES statement (or one in parentheses): the kind that can call functions. */
function canCall(buf: Buffer, pos: number, to: number): boolean {
  const c = buf[pos]! | 0x20
  if (c === 0x73) return wordIs(buf, pos, to, 'select')
  if (c === 0x77) return wordIs(buf, pos, to, 'with')
  if (c === 0x76) return wordIs(buf, pos, to, 'values')
  return buf[pos] === 0x28
}

/** Whether the word sequence (whole words, any blanks between) appears in [pos, to). */
function hasWords(buf: Buffer, pos: number, to: number, a: string, b: string): boolean {
  while (pos < to) {
    const c = buf[pos]!
    if (c === 0x27 || c === 0x22 || c === 0x24) {
      pos = skipQuoted(buf, pos, to)
      continue
    }
    if (isWord(c)) {
      if (wordIs(buf, pos, to, a) && (pos === 0 || !isWord(buf[pos - 1]!))) {
        const next = nextWord(buf, pos, to)
        if (wordIs(buf, next, to, b)) return true
      }
      pos = wordEnd(buf, pos, to)
      continue
    }
    pos++
  }
  return false
}

/** The function named just before the '(' at `paren`, if it is one of ours. */
function callBefore(buf: Buffer, paren: number, to: number, counts: Float64Array | null): number {
  let end = paren
  while (end > 0 && isSpace(buf[end - 1]!)) end--
  let start = end
  while (start > 0 && isWord(buf[start - 1]!)) start--
  const n = end - start
  if (n < 10) return 0
  // The names all start with pg_ or set_: a two-byte check before any compare.
  const c0 = buf[start]! | 0x20
  if (c0 === 0x70) {
    if (
      wordIs(buf, start, end, 'pg_advisory_lock') ||
      wordIs(buf, start, end, 'pg_advisory_lock_shared') ||
      wordIs(buf, start, end, 'pg_try_advisory_lock') ||
      wordIs(buf, start, end, 'pg_try_advisory_lock_shared')
    ) {
      return count(counts, SessionKind.advisory_lock)
    }
  } else if (c0 === 0x73 && wordIs(buf, start, end, 'set_config')) {
    if (!isLocalCall(buf, paren, to)) return count(counts, SessionKind.set)
  }
  return 0
}

/** set_config's third argument is true (SET LOCAL): its last top-level argument says so. */
function isLocalCall(buf: Buffer, paren: number, to: number): boolean {
  let depth = 0
  let lastArg = paren + 1
  let pos = paren
  while (pos < to) {
    const c = buf[pos]!
    if (c === 0x27 || c === 0x22 || c === 0x24) {
      pos = skipQuoted(buf, pos, to)
      continue
    }
    if (c === 0x28) depth++
    else if (c === 0x29) {
      if (--depth === 0) break
    } else if (c === 0x2c && depth === 1) lastArg = pos + 1
    pos++
  }
  const at = skipBlank(buf, lastArg, pos)
  // true, 't', 'true', 'on', 'yes', 1: anything else is taken as false.
  const c = buf[at] === 0x27 ? buf[at + 1]! | 0x20 : buf[at]! | 0x20
  return c === 0x74 || c === 0x31 || c === 0x79 || (c === 0x6f && (buf[at + 2]! | 0x20) === 0x6e)
}

function count(counts: Float64Array | null, kind: SessionKind): number {
  if (counts !== null) counts[kind]!++
  return 1 << kind
}

/** One statement from `pos` (at its first word) to `end`: its kind bits, counted. */
function statement(buf: Buffer, pos: number, end: number, counts: Float64Array | null): number {
  const c = buf[pos]! | 0x20
  switch (c) {
    case 0x73: // s
      if (wordIs(buf, pos, end, 'set')) {
        const next = nextWord(buf, pos, end)
        // SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with the transaction.
        if (
          wordIs(buf, next, end, 'local') ||
          wordIs(buf, next, end, 'transaction') ||
          wordIs(buf, next, end, 'constraints')
        ) {
          return 0
        }
        return count(counts, SessionKind.set)
      }
      return 0
    case 0x72: // r
      return wordIs(buf, pos, end, 'reset') ? count(counts, SessionKind.set) : 0
    case 0x70: // p
      return wordIs(buf, pos, end, 'prepare') &&
        !wordIs(buf, nextWord(buf, pos, end), end, 'transaction')
        ? count(counts, SessionKind.prepare) | PREPARE_NEW
        : 0
    case 0x65: // e
      return wordIs(buf, pos, end, 'execute') ? count(counts, SessionKind.prepare) : 0
    case 0x64: // d
      if (wordIs(buf, pos, end, 'deallocate')) return count(counts, SessionKind.prepare)
      if (wordIs(buf, pos, end, 'declare')) {
        // DECLARE name [options] CURSOR [WITH | WITHOUT HOLD] FOR query
        let p = nextWord(buf, pos, end)
        for (let i = 0; i < 8 && p < end; i++) {
          if (wordIs(buf, p, end, 'for')) return 0
          if (wordIs(buf, p, end, 'with') && wordIs(buf, nextWord(buf, p, end), end, 'hold')) {
            return count(counts, SessionKind.cursor_with_hold)
          }
          const q = nextWord(buf, p, end)
          if (q === p) return 0
          p = q
        }
      }
      return 0
    case 0x63: // c
      if (wordIs(buf, pos, end, 'create')) {
        let p = nextWord(buf, pos, end)
        if (wordIs(buf, p, end, 'global') || wordIs(buf, p, end, 'local')) p = nextWord(buf, p, end)
        if (!wordIs(buf, p, end, 'temp') && !wordIs(buf, p, end, 'temporary')) return 0
        p = nextWord(buf, p, end)
        if (wordIs(buf, p, end, 'unlogged')) p = nextWord(buf, p, end)
        if (
          !wordIs(buf, p, end, 'table') &&
          !wordIs(buf, p, end, 'view') &&
          !wordIs(buf, p, end, 'sequence')
        ) {
          return 0
        }
        // ON COMMIT DROP ends with the transaction.
        if (hasWords(buf, p, end, 'commit', 'drop')) return 0
        return count(counts, SessionKind.temp_table)
      }
      return 0
    case 0x6c: // l
      if (wordIs(buf, pos, end, 'listen')) return count(counts, SessionKind.listen)
      if (wordIs(buf, pos, end, 'load')) return count(counts, SessionKind.load)
      return 0
    default:
      return 0
  }
}

/** A ';' in buf[from, to): a loop for a short text, where a native call costs more. */
function hasSemicolon(buf: Buffer, from: number, to: number): boolean {
  if (to - from > 256) {
    const at = buf.indexOf(SEMICOLON, from)
    return at >= 0 && at < to
  }
  for (let i = from; i < to; i++) if (buf[i] === SEMICOLON) return true
  return false
}

/**
 * The session state the SQL text in buf[from, to) leaves (one or several
 * statements): the bits of its kinds, with PREPARE_NEW for a PREPARE; each
 * statement of a kind adds one to `counts[kind]`.
 */
export function classify(
  buf: Buffer,
  from: number,
  to: number,
  counts: Float64Array | null,
): number {
  if (from >= to) return 0
  // The first byte decides for most statements: an INSERT, UPDATE, BEGIN, ...
  // is looked at no further unless the text holds a ';' before its end.
  if (LEADS[buf[from]!] === 0 && !hasSemicolon(buf, from, to - 1)) return 0
  let mask = 0
  let pos = skipBlank(buf, from, to)
  while (pos < to) {
    const calls = canCall(buf, pos, to)
    called = 0
    const end = walk(buf, pos, to, calls, counts)
    mask |= calls ? called : statement(buf, pos, end, counts)
    if (end >= to) break
    pos = skipBlank(buf, end + 1, to)
  }
  return mask
}

/**
 * A simple Query whose message starts at `start` (its type byte) and ends at
 * `end`: the SQL text between the length and the closing NUL.
 */
export function classifyQuery(
  buf: Buffer,
  start: number,
  end: number,
  counts: Float64Array | null,
): number {
  return classify(buf, start + 5, end - 1, counts)
}

/** A Parse whose message starts at `start`: the query text after the statement's name. */
export function classifyParse(
  buf: Buffer,
  start: number,
  end: number,
  counts: Float64Array | null,
): number {
  const nameEnd = buf.indexOf(0, start + 5)
  if (nameEnd < 0 || nameEnd >= end) return 0
  const textEnd = buf.indexOf(0, nameEnd + 1)
  if (textEnd < 0 || textEnd >= end) return 0
  return classify(buf, nameEnd + 1, textEnd, counts)
}

/** The highest $n the text in buf[from, to) names outside quotes and comments (0: none). */
export function highestParam(buf: Buffer, from: number, to: number): number {
  let high = 0
  let pos = from
  while (pos < to) {
    const c = buf[pos]!
    if (c === 0x24) {
      let p = pos + 1
      let n = 0
      while (p < to && buf[p]! >= 0x30 && buf[p]! <= 0x39) n = n * 10 + buf[p++]! - 0x30
      if (p > pos + 1) {
        if (n > high) high = n
        pos = p
      } else pos = skipQuoted(buf, pos, to)
    } else if (c === 0x27 || c === 0x22) pos = skipQuoted(buf, pos, to)
    else if ((c === 0x2d && buf[pos + 1] === 0x2d) || (c === 0x2f && buf[pos + 1] === 0x2a)) {
      pos = skipBlank(buf, pos, to)
    } else pos++
  }
  return high
}
