/**
 * The statements the pooler answers itself in transaction and statement
 * mode: a simple Query made only of LISTEN, UNLISTEN and UNLISTEN *. Read
 * from the client's bytes; anything else (another statement beside them, a
 * Unicode-escaped name) is not ours and goes to the server as before.
 */

/** One LISTEN or UNLISTEN; `channel` null for UNLISTEN *. */
export interface ChannelOp {
  readonly listen: boolean
  readonly channel: string | null
}

/** PostgreSQL's NAMEDATALEN - 1: longer names are cut, as the server cuts them. */
const MAX_NAME_BYTES = 63

const LISTEN = [0x6c, 0x69, 0x73, 0x74, 0x65, 0x6e] // listen
const COMMIT = [0x63, 0x6f, 0x6d, 0x6d, 0x69, 0x74] // commit
const END = [0x65, 0x6e, 0x64] // end

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d || b === 0x0c
}

function wordAt(buf: Buffer, at: number, limit: number, word: readonly number[]): boolean {
  if (at + word.length > limit) return false
  for (let i = 0; i < word.length; i++) if ((buf[at + i]! | 0x20) !== word[i]) return false
  return true
}

/**
 * The first test of a client's Query (type byte at `start`, text from
 * start + 5 up to its NUL before `end`): whether its text begins with the
 * word LISTEN or UNLISTEN. A few byte compares, no decoding.
 */
export function mayBeListen(buf: Buffer, start: number, end: number): boolean {
  let at = start + 5
  const first = buf[at]! | 0x20
  if (first === 0x75) {
    if ((buf[at + 1]! | 0x20) !== 0x6e) return false
    at += 2
  } else if (first !== 0x6c) return false
  if (!wordAt(buf, at, end - 1, LISTEN)) return false
  const next = at + 6
  return next >= end - 1 || isSpace(buf[next]!) || buf[next] === 0x2f || buf[next] === 0x2d
}

/** Whether the Query's text begins with COMMIT or END (the transaction is to commit). */
export function isCommit(buf: Buffer, start: number, end: number): boolean {
  let at = start + 5
  while (at < end - 1 && isSpace(buf[at]!)) at++
  const limit = end - 1
  const word = wordAt(buf, at, limit, COMMIT) ? 6 : wordAt(buf, at, limit, END) ? 3 : 0
  if (word === 0) return false
  const next = at + word
  return next >= limit || isSpace(buf[next]!) || buf[next] === 0x3b || buf[next] === 0
}

/** The Query's statements, when every one is LISTEN or UNLISTEN; else null. */
export function listenStatements(buf: Buffer, start: number, end: number): ChannelOp[] | null {
  return parseListen(buf.toString('utf8', start + 5, end - 1))
}

export function parseListen(sql: string): ChannelOp[] | null {
  const ops: ChannelOp[] = []
  let i = 0
  const n = sql.length
  const skip = (): void => {
    for (;;) {
      while (i < n && isSpace(sql.charCodeAt(i))) i++
      if (sql.startsWith('--', i)) {
        while (i < n && sql[i] !== '\n') i++
      } else if (sql.startsWith('/*', i)) {
        const close = sql.indexOf('*/', i + 2)
        i = close < 0 ? n : close + 2
      } else return
    }
  }
  for (;;) {
    skip()
    if (i >= n) break
    if (sql[i] === ';') {
      i++
      continue
    }
    const word = /^[A-Za-z]+/.exec(sql.slice(i, i + 9))?.[0]?.toLowerCase()
    if (word !== 'listen' && word !== 'unlisten') return null
    i += word.length
    const listen = word === 'listen'
    const before = i
    skip()
    let channel: string | null
    if (!listen && sql[i] === '*') {
      i++
      channel = null
    } else if (sql[i] === '"') {
      let name = ''
      i++
      for (;;) {
        const close = sql.indexOf('"', i)
        if (close < 0) return null
        name += sql.slice(i, close)
        i = close + 1
        if (sql[i] !== '"') break
        name += '"'
        i++
      }
      if (name === '') return null
      channel = truncate(name)
    } else {
      if (i === before) return null
      const m = /^[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/.exec(sql.slice(i))
      if (m === null) return null
      i += m[0].length
      // As PostgreSQL folds an unquoted name: ASCII letters only.
      channel = truncate(m[0].replace(/[A-Z]+/g, (s) => s.toLowerCase()))
    }
    ops.push({ listen, channel })
    skip()
    if (i < n && sql[i] !== ';') return null
  }
  return ops.length > 0 ? ops : null
}

function truncate(name: string): string {
  if (Buffer.byteLength(name) <= MAX_NAME_BYTES) return name
  let out = ''
  for (const ch of name) {
    if (Buffer.byteLength(out + ch) > MAX_NAME_BYTES) break
    out += ch
  }
  return out
}

/** A channel name as an identifier in a statement of the pooler's own. */
export function quoteChannel(channel: string): string {
  return `"${channel.replaceAll('"', '""')}"`
}
