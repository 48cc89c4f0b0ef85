import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import { describe, test } from 'node:test'
import { FrontendCode } from '@pgbouncer-cluster/protocol/messages'
import fc from 'fast-check'
import {
  applyEdits,
  boundStatement,
  EditList,
  type LastBound,
  ParseTracker,
  type PreparedServer,
  parseName,
  type Statement,
  statementOf,
  targetStatement,
} from './prepared.ts'

function message(type: number, ...parts: (string | Buffer)[]): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(`${p}\0`) : p)))
  const head = Buffer.alloc(5)
  head[0] = type
  head.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}

const NO_PARAMS = Buffer.from([0, 0])
const parse = (name: string, sql: string) => message(FrontendCode.Parse, name, sql, NO_PARAMS)
const bind = (portal: string, name: string) =>
  message(FrontendCode.Bind, portal, name, Buffer.from([0, 0, 0, 0, 0, 0]))
const describeStmt = (name: string) => message(FrontendCode.Describe, Buffer.from('S'), name)
const close = (name: string) => message(FrontendCode.Close, Buffer.from('S'), name)
const execute = () => message(FrontendCode.Execute, '', Buffer.alloc(4))
const sync = () => message(FrontendCode.Sync)

/** A client's pipeline: statements parsed, bound, described and closed, in two transactions. */
const pipeline = [
  parse('s1', 'SELECT 1'),
  parse('', 'SELECT 2'),
  bind('', 's1'),
  describeStmt('s1'),
  execute(),
  sync(),
  parse('s2', 'SELECT $1::int'),
  bind('p', 's2'),
  bind('', 's1'),
  execute(),
  close('s1'),
  sync(),
  bind('', 's2'),
  execute(),
  sync(),
]
const stream = Buffer.concat(pipeline)

function fakeServer(): PreparedServer {
  return {
    preparedGen: 0,
    preparedCount: 0,
    tracker: new ParseTracker(),
    totals: { serverParseCount: 0 },
  }
}

/**
 * What client.ts does with each read of whole messages: notes the statement
 * messages, then writes the read with its edits made for the server.
 */
function rewrite(reads: Buffer[]): { out: Buffer; server: PreparedServer } {
  const statements = new Map<string, Statement>()
  const last: LastBound = { name: '', bytes: null }
  const server = fakeServer()
  const out: Buffer[] = []
  for (const chunk of reads) {
    const edits = new EditList()
    for (let start = 0; start < chunk.length; ) {
      const end = start + 1 + chunk.readInt32BE(start + 1)
      const type = chunk[start]!
      if (type === FrontendCode.Parse) {
        const name = parseName(chunk, start, end)
        if (name !== '') {
          const stmt = statementOf(chunk, start, end)
          statements.set(name, stmt)
          edits.add(type, start, end, stmt, '')
        } else edits.add(type, start, end, undefined, '')
      } else if (type === FrontendCode.Bind) {
        const stmt = boundStatement(statements, last, chunk, start, end)
        if (stmt !== undefined) edits.add(type, start, end, stmt, '')
      } else if (type === FrontendCode.Describe || type === FrontendCode.Close) {
        const name = targetStatement(chunk, start, end)
        const stmt = name === null ? undefined : statements.get(name)
        if (stmt !== undefined) {
          if (type === FrontendCode.Close) statements.delete(name!)
          edits.add(type, start, end, stmt, name!)
        }
      } else if (type === FrontendCode.Sync) edits.add(type, start, end, undefined, '')
      start = end
    }
    out.push(applyEdits(chunk, edits, server))
  }
  return { out: Buffer.concat(out), server }
}

/**
 * The messages, each as its type and body, with our statement names numbered
 * by first appearance: the counter behind them is the thread's, and the
 * length fields change with its digits.
 */
function normalized(bytes: Buffer): string[] {
  const seen = new Map<string, number>()
  const out: string[] = []
  for (let at = 0; at < bytes.length; ) {
    const end = at + 1 + bytes.readInt32BE(at + 1)
    assert.ok(end <= bytes.length, 'a whole message')
    const body = bytes.toString('latin1', at + 5, end).replace(/PGBOUNCER_\d+/g, (name) => {
      if (!seen.has(name)) seen.set(name, seen.size)
      return `OURS_${seen.get(name)}`
    })
    out.push(`${String.fromCharCode(bytes[at]!)} ${body}`)
    at = end
  }
  return out
}

