import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Worker } from 'node:worker_threads'
import { Counter, PoolCounters } from './counters.ts'
import { createSharedMemory, SharedMemory } from './shared-memory.ts'

const layout = { maxWorkers: 3, maxPools: 4, maxDatabases: 2, maxUsers: 2 }

// Each thread adds to its own rows only, many times, with number and bigint
// deltas; the reader must see the exact totals.
const WRITER = `
const { workerData, parentPort } = require('node:worker_threads')
import(workerData.module).then(({ SharedMemory }) => {
  const { counters } = new SharedMemory(workerData.sab)
  const { worker, rounds, c } = workerData
  for (let i = 0; i < rounds; i++) {
    for (let pool = 0; pool < 4; pool++) {
      counters.add(pool, worker, c.query_count, 1)
      counters.add(pool, worker, c.bytes_sent, i % 2 === 0 ? 1500 : 1500n)
      counters.add(pool, worker, c.sv_active, 1)
      counters.add(pool, worker, c.sv_active, -1)
    }
  }
  counters.add(0, worker, c.cl_active, worker + 1)
  parentPort.postMessage('done')
})
`

describe('PoolCounters', () => {
  it('sums rows of two threads writing concurrently, exactly', async () => {
    const sab = createSharedMemory(layout)
    const shm = new SharedMemory(sab)
    const rounds = 100_000
    const module = new URL('./shared-memory.ts', import.meta.url).href
    const writers = [0, 2].map(
      (worker) =>
        new Worker(WRITER, { eval: true, workerData: { sab, module, worker, rounds, c: Counter } }),
    )
    // Read while they write: partial sums only ever grow.
    let last = 0
    const done = Promise.all(writers.map((w) => new Promise((r) => w.once('message', r))))
    let finished = false
    done.then(() => (finished = true))
    while (!finished) {
      const now = shm.counters.sum(1, Counter.query_count)
      assert.ok(now >= last, `sum went back from ${last} to ${now}`)
      last = now
      await new Promise(setImmediate)
    }
    await Promise.all(writers.map((w) => w.terminate()))
    for (let pool = 0; pool < 4; pool++) {
      assert.equal(shm.counters.get(pool, Counter.query_count), BigInt(2 * rounds))
      assert.equal(shm.counters.get(pool, Counter.bytes_sent), BigInt(2 * rounds * 1500))
      assert.equal(shm.counters.get(pool, Counter.sv_active), 0n)
      assert.equal(shm.counters.read(pool, 1, Counter.query_count), 0, 'worker 1 wrote nothing')
    }
    assert.equal(shm.counters.get(0, Counter.cl_active), 4n)
  })

  it('resetWorker zeroes the gauges of one worker and keeps its totals', () => {
    const c = new SharedMemory(createSharedMemory(layout)).counters
    c.add(2, 1, Counter.cl_active, 5)
    c.add(2, 1, Counter.sv_idle, 3)
    c.add(2, 1, Counter.xact_count, 10)
    c.add(2, 0, Counter.cl_active, 2)
    c.add(3, 1, Counter.sv_login, 1)
    c.resetWorker(1)
    assert.equal(c.get(2, Counter.cl_active), 2n)
    assert.equal(c.get(2, Counter.sv_idle), 0n)
    assert.equal(c.get(3, Counter.sv_login), 0n)
    assert.equal(c.get(2, Counter.xact_count), 10n)
  })

  it('keeps rows apart and snapshots every counter by name', () => {
    const c = new SharedMemory(createSharedMemory(layout)).counters
    let v = 1
    for (let w = 0; w < layout.maxWorkers; w++) {
      for (let p = 0; p < layout.maxPools; p++) {
        for (const idx of Object.values(Counter)) c.add(p, w, idx, v++)
      }
    }
    const order: number[] = Object.values(Counter)
    const rowValue = (p: number, w: number, idx: number) =>
      1 + (w * layout.maxPools + p) * order.length + order.indexOf(idx)
    for (let p = 0; p < layout.maxPools; p++) {
      for (const [name, idx] of Object.entries(Counter)) {
        let expected = 0
        for (let w = 0; w < layout.maxWorkers; w++) expected += rowValue(p, w, idx)
        assert.equal(c.snapshot(p)[name as keyof typeof Counter], BigInt(expected))
      }
    }
    c.resetPool(1)
    assert.equal(c.get(1, Counter.bytes_received), 0n)
    assert.notEqual(c.get(2, Counter.bytes_received), 0n)
  })

  it('rounds fractional time totals when read as bigint', () => {
    const c = new PoolCounters(new SharedArrayBuffer(PoolCounters.byteLength(1, 2)), 0, 1, 2)
    c.add(0, 0, Counter.query_time_us, 10.4)
    c.add(0, 1, Counter.query_time_us, 0.3)
    assert.equal(c.get(0, Counter.query_time_us), 11n)
    assert.equal(PoolCounters.byteLength(3, 5) % 64, 0)
  })
})
