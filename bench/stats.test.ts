import assert from 'node:assert/strict'
import { test } from 'node:test'
import { logHistogram, median, percentileSorted, summarize } from './stats.ts'

test('percentileSorted uses the nearest rank', () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1) // 1..100
  assert.equal(percentileSorted(xs, 50), 50)
  assert.equal(percentileSorted(xs, 95), 95)
  assert.equal(percentileSorted(xs, 99), 99)
  assert.equal(percentileSorted(xs, 99.9), 100)
  assert.equal(percentileSorted(xs, 0), 1)
  assert.equal(percentileSorted(xs, 100), 100)
  assert.equal(percentileSorted([7], 99), 7)
  assert.ok(Number.isNaN(percentileSorted([], 50)))
})

test('median of odd and even counts, ignoring NaN', () => {
  assert.equal(median([3, 1, 2]), 2)
  assert.equal(median([4, 1, 3, 2]), 2.5)
  assert.equal(median([5, Number.NaN, 1, 3]), 3)
  assert.ok(Number.isNaN(median([])))
})

test('summarize sorts numerically, not as strings', () => {
  const s = summarize([100, 9, 20, 1000, 3])
  assert.equal(s.count, 5)
  assert.equal(s.p50, 20)
  assert.equal(s.max, 1000)
  assert.equal(s.avg, 1132 / 5)
  assert.equal(s.p99, 1000)
})

test('summarize of a tail-heavy distribution', () => {
  const samples = [...Array(990).fill(1), ...Array(10).fill(50)]
  const s = summarize(samples)
  assert.equal(s.p50, 1)
  assert.equal(s.p95, 1)
  assert.equal(s.p99, 1)
  assert.equal(s.p999, 50)
})

test('logHistogram keeps every sample in some bucket', () => {
  const samples = [0, 1, 1.1, 2, 3, 100, 1e6]
  const h = logHistogram(samples)
  assert.equal(
    h.reduce((n, [, c]) => n + c, 0),
    samples.length,
  )
  assert.deepEqual(h[0], [0, 1])
  assert.deepEqual(h[1], [1, 2]) // 1 and 1.1 share the [1, 1.19) bucket
  const bounds = h.map(([b]) => b)
  assert.deepEqual(
    bounds,
    [...bounds].sort((a, b) => a - b),
  )
})
