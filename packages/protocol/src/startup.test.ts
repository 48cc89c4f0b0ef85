import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { ProtocolError } from './errors.ts'
import { StartupCode } from './messages.ts'
import * as s from './serializer.ts'
import { parseStartupPacket } from './startup.ts'

// A startup packet with any version code and raw body (pairs + terminator).
function packet(code: number, body: string | Buffer): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  const out = Buffer.alloc(8 + b.length)
  out.writeInt32BE(out.length, 0)
  out.writeInt32BE(code, 4)
  b.copy(out, 8)
  return out
}

const v = (major: number, minor: number) => (major << 16) | minor

function rejects(buf: Buffer, message: string | RegExp) {
  assert.throws(
    () => parseStartupPacket(buf),
    (e: unknown) =>
      e instanceof ProtocolError &&
      e.code === 'ERR_PG_PROTOCOL' &&
      (typeof message === 'string' ? e.message === message : message.test(e.message)),
  )
}

describe('parseStartupPacket', () => {
  it('reads a protocol 3.0 StartupMessage', () => {
    const params = { user: 'alice', database: 'app', application_name: 'psql', options: '-c x=1' }
    const got = parseStartupPacket(s.startupMessage(params))
    assert.equal(got.kind, 'startup')
    if (got.kind !== 'startup') return
    assert.equal(got.major, 3)
    assert.equal(got.minor, 0)
    assert.deepEqual({ ...got.params }, params)
    assert.equal(Object.getPrototypeOf(got.params), null)
    assert.deepEqual(got.protocolOptions, [])
  })

  it('accepts protocol 3.2 and separates _pq_ options', () => {
    const got = parseStartupPacket(packet(v(3, 2), 'user\0bob\0_pq_.x\0on\0_pq_.y\0\0\0'))
    assert.deepEqual(
      got.kind === 'startup' && [got.major, got.minor, { ...got.params }, got.protocolOptions],
      [3, 2, { user: 'bob' }, ['_pq_.x', '_pq_.y']],
    )
  })

  it('keeps client-chosen keys off the prototype chain', () => {
    const got = parseStartupPacket(packet(v(3, 0), 'user\0u\0__proto__\0x\0constructor\0y\0\0'))
    assert.ok(got.kind === 'startup')
    assert.equal(Object.getOwnPropertyDescriptor(got.params, '__proto__')?.value, 'x')
    assert.equal(got.params.constructor, 'y')
    assert.equal(Object.getPrototypeOf(got.params), null)
  })

  it('reads SSLRequest, GSSENCRequest and CancelRequest', () => {
    assert.deepEqual(parseStartupPacket(s.sslRequest()), { kind: 'ssl' })
    assert.deepEqual(parseStartupPacket(packet(StartupCode.GSSENCRequest, '')), { kind: 'gssenc' })
    assert.deepEqual(parseStartupPacket(s.cancelRequest(4242, -99)), {
      kind: 'cancel',
      pid: 4242,
      secret: -99,
    })
    assert.deepEqual(parseStartupPacket(s.cancelRequest(1, 0xfffffff0)), {
      kind: 'cancel',
      pid: 1,
      secret: 0xfffffff0 | 0,
    })
  })

  it('rejects other protocol versions', () => {
    rejects(packet(v(2, 0), 'user\0u\0\0'), 'unsupported protocol version 2.0')
    rejects(packet(v(4, 0), 'user\0u\0\0'), 'unsupported protocol version 4.0')
    rejects(packet(v(1234, 5681), ''), 'unsupported protocol version 1234.5681')
    rejects(packet(-1, 'user\0u\0\0'), 'unsupported protocol version 65535.65535')
  })

  it('requires a user name', () => {
    rejects(s.startupMessage({ database: 'd' }), 'No username supplied')
    rejects(s.startupMessage({ user: '' }), 'No username supplied')
    rejects(packet(v(3, 0), '\0'), 'No username supplied')
  })

  it('rejects malformed layouts', () => {
    rejects(packet(v(3, 0), 'user\0a\0user\0b\0\0'), /duplicate parameter "user"/)
    rejects(packet(v(3, 0), 'user\0a\0_pq_.x\0\0_pq_.x\0\0\0'), /duplicate parameter "_pq_.x"/)
    rejects(packet(v(3, 0), 'user\0a\0'), /missing terminator/)
    rejects(packet(v(3, 0), 'user\0a'), /expected terminator as last byte/)
    rejects(packet(v(3, 0), 'user\0a\0db\0'), /parameter without value/)
    rejects(packet(v(3, 0), 'user\0a\0\0x\0'), /trailing bytes/)
    rejects(packet(v(3, 0), ''), /missing terminator/)
    rejects(packet(StartupCode.SSLRequest, 'x'), /SSLRequest with a body/)
    rejects(packet(StartupCode.GSSENCRequest, 'x'), /GSSENCRequest with a body/)
    rejects(packet(StartupCode.CancelRequest, 'abcd'), /CancelRequest of 12 bytes/)
    const lying = packet(v(3, 0), 'user\0u\0\0')
    lying.writeInt32BE(lying.length + 1, 0)
    rejects(lying, /length field does not match/)
    rejects(Buffer.from([0, 0, 0, 4]), /length 4/)
    rejects(packet(v(3, 0), Buffer.alloc(10000)), /length 10008/)
  })

  it('takes a user or database name only as the UTF-8 it must be, never decoded into another', () => {
    const named = (user: Buffer, database: Buffer = Buffer.from('app')) =>
      packet(
        v(3, 0),
        Buffer.concat([
          Buffer.from('user\0'),
          user,
          Buffer.from('\0database\0'),
          database,
          Buffer.from('\0\0'),
        ]),
      )
    const got = parseStartupPacket(named(Buffer.from('üser ☃ 𝄞'), Buffer.from('ŝ')))
    assert.ok(got.kind === 'startup')
    assert.deepEqual(Buffer.from(got.params.user!), Buffer.from('üser ☃ 𝄞'))
    for (const [user, database, shown] of [
      [Buffer.from([0x75, 0xff]), Buffer.from('app'), '0xff'],
      [Buffer.from('u'), Buffer.from([0x61, 0xc3, 0x28]), '0xc3 0x28'],
      [Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('app'), '0xed 0xa0 0x80'], // a surrogate
      [Buffer.from([0xc0, 0xaf]), Buffer.from('app'), '0xc0 0xaf'], // overlong '/'
      [Buffer.from([0x75, 0xe2, 0x98]), Buffer.from('app'), '0xe2 0x98'], // cut short
    ] as const) {
      assert.throws(
        () => parseStartupPacket(named(user, database)),
        (e: unknown) =>
          e instanceof ProtocolError &&
          e.sqlstate === '22021' &&
          e.message === `invalid byte sequence for encoding "UTF8": ${shown}`,
      )
    }
  })

  it('random bodies only raise ProtocolError', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(v(3, 0), v(3, 2), StartupCode.CancelRequest, StartupCode.SSLRequest),
        fc.array(fc.constantFrom('user', 'u', '_pq_.a', '', '\0', 'x\0y'), { maxLength: 12 }),
        fc.uint8Array({ maxLength: 20 }),
        (code, words, noise) => {
          const body = Buffer.concat([Buffer.from(words.join('\0')), noise])
          try {
            const got = parseStartupPacket(packet(code, body))
            if (got.kind === 'startup') assert.ok(got.params.user)
          } catch (e) {
            if (!(e instanceof ProtocolError)) throw e
          }
        },
      ),
      { numRuns: 300 },
    )
  })
})
