import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  CANCEL_TTL_MASK,
  forwardedSecret,
  issueKey,
  keyPeer,
  keyWorker,
  lookupKey,
  sameSecret,
} from './cancel-key.ts'

/** The 8 bytes a client sends back, as PgBouncer reads them (cancel_key[0..7]). */
function wireBytes(pid: number, secret: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeInt32BE(pid | 0, 0)
  b.writeInt32BE(secret | 0, 4)
  return b
}

describe('cancel keys', () => {
  it('without peer_id: the worker in the top byte, the rest of the pid and the whole secret random', () => {
    for (const worker of [0, 5, 63]) {
      const { pid, secret } = issueKey(worker, 0, 0xfedcba98, 0x87654321)
      assert.equal(keyWorker(pid), worker)
      assert.equal(pid & 0xffffff, 0xdcba98)
      assert.ok(pid > 0)
      assert.equal(secret >>> 0, 0x87654321, 'all 32 bits of the secret are the random ones')
    }
    // Nothing else goes in: the same worker with other random words gives another key.
    const a = issueKey(1, 0, 0, 0)
    const b = issueKey(1, 0, 0xffffffff, 0xffffffff)
    assert.equal(a.pid ^ b.pid, 0xffffff)
    assert.equal(a.secret ^ b.secret, -1)
  })

  it('with peer_id: PgBouncer 1.19 byte positions (peer in bytes 1-2 low first, TTL 3 in byte 7)', () => {
    for (const peer of [1, 2, 255, 256, 16383]) {
      const { pid, secret } = issueKey(3, peer, 0xab, 0x12345678)
      const bytes = wireBytes(pid, secret)
      // PgBouncer: peer_id = cancel_key[1] + (cancel_key[2] << 8); ttl = cancel_key[7] & 3.
      assert.equal(bytes[1]! + (bytes[2]! << 8), peer)
      assert.equal(bytes[7]! & CANCEL_TTL_MASK, 3)
      assert.equal(bytes[0]! & 0x80, 0, 'sign bit of the pid stays clear')
      assert.equal(keyPeer(pid), peer)
      assert.equal(keyWorker(pid), 3)
      // Byte 3 and the secret's upper 30 bits are the random ones.
      assert.equal(bytes[3], 0xab)
      assert.equal(secret >>> 2, 0x12345678 >>> 2)
    }
  })

  it('a forwarded key is found again: the lookup and the secret check ignore the TTL bits', () => {
    const { pid, secret } = issueKey(1, 7, 0x42, 0x7654321)
    let s: number | null = secret
    const seen: number[] = []
    while (s !== null) {
      assert.equal(lookupKey(pid, s), lookupKey(pid, secret))
      assert.ok(sameSecret(secret, s))
      seen.push(s & CANCEL_TTL_MASK)
      s = forwardedSecret(s)
    }
    // Issued with 3: forwarded at most three times, then dropped.
    assert.deepEqual(seen, [3, 2, 1, 0])
  })

  it('another secret does not match, and negative secrets from the wire work', () => {
    const { secret } = issueKey(0, 9, 0, 0x1000)
    assert.ok(!sameSecret(secret, secret ^ 0x1000))
    assert.equal(forwardedSecret(-1), -2)
    assert.equal(forwardedSecret(-4), null)
    assert.ok(Number.isSafeInteger(lookupKey(-1, -1)))
  })

  it('a top byte that names no worker is -1', () => {
    assert.equal(keyWorker(0x00123456), -1)
  })
})
