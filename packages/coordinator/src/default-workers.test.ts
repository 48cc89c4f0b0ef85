import assert from 'node:assert/strict'
import os from 'node:os'
import { test } from 'node:test'
import { defaultWorkers } from './default-workers.ts'

test('one worker on hosts of up to two CPUs, one per CPU above', () => {
  assert.equal(defaultWorkers(1), 1)
  assert.equal(defaultWorkers(2), 1)
  assert.equal(defaultWorkers(3), 3)
  assert.equal(defaultWorkers(16), 16)
  assert.equal(defaultWorkers(), defaultWorkers(os.availableParallelism()))
})
