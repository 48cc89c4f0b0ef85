// The shared Semaphore under real worker threads: the limit holds under
// contention, no permit is lost when a holder is killed, and waiters that give
// up (timeout, abort) leave nothing behind.
import assert from 'node:assert/strict'
import { afterEach, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Worker } from 'node:worker_threads'
import { Semaphore } from '../src/semaphore.ts'
import type { CommandBody, HammerStats, SemaphoreWorkerData } from './fixtures/semaphore-worker.ts'

const FIXTURE = new URL('./fixtures/semaphore-worker.ts', import.meta.url)
const MAX_HOLDERS = 8
const MAIN = MAX_HOLDERS - 1 // the test thread's own holder id
const CS_WORD = 0
const BASE = 16

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void }

class Thread {
  readonly worker: Worker
  readonly holder: number
  #nextId = 0
  readonly #pending = new Map<number, Pending>()

  constructor(sab: SharedArrayBuffer, holder: number) {
    const workerData: SemaphoreWorkerData = {
      sab,
      base: BASE,
      maxHolders: MAX_HOLDERS,
      holder,
      csWord: CS_WORD,
    }
    this.holder = holder
    this.worker = new Worker(FIXTURE, { workerData })
    this.worker.on('message', (m: { id: number; result?: unknown; error?: string }) => {
      const p = this.#pending.get(m.id)
      this.#pending.delete(m.id)
      if (m.error !== undefined) p?.reject(new Error(m.error))
      else p?.resolve(m.result)
    })
    this.worker.on('error', (err) => {
      for (const p of this.#pending.values()) p.reject(err)
    })
    threads.push(this)
  }

  send<T>(cmd: CommandBody): Promise<T> {
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.worker.postMessage({ ...cmd, id })
    })
  }
}

const threads: Thread[] = []

afterEach(async () => {
  await Promise.all(threads.splice(0).map((t) => t.worker.terminate()))
})

function setup(): { sab: SharedArrayBuffer; sem: Semaphore } {
  const sab = new SharedArrayBuffer((BASE + Semaphore.words(MAX_HOLDERS)) * 4)
  return { sab, sem: new Semaphore(new Int32Array(sab), BASE, MAX_HOLDERS) }
}

function ledger(sem: Semaphore): number[] {
  return Array.from({ length: MAX_HOLDERS }, (_, h) => sem.held(h))
}

