import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  cpuSeconds,
  memoryBytes,
  parseStatTicks,
  parseStatusKb,
  startWindow,
} from './proc-stats.ts'

test('parseStatTicks counts fields after the last parenthesis', () => {
  // comm with spaces and a ')' in it must not shift the fields
  const stat =
    '1234 (node (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 11 0 500 1000 200'
  assert.deepEqual(parseStatTicks(stat), { utime: 250, stime: 75 })
})

test('parseStatusKb reads kB fields as bytes', () => {
  const status = 'Name:\tnode\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n'
  assert.equal(parseStatusKb(status, 'VmHWM'), 20480 * 1024)
  assert.equal(parseStatusKb(status, 'VmRSS'), 10240 * 1024)
  assert.ok(Number.isNaN(parseStatusKb(status, 'VmSwap')))
})

test('a window over this process sees the CPU it burns and its memory', () => {
  const win = startWindow(process.pid)
  // burn 100 ms of this process's own CPU, however long a loaded machine takes to give it
  const start = process.cpuUsage()
  let x = 0
  do {
    for (let i = 0; i < 10_000; i++) x += Math.sqrt(x + 1)
  } while (process.cpuUsage(start).user < 100_000)
  const w = win.stop()
  assert.ok(w.cpuS >= 0.05, `cpu ${w.cpuS}`)
  assert.ok(w.peakRssBytes > 10 * 2 ** 20, `rss ${w.peakRssBytes}`)
  assert.ok(x > 0)
})

test('a process that is gone reads as NaN, not a crash', () => {
  assert.ok(Number.isNaN(cpuSeconds(2 ** 30)))
  assert.ok(Number.isNaN(memoryBytes(2 ** 30).rss))
  const w = startWindow(null).stop()
  assert.ok(Number.isNaN(w.cpuS) && Number.isNaN(w.peakRssBytes))
})

test('a pooler of two processes costs both', () => {
  const one = startWindow([process.pid]).stop()
  const two = startWindow([process.pid, process.pid]).stop()
  // the same process counted twice: twice its peak, within what moved meanwhile
  assert.ok(two.peakRssBytes > 1.8 * one.peakRssBytes, `${two.peakRssBytes} vs ${one.peakRssBytes}`)
  assert.ok(Number.isNaN(startWindow([]).stop().cpuS))
})
