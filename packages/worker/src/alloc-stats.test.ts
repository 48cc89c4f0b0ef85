import assert from 'node:assert/strict'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { type AllocTotals, addWindow, startAllocStats } from './alloc-stats.ts'

const gc = (before: number, after: number, cost: number) => ({
  cost,
  beforeGC: { heapStatistics: { usedHeapSize: before } },
  afterGC: { heapStatistics: { usedHeapSize: after } },
})

test('what the heap grew by between collections is counted as allocated', () => {
  const t: AllocTotals = { allocatedBytes: 0, gcCount: 0, gcMs: 0, window: 0 }
  // 1000 at start; grows to 5000, collected to 800; grows to 3000, collected to 900; ends at 1500
  addWindow(t, 1000, [gc(5000, 800, 1500), gc(3000, 900, 500)], 1500)
  assert.deepEqual(t, { allocatedBytes: 4000 + 2200 + 600, gcCount: 2, gcMs: 2, window: 0 })
  addWindow(t, 1500, [], 1700)
  assert.equal(t.allocatedBytes, 6800 + 200)
})

test('unset, nothing is written; set, the thread closes each window the bench opens', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'alloc-stats-'))
  const read = () => {
    const files = readdirSync(dir).filter((f) => f.endsWith('.json'))
    assert.deepEqual(files, [`${process.pid}-test.json`])
    return JSON.parse(readFileSync(join(dir, files[0]!), 'utf8')) as AllocTotals
  }
  const closed = async (window: number) => {
    writeFileSync(join(dir, 'window'), String(window))
    for (let i = 0; i < 100 && read().window !== window; i++) {
      await new Promise((r) => setTimeout(r, 20))
    }
    return read()
  }
  try {
    startAllocStats(undefined, 'off')
    startAllocStats(dir, 'test')
    assert.equal(read().window, 0, 'written at start, before any window')
    const before = await closed(1)
    let garbage: unknown[] = []
    for (let i = 0; i < 200_000; i++) {
      garbage.push({ i })
      if (garbage.length > 1000) garbage = []
    }
    const after = await closed(2)
    assert.equal(after.window, 2)
    // 200,000 small objects are several MB of heap
    const allocated = after.allocatedBytes - before.allocatedBytes
    assert.ok(allocated > 2_000_000, `allocated ${allocated}`)
    assert.ok(after.gcCount > before.gcCount)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
