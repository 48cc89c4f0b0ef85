import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { allMessages, allocSizes, cut, lyingStreamArb } from '../test/wire-fixtures.ts'
import { ProtocolError } from './errors.ts'
import { FrameReader } from './frame-reader.ts'
import * as s from './serializer.ts'

const stream = Buffer.concat(allMessages())
const expected = allMessages().map((m) => m.toString('hex'))

function collect(reader: FrameReader, chunks: Buffer[]): string[] {
  const out: string[] = []
  for (const c of chunks) {
    reader.push(c, (type, msg) => {
      assert.equal(type, reader.startup ? 0 : msg[0])
      out.push(msg.toString('hex'))
    })
  }
  return out
}

const offsetsArb = (len: number) =>
  fc
    .uniqueArray(fc.integer({ min: 1, max: len - 1 }), { maxLength: 40 })
    .map((a) => a.sort((x, y) => x - y))

describe('FrameReader', () => {
  it('gives views of whole messages inside one chunk, without allocating', () => {
    const reader = new FrameReader()
    const views: Buffer[] = []
    const sizes = allocSizes(() => reader.push(stream, (_t, msg) => void views.push(msg)))
    assert.deepEqual(sizes, [])
    assert.equal(views.length, expected.length)
    for (const v of views) assert.equal(v.buffer, stream.buffer)
    assert.deepEqual(
      views.map((v) => v.toString('hex')),
      expected,
    )
    assert.equal(reader.pendingBytes, 0)
  })

  it('gives the same messages when cut at every byte offset', () => {
    for (let k = 0; k <= stream.length; k++) {
      const reader = new FrameReader()
      const got = collect(reader, [stream.subarray(0, k), stream.subarray(k)])
      assert.deepEqual(got, expected, `cut at ${k}`)
      assert.equal(reader.pendingBytes, 0)
    }
  })

  it('gives the same messages for random chunkings', () => {
    fc.assert(
      fc.property(offsetsArb(stream.length), (offsets) => {
        const reader = new FrameReader()
        assert.deepEqual(collect(reader, cut(stream, offsets)), expected)
        assert.equal(reader.pendingBytes, 0)
      }),
      { numRuns: 200 },
    )
  })

  it('joins a message split byte by byte with one allocation', () => {
    const msg = s.dataRow(['x'.repeat(300)])
    const reader = new FrameReader()
    const got: Buffer[] = []
    const sizes = allocSizes(() => {
      for (let i = 0; i < msg.length; i++) {
        reader.push(msg.subarray(i, i + 1), (_t, m) => void got.push(m))
        if (i < msg.length - 1) assert.equal(reader.pendingBytes, i + 1)
      }
    })
    assert.deepEqual(sizes, [msg.length])
    assert.deepEqual(got, [msg])
  })

  it('frames startup packets and switches to typed framing mid-chunk', () => {
    const startup = s.startupMessage({ user: 'u', database: 'd' })
    const all = [s.sslRequest(), startup, s.query('SELECT 1'), s.sync()]
    const whole = Buffer.concat(all)
    for (let k = 0; k <= whole.length; k++) {
      const reader = new FrameReader({ startup: true })
      const got: string[] = []
      const types: number[] = []
      for (const c of [whole.subarray(0, k), whole.subarray(k)]) {
        reader.push(c, (type, msg) => {
          types.push(type)
          got.push(msg.toString('hex'))
          if (msg.equals(startup)) reader.startup = false
        })
      }
      assert.deepEqual(
        got,
        all.map((m) => m.toString('hex')),
        `cut at ${k}`,
      )
      assert.deepEqual(types, [0, 0, 0x51, 0x53])
    }
  })

  it('stops at a boundary when the handler returns true, then resumes', () => {
    const msgs = [s.query('a'), s.sync(), s.query('b'), s.terminate()]
    const whole = Buffer.concat(msgs)
    const reader = new FrameReader()
    const got: Buffer[] = []
    const stopAtSync = (_t: number, m: Buffer) => {
      got.push(m)
      return m[0] === 0x53
    }
    reader.push(whole, stopAtSync)
    assert.equal(got.length, 2)
    assert.equal(reader.pendingBytes, msgs[2]!.length + msgs[3]!.length)
    reader.resume(stopAtSync)
    assert.deepEqual(got, msgs)
    assert.equal(reader.pendingBytes, 0)
  })

  it('gives the same messages with random stops and chunkings', () => {
    fc.assert(
      fc.property(offsetsArb(stream.length), fc.array(fc.boolean()), (offsets, stops) => {
        const reader = new FrameReader()
        const got: string[] = []
        let stopped = false
        const cb = (_t: number, m: Buffer) => {
          got.push(m.toString('hex'))
          stopped = stops[got.length - 1] ?? false
          return stopped
        }
        const chunks = cut(stream, offsets)
        for (let i = 0; i < chunks.length; i++) {
          reader.push(chunks[i]!, cb)
          // Sometimes push the next chunk while stopped, sometimes resume first.
          while (stopped && (i === chunks.length - 1 || stops[got.length + 7])) {
            stopped = false
            reader.resume(cb)
          }
        }
        while (stopped) {
          stopped = false
          reader.resume(cb)
        }
        assert.deepEqual(got, expected)
        assert.equal(reader.pendingBytes, 0)
      }),
      { numRuns: 200 },
    )
  })

  it('keeps new chunks behind pending bytes after a stop', () => {
    const msgs = [s.sync(), s.sync(), s.query('x'), s.query('y')]
    const whole = Buffer.concat(msgs)
    const reader = new FrameReader()
    const got: Buffer[] = []
    const stop = (_t: number, m: Buffer) => got.push(m) > 0
    reader.push(whole.subarray(0, 12), stop) // stops after the first Sync
    reader.push(whole.subarray(12), stop) // stops after the second, before the new chunk
    assert.deepEqual(got, msgs.slice(0, 2))
    reader.resume(() => false)
    assert.equal(reader.pendingBytes, 0)
    reader.push(whole, (_t, m) => void got.push(m))
    assert.equal(got.length, 6)
  })

  it('hands over undelivered bytes with takeRemainder', () => {
    const msgs = [s.sslRequest(), s.query('leftover')]
    const whole = Buffer.concat(msgs)
    const reader = new FrameReader({ startup: true })
    // Bytes stuffed behind an SSLRequest stay pending, visible to the caller.
    reader.push(whole, () => true)
    assert.equal(reader.pendingBytes, msgs[1]!.length)
    assert.deepEqual(reader.takeRemainder(), msgs[1])
    assert.equal(reader.pendingBytes, 0)
    // A partial message split over several chunks comes back joined.
    const r2 = new FrameReader()
    r2.push(whole.subarray(8, 10), () => assert.fail())
    r2.push(whole.subarray(10, 12), () => assert.fail())
    assert.deepEqual(r2.takeRemainder(), whole.subarray(8, 12))
    assert.equal(r2.takeRemainder().length, 0)
  })

  describe('malformed input', () => {
    const header = (type: number, length: number) => {
      const b = Buffer.alloc(5)
      b[0] = type
      b.writeInt32BE(length, 1)
      return b
    }

    for (const length of [0, 3, -1, -2147483648]) {
      it(`rejects length ${length} without allocating`, () => {
        for (let k = 0; k <= 5; k++) {
          const reader = new FrameReader()
          const h = header(0x51, length)
          const sizes = allocSizes(() => {
            assert.throws(
              () => collect(reader, [h.subarray(0, k), h.subarray(k)]),
              (e: unknown) =>
                e instanceof ProtocolError &&
                e.code === 'ERR_PG_PROTOCOL' &&
                e.sqlstate === '08P01' &&
                e.message === `invalid message length ${length} for type 'Q'`,
            )
          })
          assert.deepEqual(sizes, [])
        }
      })
    }

    it('rejects a length above maxLength before buffering anything', () => {
      const reader = new FrameReader({ maxLength: 10000 })
      const sizes = allocSizes(() => {
        assert.throws(
          () => collect(reader, [header(0x44, 99999999)]),
          /^ProtocolError: message of 100000000 bytes exceeds max_packet_size 10000$/,
        )
      })
      assert.deepEqual(sizes, [])
    })

    it('does not allocate for a huge announced length before it arrives', () => {
      const reader = new FrameReader()
      const sizes = allocSizes(() => {
        reader.push(header(0x64, 2147483646), () => assert.fail())
        reader.push(Buffer.alloc(1000), () => assert.fail())
      })
      assert.deepEqual(sizes, [])
      assert.equal(reader.pendingBytes, 1005)
    })

    it('rejects startup packets shorter than 8 or longer than 10000 bytes', () => {
      for (const length of [0, 4, 7, -1, 10001]) {
        const b = Buffer.alloc(8)
        b.writeInt32BE(length, 0)
        const reader = new FrameReader({ startup: true })
        assert.throws(() => collect(reader, [b]), ProtocolError)
      }
    })

    it('lying length fields only ever raise ProtocolError and allocate at most the cap', () => {
      const max = 64
      fc.assert(
        fc.property(lyingStreamArb, offsetsArb(2000), (buf, offsets) => {
          const reader = new FrameReader({ maxLength: max })
          let delivered = 0
          const sizes = allocSizes(() => {
            try {
              for (const c of cut(
                buf,
                offsets.filter((o) => o < buf.length),
              )) {
                reader.push(c, (_t, m) => {
                  assert.equal(m.readInt32BE(1), m.length - 1)
                  delivered += m.length
                })
              }
            } catch (e) {
              if (!(e instanceof ProtocolError)) throw e
              return
            }
          })
          for (const n of sizes) assert.ok(n <= max + 1, `allocated ${n}`)
          assert.ok(delivered + reader.pendingBytes <= buf.length)
        }),
        { numRuns: 300 },
      )
    })

    it('random bytes only ever raise ProtocolError and allocate at most the cap', () => {
      const max = 64
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 400 }), fc.boolean(), (bytes, startup) => {
          const buf = Buffer.from(bytes)
          const reader = new FrameReader({ maxLength: max, startup })
          const sizes = allocSizes(() => {
            try {
              for (const c of cut(buf, buf.length > 2 ? [1, buf.length >> 1] : [])) {
                reader.push(c, (_t, m) => {
                  assert.ok(m.length >= (startup ? 8 : 5))
                })
              }
            } catch (e) {
              if (!(e instanceof ProtocolError)) throw e
            }
          })
          for (const n of sizes) assert.ok(n <= (startup ? 10000 : max + 1), `allocated ${n}`)
        }),
        { numRuns: 300 },
      )
    })
  })
})
