import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import { describe, test } from 'node:test'
import { ProtocolError } from '@pgbouncer-cluster/protocol/errors'
import { HOLD_LIMIT, type HoldPolicy, sizeAt, Unfinished } from './unfinished.ts'

function message(type: string, bodyLength: number): Buffer {
  const out = Buffer.alloc(5 + bodyLength)
  out[0] = type.charCodeAt(0)
  out.writeInt32BE(4 + bodyLength, 1)
  for (let i = 5; i < out.length; i++) out[i] = i & 0xff
  return out
}

const HOLD: HoldPolicy = { holds: () => true }
const STREAM: HoldPolicy = { holds: () => false }
const MAX = 0x7fffffff

/** Holds `bytes` from the first cut on, feeding the rest in pieces of `step`; the results. */
function feed(bytes: Buffer, first: number, step: number, policy = HOLD) {
  const head = bytes.subarray(0, first)
  const held = new Unfinished(0, head, sizeAt(head, 0))
  let out: Buffer | null = null
  let calls = 0
  for (let pos = first; pos < bytes.length && out === null; pos += step) {
    out = held.add(bytes.subarray(pos, Math.min(pos + step, bytes.length)), MAX, policy)
    calls++
  }
  return { held, out, calls }
}

describe('a message held back until its last byte', () => {
  test('a small message cut at every offset comes back whole, with what followed it', () => {
    const msg = message('Q', 40)
    const next = message('S', 0)
    const stream = Buffer.concat([msg, next])
    for (let cut = 1; cut < msg.length; cut++) {
      // The rest in one read: the message and the Sync after it come back together.
      const { out } = feed(stream, cut, stream.length)
      assert.deepEqual(out, stream, `cut at ${cut}`)
      // The rest a byte at a time: whole once its last byte is in, not before.
      const slow = feed(msg, cut, 1)
      assert.deepEqual(slow.out, msg, `cut at ${cut}, byte by byte`)
      assert.equal(slow.calls, msg.length - cut)
    }
  })

  test('a large message goes into one buffer of its size, copied into once, the next message apart', () => {
    const msg = message('P', 3 * HOLD_LIMIT)
    const next = message('S', 0)
    const stream = Buffer.concat([msg, next])
    for (const first of [1, 4, 5, 6, 1000]) {
      for (const step of [4096, stream.length]) {
        const { held, out } = feed(stream, first, step)
        assert.ok(out !== null)
        assert.deepEqual(out, msg)
        assert.equal(out.buffer.byteLength, msg.length, 'a buffer of exactly the message size')
        assert.equal(out.byteOffset, 0)
        // What the completing read carried past the message: the start of the next one.
        const rest = held.rest ?? Buffer.alloc(0)
        assert.deepEqual(rest, next.subarray(0, rest.length))
        if (step === stream.length) assert.deepEqual(rest, next)
      }
    }
  })

  test('a read copied whole into a large message is given back at once; one whose rest is used is not', () => {
    const msg = message('P', 3 * HOLD_LIMIT)
    const held = new Unfinished(0, msg.subarray(0, 10), sizeAt(msg, 0))
    const middle = Buffer.allocUnsafeSlow(HOLD_LIMIT)
    msg.copy(middle, 0, 10)
    assert.equal(held.add(middle, MAX, HOLD), null)
    assert.equal(middle.buffer.byteLength, 0, 'the read was detached')
    const tail = Buffer.concat([msg.subarray(10 + HOLD_LIMIT), message('S', 0)])
    const last = Buffer.allocUnsafeSlow(tail.length)
    tail.copy(last)
    const out = held.add(last, MAX, HOLD)
    assert.deepEqual(out, msg)
    assert.equal(
      last.buffer.byteLength,
      tail.length,
      'the read that carries the next message stays',
    )
    assert.deepEqual(held.rest, message('S', 0))
  })

  test('held only for its header: given back at once when the header says it streams', () => {
    const msg = message('d', 2 * HOLD_LIMIT)
    const held = new Unfinished(0, msg.subarray(0, 3), 0)
    const back = held.add(msg.subarray(3, 100), MAX, STREAM)
    assert.deepEqual(back, msg.subarray(0, 100))
    assert.equal(held.held, false)
  })

  test('a length max_packet_size refuses ends it, however the header was cut', () => {
    const msg = message('P', 200)
    for (let cut = 1; cut < 5; cut++) {
      const held = new Unfinished(0, msg.subarray(0, cut), 0)
      assert.throws(
        () => held.add(msg.subarray(cut), 100, HOLD),
        (e: unknown) => e instanceof ProtocolError && /max_packet_size/.test(e.message),
      )
    }
  })

  test('dropped when the client goes: a large buffer is given back at once', () => {
    const msg = message('P', 3 * HOLD_LIMIT)
    const held = new Unfinished(0, msg.subarray(0, 10), sizeAt(msg, 0))
    assert.equal(held.add(msg.subarray(10, 5000), MAX, HOLD), null)
    const buffer = (held as unknown as { whole: Buffer }).whole.buffer
    assert.equal(buffer.byteLength, msg.length)
    held.drop()
    assert.equal(buffer.byteLength, 0, 'detached')
  })
})
