import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BUCKET_BOUNDS_US, bucketOf, FINITE_BUCKETS, Latency } from './latency.ts'
import { createSharedMemory, SharedMemory } from './shared-memory.ts'

describe('latency histograms', () => {
  it('puts every time in the first bucket whose bound is at least it', () => {
    assert.equal(BUCKET_BOUNDS_US[0], 32)
    assert.equal(BUCKET_BOUNDS_US.at(-1), 2 ** 24)
    for (let i = 1; i < BUCKET_BOUNDS_US.length; i++) {
      const ratio = BUCKET_BOUNDS_US[i]! / BUCKET_BOUNDS_US[i - 1]!
      assert.ok(ratio > 1 && ratio <= 1.5, `bound ${i}`)
    }
    const linear = (us: number) => {
      const i = BUCKET_BOUNDS_US.findIndex((b) => us <= b)
      return i < 0 ? FINITE_BUCKETS : i
    }
    const samples = [0, -5, Number.NaN, 0.3, 1, 31.9, 32, 32.0001, 47.5, 48, 48.2, 65, 96, 97]
    for (let us = 1; us < 2 ** 25; us = Math.ceil(us * 1.07) + 1)
      samples.push(us, us - 0.5, us + 0.5)
    for (const b of BUCKET_BOUNDS_US) samples.push(b, b + 0.001, b - 0.001)
    samples.push(2 ** 24 + 1, 1e12, Number.POSITIVE_INFINITY)
    for (const us of samples) {
      const expected = Number.isNaN(us) ? 0 : linear(us)
      assert.equal(bucketOf(us), expected, `${us} µs`)
    }
  })

  it('records per worker and sums the workers into cumulative buckets', () => {
    const shm = new SharedMemory(
      createSharedMemory({ maxWorkers: 3, maxPools: 4, maxDatabases: 2, maxUsers: 2 }),
    )
    const h = shm.histograms
    h.record(1, 0, Latency.query, 40) // bucket 48 µs
    h.record(1, 2, Latency.query, 40)
    h.record(1, 2, Latency.query, 5e7) // +Inf
    h.record(1, 1, Latency.xact, 10)
    h.record(0, 1, Latency.query, 10)
    const q = h.snapshot(1, Latency.query)
    assert.equal(q.cumulative.length, FINITE_BUCKETS + 1)
    assert.equal(q.cumulative[0], 0)
    assert.equal(q.cumulative[1], 2)
    assert.equal(q.cumulative[FINITE_BUCKETS - 1], 2)
    assert.equal(q.cumulative[FINITE_BUCKETS], 3)
    assert.equal(q.sumUs, 5e7 + 80)
    assert.equal(h.snapshot(1, Latency.xact).cumulative[0], 1)
    assert.equal(h.snapshot(1, Latency.wait).cumulative[FINITE_BUCKETS], 0)
    h.resetDatabase(1)
    assert.equal(h.snapshot(1, Latency.query).cumulative[FINITE_BUCKETS], 0)
    assert.equal(h.snapshot(0, Latency.query).cumulative[FINITE_BUCKETS], 1)
  })
})
