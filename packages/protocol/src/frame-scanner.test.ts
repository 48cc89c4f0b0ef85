import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { allMessages, allocSizes, cut, lyingStreamArb } from '../test/wire-fixtures.ts'
import { ProtocolError } from './errors.ts'
import { FrameScanner } from './frame-reader.ts'
import * as s from './serializer.ts'

const msgs = allMessages()
const stream = Buffer.concat(msgs)

type Event = [type: number, end: number, hex: string | null]

// What a correct scanner reports, computed from the message list itself.
function oracle(flags: Uint8Array): Event[] {
  const out: Event[] = []
  let end = 0
  for (const m of msgs) {
    end += m.length
    const f = flags[m[0]!]
    if (f === 1) out.push([m[0]!, end, null])
    else if (f === 2) out.push([m[0]!, end, m.toString('hex')])
  }
  return out
}

// Scans the chunks in order; `stop(i)` decides whether the i-th report stops.
function run(flags: Uint8Array, chunks: Buffer[], stop: (i: number) => boolean = () => false) {
  const scanner = new FrameScanner(flags)
  const events: Event[] = []
  let base = 0
  for (const c of chunks) {
    let pos = 0
    do {
      let stoppedAt = -1
      const ret = scanner.scan(c, pos, (type, msg, end) => {
        assert.ok(end > pos && end <= c.length)
        events.push([type, base + end, msg === null ? null : msg.toString('hex')])
        if (stop(events.length - 1)) {
          stoppedAt = end
          return true
        }
        return false
      })
      assert.equal(ret, stoppedAt === -1 ? c.length : stoppedAt)
      if (stoppedAt !== -1) assert.ok(scanner.atBoundary)
      pos = ret
    } while (pos < c.length)
    base += c.length
  }
  assert.ok(scanner.atBoundary)
  return events
}

const ALL = new Uint8Array(256).fill(2)
const flagsArb = fc.uint8Array({ minLength: 256, maxLength: 256 }).map((a) => a.map((v) => v % 3))
const offsetsArb = fc
  .uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 40 })
  .map((a) => a.sort((x, y) => x - y))

