import assert from 'node:assert/strict'
import { test } from 'node:test'
import { bar, fmtDuration } from './progress.ts'

test('fmtDuration', () => {
  assert.equal(fmtDuration(5), '5s')
  assert.equal(fmtDuration(65), '1m05s')
  assert.equal(fmtDuration(900), '15m00s')
  assert.equal(fmtDuration(Number.NaN), '?')
})

test('bar is clamped and of fixed width', () => {
  assert.equal(bar(0, 4), '[....]')
  assert.equal(bar(0.5, 4), '[##..]')
  assert.equal(bar(3, 4), '[####]')
  assert.equal(bar(-1, 4).length, 6)
})