/** The reads a client's bytes become when cut at `offsets`: each one's whole messages, as the hold (unfinished.ts) hands them on. */
function wholeReads(bytes: Buffer, offsets: number[]): Buffer[] {
  const reads: Buffer[] = []
  let held = Buffer.alloc(0)
  for (const [from, to] of pairs(offsets, bytes.length)) {
    const data = Buffer.concat([held, bytes.subarray(from, to)])
    let end = 0
    while (end + 5 <= data.length && end + 1 + data.readInt32BE(end + 1) <= data.length)
      end += 1 + data.readInt32BE(end + 1)
    if (end > 0) reads.push(data.subarray(0, end))
    held = data.subarray(end)
  }
  assert.equal(held.length, 0)
  return reads
}

function pairs(offsets: number[], length: number): [number, number][] {
  const cuts = [0, ...offsets, length]
  return cuts.slice(1).map((to, i) => [cuts[i]!, to])
}

describe('prepared statements rewritten for the server', () => {
  const whole = rewrite([stream])

  test('a named statement goes out under our name; the unnamed one as it is', () => {
    const text = normalized(whole.out).join('|')
    assert.ok(text.includes('OURS_0\0SELECT 1\0'))
    assert.ok(text.includes('\0SELECT 2\0'))
    assert.ok(!text.includes('s1\0'))
    assert.ok(!text.includes('s2\0'))
    // s1 closed: one of ours left prepared on the server.
    assert.equal(whole.server.preparedCount, 1)
    assert.equal(whole.server.totals.serverParseCount, 2)
  })

  test('the bytes for the server do not depend on where the reads were cut', () => {
    const expected = normalized(whole.out)
    for (let k = 1; k < stream.length; k++) {
      const got = rewrite(wholeReads(stream, [k]))
      assert.deepEqual(normalized(got.out), expected, `cut at ${k}`)
    }
    fc.assert(
      fc.property(
        fc
          .uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 30 })
          .map((a) => a.sort((x, y) => x - y)),
        (offsets) => {
          const got = rewrite(wholeReads(stream, offsets))
          assert.deepEqual(normalized(got.out), expected)
          assert.equal(got.server.preparedCount, whole.server.preparedCount)
        },
      ),
    )
  })

  test('a message cut short at any byte is refused or read within its end, never past it', () => {
    const messages = [parse('stmt', 'SELECT 1'), bind('portal', 'stmt'), describeStmt('stmt')]
    for (const msg of messages) {
      // The message inside a larger read: what follows it must not be taken for its end.
      const read = Buffer.concat([msg, Buffer.from('tail\0')])
      const type = msg[0]
      const statements = new Map<string, Statement>([
        ['stmt', statementOf(parse('stmt', 'x'), 0, 16)],
      ])
      const call = (end: number): unknown => {
        if (type === FrontendCode.Parse) return parseName(read, 0, end)
        if (type === FrontendCode.Bind)
          return boundStatement(statements, { name: '', bytes: null }, read, 0, end)
        return targetStatement(read, 0, end)
      }
      // The NUL that ends the statement's name: the last byte the rewrite must read.
      const nameEnd =
        type === FrontendCode.Parse
          ? read.indexOf(0, 5)
          : type === FrontendCode.Bind
            ? read.indexOf(0, read.indexOf(0, 5) + 1)
            : read.indexOf(0, 6)
      const whole = call(msg.length)
      assert.ok(whole === 'stmt' || whole === statements.get('stmt'), 'the whole message')
      for (let end = 5; end < msg.length; end++) {
        if (end > nameEnd) {
          assert.equal(call(end), whole, `cut at ${end}, after the name`)
          continue
        }
        // Cut inside the name: refused (or, for a Describe too short to name anything, no statement).
        let got: unknown = null
        try {
          got = call(end)
        } catch (err) {
          assert.match((err as Error).message, /malformed message/, `cut at ${end}`)
          continue
        }
        assert.equal(got, null, `cut at ${end}`)
      }
    }
  })
})
