import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import { describe, test } from 'node:test'
import { ProtocolError } from '@pgbouncer-cluster/protocol/errors'
import { StartupPackets } from './startup-cache.ts'

function startupPacket(params: Record<string, string>): Buffer {
  const body = Buffer.concat([
    ...Object.entries(params).map(([k, v]) => Buffer.from(`${k}\0${v}\0`)),
    Buffer.from([0]),
  ])
  const head = Buffer.alloc(8)
  head.writeInt32BE(8 + body.length, 0)
  head.writeInt32BE(196608, 4)
  return Buffer.concat([head, body])
}

describe('startup packets seen before', () => {
  test('the same bytes give the same parse, with the params as a name/value list', () => {
    const packets = new StartupPackets<string>()
    const bytes = startupPacket({ user: 'alice', database: 'app', application_name: 'web' })
    const first = packets.parse(bytes)
    assert.equal(first.kind, 'startup')
    if (first.kind !== 'startup') return
    assert.deepEqual(first.list, ['user', 'alice', 'database', 'app', 'application_name', 'web'])
    assert.equal(first.params.user, 'alice')
    assert.equal(first.memo, null)
    first.memo = 'kept'
    // A copy of the bytes, as a new read would hand them over.
    const again = packets.parse(Buffer.from(bytes))
    assert.equal(again, first)
    if (again.kind === 'startup') assert.equal(again.memo, 'kept')
  })

  test('one byte more or less is another packet', () => {
    const packets = new StartupPackets<string>()
    const alice = packets.parse(startupPacket({ user: 'alice', database: 'app' }))
    const alicia = packets.parse(startupPacket({ user: 'alicia', database: 'app' }))
    const bob = packets.parse(startupPacket({ user: 'bob', database: 'app' }))
    assert.notEqual(alice, alicia)
    assert.notEqual(alice, bob)
    if (alicia.kind === 'startup') assert.equal(alicia.params.user, 'alicia')
    if (bob.kind === 'startup') assert.equal(bob.params.user, 'bob')
  })

  test('a bad packet still throws each time; SSLRequest and CancelRequest are never kept', () => {
    const packets = new StartupPackets<string>()
    const noUser = startupPacket({ database: 'app' })
    assert.throws(() => packets.parse(noUser), ProtocolError)
    assert.throws(() => packets.parse(noUser), ProtocolError)
    const ssl = Buffer.alloc(8)
    ssl.writeInt32BE(8, 0)
    ssl.writeInt32BE(80877103, 4)
    assert.notEqual(packets.parse(ssl), packets.parse(ssl))
    const cancel = Buffer.alloc(16)
    cancel.writeInt32BE(16, 0)
    cancel.writeInt32BE(80877102, 4)
    cancel.writeInt32BE(1234, 8)
    cancel.writeInt32BE(5678, 12)
    assert.deepEqual(packets.parse(cancel), { kind: 'cancel', pid: 1234, secret: 5678 })
    assert.notEqual(packets.parse(cancel), packets.parse(cancel))
  })

  test('the table starts over once full, and parses stay right', () => {
    const packets = new StartupPackets<string>()
    for (let i = 0; i < 200; i++) {
      const parsed = packets.parse(startupPacket({ user: `user${i}`, database: 'app' }))
      assert.ok(parsed.kind === 'startup' && parsed.params.user === `user${i}`)
    }
    const late = startupPacket({ user: 'user199', database: 'app' })
    assert.equal(packets.parse(late), packets.parse(late))
  })
})