describe('FrameScanner', () => {
  it('gives each message its start in the chunk, -1 when it began in an earlier one, and names the unfinished one', () => {
    const flags = new Uint8Array(256).fill(1)
    const scanner = new FrameScanner(flags)
    const q = s.query('SELECT 1')
    const sync = s.sync()
    const parse = s.parse('stmt', 'SELECT $1::int', [])
    const first = Buffer.concat([q, sync, parse.subarray(0, 3)])
    const starts: number[] = []
    scanner.scan(first, 0, (_t, _m, _end, start) => {
      starts.push(start)
      return false
    })
    assert.deepEqual(starts, [0, q.length])
    assert.deepEqual(scanner.partial, { type: parse[0], start: q.length + sync.length })
    starts.length = 0
    scanner.scan(Buffer.concat([parse.subarray(3), sync]), 0, (_t, _m, _end, start) => {
      starts.push(start)
      return false
    })
    assert.deepEqual(starts, [-1, parse.length - 3])
    assert.equal(scanner.partial, null)
    // A body split across three chunks: the middle one reports the start as earlier.
    scanner.scan(parse.subarray(0, 8), 0, () => false)
    assert.deepEqual(scanner.partial, { type: parse[0], start: 0 })
    scanner.scan(parse.subarray(8, 10), 0, () => false)
    assert.deepEqual(scanner.partial, { type: parse[0], start: -1 })
  })

  it('reports every flag-2 message as a view of the chunk', () => {
    const scanner = new FrameScanner(ALL)
    const views: Buffer[] = []
    const sizes = allocSizes(() => {
      assert.equal(
        scanner.scan(stream, 0, (_t, msg) => {
          views.push(msg!)
          return false
        }),
        stream.length,
      )
    })
    assert.deepEqual(sizes, [])
    for (const v of views) assert.equal(v.buffer, stream.buffer)
    assert.deepEqual(views, msgs)
  })

  it('gives the same reports when cut at every byte offset', () => {
    const mixed = new Uint8Array(256)
    mixed[0x5a] = 1 // Z
    mixed[0x44] = 2 // D
    mixed[0x50] = 2 // P
    for (const flags of [ALL, mixed]) {
      const want = oracle(flags)
      for (let k = 0; k <= stream.length; k++) {
        assert.deepEqual(
          run(flags, [stream.subarray(0, k), stream.subarray(k)]),
          want,
          `cut at ${k}`,
        )
      }
    }
  })

  it('gives the same reports for random flags and chunkings', () => {
    fc.assert(
      fc.property(flagsArb, offsetsArb, (flags, offsets) => {
        assert.deepEqual(run(flags, cut(stream, offsets)), oracle(flags))
      }),
      { numRuns: 200 },
    )
  })

  it('stops at any report and resumes from the returned end', () => {
    fc.assert(
      fc.property(flagsArb, offsetsArb, fc.array(fc.boolean()), (flags, offsets, stops) => {
        const events = run(flags, cut(stream, offsets), (i) => stops[i] ?? false)
        assert.deepEqual(events, oracle(flags))
      }),
      { numRuns: 200 },
    )
  })

  it('stops on a message completed from a previous chunk', () => {
    const z = s.readyForQuery(0x49)
    const tail = s.query('next')
    const scanner = new FrameScanner(ALL)
    const first = Buffer.concat([s.sync(), z.subarray(0, 3)])
    assert.equal(
      scanner.scan(first, 0, () => false),
      first.length,
    )
    assert.equal(scanner.atBoundary, false)
    const second = Buffer.concat([z.subarray(3), tail])
    let joined: Buffer | null = null
    const end = scanner.scan(second, 0, (_t, msg) => {
      joined = msg
      return true
    })
    assert.equal(end, 3)
    assert.deepEqual(joined, z)
    assert.equal(scanner.atBoundary, true)
    const rest: Buffer[] = []
    scanner.scan(second, end, (_t, msg) => rest.push(msg!) < 0)
    assert.deepEqual(rest, [tail])
  })

  it('never buffers skipped or type-only messages', () => {
    const flags = new Uint8Array(256).fill(1)
    flags[0x44] = 0 // D
    const sizes = allocSizes(() => {
      run(
        flags,
        Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1)),
      )
    })
    assert.deepEqual(sizes, [])
    // Flag 2 on DataRow only: one allocation, of that message's size, per DataRow.
    const dataRows = msgs.filter((m) => m[0] === 0x44)
    const only = new Uint8Array(256)
    only[0x44] = 2
    const sizes2 = allocSizes(() => {
      run(
        only,
        Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1)),
      )
    })
    assert.deepEqual(
      sizes2,
      dataRows.map((m) => m.length),
    )
  })

  it('reset drops a partial message', () => {
    const scanner = new FrameScanner(ALL)
    const q = s.query('SELECT 1')
    scanner.scan(q.subarray(0, 7), 0, () => assert.fail())
    assert.equal(scanner.atBoundary, false)
    scanner.reset()
    assert.equal(scanner.atBoundary, true)
    const got: Buffer[] = []
    scanner.scan(q, 0, (_t, m) => got.push(m!) < 0)
    assert.deepEqual(got, [q])
  })

  it('rejects a table shorter than 256 entries', () => {
    assert.throws(() => new FrameScanner(new Uint8Array(10)), RangeError)
  })

  describe('malformed input', () => {
    for (const length of [0, 3, -1, 65]) {
      it(`rejects length ${length} at every split of the header`, () => {
        const h = Buffer.from([0x51, 0, 0, 0, 0, 0x51, 0, 0, 0, 4])
        h.writeInt32BE(length, 1)
        for (const flags of [ALL, new Uint8Array(256)]) {
          for (let k = 0; k <= h.length; k++) {
            const scanner = new FrameScanner(flags, 64)
            assert.throws(
              () => {
                scanner.scan(h.subarray(0, k), 0, () => false)
                scanner.scan(h.subarray(k), 0, () => false)
              },
              (e: unknown) =>
                e instanceof ProtocolError &&
                e.code === 'ERR_PG_PROTOCOL' &&
                e.message ===
                  (length >= 64
                    ? `message of ${length + 1} bytes exceeds max_packet_size 64`
                    : `invalid message length ${length} for type 'Q'`),
            )
          }
        }
      })
    }

    it('lying lengths and random bytes only raise ProtocolError, allocating at most the cap', () => {
      const max = 64
      const bytesArb = fc.oneof(
        lyingStreamArb,
        fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
      )
      fc.assert(
        fc.property(bytesArb, flagsArb, fc.integer({ min: 1, max: 50 }), (buf, flags, step) => {
          const scanner = new FrameScanner(flags, max)
          const sizes = allocSizes(() => {
            try {
              for (let i = 0; i < buf.length; i += step) {
                const c = buf.subarray(i, i + step)
                assert.equal(
                  scanner.scan(c, 0, (_t, msg) => {
                    if (msg !== null) assert.equal(msg.readInt32BE(1), msg.length - 1)
                    return false
                  }),
                  c.length,
                )
              }
            } catch (e) {
              if (!(e instanceof ProtocolError)) throw e
            }
          })
          for (const n of sizes) assert.ok(n <= max + 1, `allocated ${n}`)
        }),
        { numRuns: 300 },
      )
    })
  })
})