async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = performance.now() + ms
  while (!cond()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting until ${what}`)
    await sleep(2)
  }
}

describe('Semaphore across worker threads', { timeout: 15_000 }, () => {
  it('4 threads hammering never exceed the limit and leave everything at 0', async () => {
    const limit = 3
    const { sab, sem } = setup()
    const workers = [0, 1, 2, 3].map((h) => new Thread(sab, h))
    const stats = await Promise.all(
      workers.map((t) => t.send<HammerStats>({ op: 'hammer', limit, durationMs: 2_000 })),
    )
    const acquired = stats.reduce((n, s) => n + s.acquired, 0)
    assert.ok(acquired > 200, `only ${acquired} acquisitions`)
    assert.ok(
      stats.some((s) => s.contendedAcquired > 0),
      'no acquire() ever had to wait: no contention tested',
    )
    for (const s of stats) {
      assert.ok(s.maxUsed <= limit, `used reached ${s.maxUsed}`)
      assert.ok(s.maxInCs <= limit, `${s.maxInCs} threads inside at once`)
    }
    assert.equal(Math.max(...stats.map((s) => s.maxUsed)), limit, 'the pool never filled up')
    assert.equal(sem.used(), 0)
    assert.equal(sem.waiters(), 0)
    assert.deepEqual(ledger(sem), Array(MAX_HOLDERS).fill(0))
    assert.equal(new Int32Array(sab)[CS_WORD], 0)
  })

  it('reclaim returns the permits of a terminated thread to waiting threads', async () => {
    const limit = 3
    const { sab, sem } = setup()
    const doomed = new Thread(sab, 0)
    const heir = new Thread(sab, 1)
    for (let i = 0; i < limit; i++) {
      assert.equal(await doomed.send({ op: 'tryAcquire', limit }), true)
    }
    const waiting = heir.send<{ ok: boolean; elapsedMs: number }>({
      op: 'acquire',
      limit,
      timeoutMs: 5_000,
    })
    await until('the heir waits', () => sem.waiters() === 1)
    await doomed.worker.terminate()
    assert.equal(sem.used(), limit, 'a dead thread keeps its permits until reclaimed')
    assert.equal(sem.held(0), limit)
    assert.equal(sem.reclaim(0), limit)
    const got = await waiting
    assert.equal(got.ok, true)
    assert.ok(got.elapsedMs < 4_000, 'woken by reclaim, not by its timeout')
    for (let i = 1; i < limit; i++) {
      assert.equal(await heir.send({ op: 'tryAcquire', limit }), true)
    }
    assert.equal(await heir.send({ op: 'tryAcquire', limit }), false)
    assert.deepEqual(ledger(sem), [0, limit, 0, 0, 0, 0, 0, 0])
    await heir.send({ op: 'release', n: limit })
    assert.equal(sem.used(), 0)
    assert.equal(sem.waiters(), 0)
  })

  it('a thread killed in the middle of hammering loses no permit once reclaimed', async () => {
    const limit = 2
    const { sab, sem } = setup()
    const survivors = [1, 2, 3].map((h) => new Thread(sab, h))
    const victim = new Thread(sab, 0)
    const runs = survivors.map((t) =>
      t.send<HammerStats>({ op: 'hammer', limit, durationMs: 1_200 }),
    )
    victim.send({ op: 'hammer', limit, durationMs: 5_000 }).catch(() => {})
    await sleep(400)
    await victim.worker.terminate()
    sem.reclaim(0)
    const stats = await Promise.all(runs)
    assert.ok(
      stats.every((s) => s.acquired > 0),
      'survivors kept acquiring',
    )
    assert.equal(sem.used(), 0)
    assert.equal(sem.waiters(), 0)
    assert.deepEqual(ledger(sem), Array(MAX_HOLDERS).fill(0))
  })

  it('waiters time out cleanly and an aborted waiter does not swallow a wake-up', async () => {
    const limit = 2
    const { sab, sem } = setup()
    for (let i = 0; i < limit; i++) assert.equal(sem.tryAcquire(limit, MAIN), true)

    const [a, b] = [new Thread(sab, 0), new Thread(sab, 1)]
    const timedOut = await Promise.all(
      [a, b].map((t) =>
        t.send<{ ok: boolean; elapsedMs: number }>({ op: 'acquire', limit, timeoutMs: 100 }),
      ),
    )
    for (const r of timedOut) {
      assert.equal(r.ok, false)
      assert.ok(r.elapsedMs >= 90, `gave up after ${r.elapsedMs} ms`)
    }
    assert.equal(sem.waiters(), 0)
    assert.equal(sem.used(), limit)

    // `a` parks first and is aborted; `b` parks behind it. The release's one
    // notify goes to a's abandoned waitAsync, which must pass it on to b.
    const aborted = a.send({ op: 'acquire', limit, abortable: true })
    await until('a waits', () => sem.waiters() === 1)
    const next = b.send<{ ok: boolean; elapsedMs: number }>({
      op: 'acquire',
      limit,
      timeoutMs: 5_000,
    })
    await until('b waits', () => sem.waiters() === 2)
    await a.send({ op: 'abort' })
    await assert.rejects(aborted, /aborted by test/)
    assert.equal(sem.waiters(), 1)
    assert.equal(sem.held(0), 0)
    sem.release(MAIN)
    const got = await next
    assert.equal(got.ok, true)
    assert.ok(got.elapsedMs < 4_000, 'b woken through the pass, not by its timeout')
    assert.equal(sem.waiters(), 0)
    assert.deepEqual(ledger(sem), [0, 1, 0, 0, 0, 0, 0, 1])
  })
})
