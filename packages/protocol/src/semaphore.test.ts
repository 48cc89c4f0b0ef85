import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Semaphore, SemaphoreError } from './semaphore.ts'

const HOLDERS = 4

function make(base = 3): Semaphore {
  const words = base + Semaphore.words(HOLDERS) + 2
  return new Semaphore(new Int32Array(new SharedArrayBuffer(words * 4)), base, HOLDERS)
}

function ledger(sem: Semaphore): number[] {
  return Array.from({ length: HOLDERS }, (_, h) => sem.held(h))
}

describe('Semaphore', () => {
  it('never hands out more than the limit and keeps a ledger per holder', () => {
    const sem = make()
    assert.equal(sem.tryAcquire(3, 0), true)
    assert.equal(sem.tryAcquire(3, 2), true)
    assert.equal(sem.tryAcquire(3, 2), true)
    assert.equal(sem.tryAcquire(3, 1), false)
    assert.equal(sem.used(), 3)
    assert.deepEqual(ledger(sem), [1, 0, 2, 0])
    // A caller allowed the reserve pool goes one further; the others do not.
    assert.equal(sem.tryAcquire(4, 1), true)
    assert.equal(sem.tryAcquire(4, 1), false)
    assert.equal(sem.tryAcquire(3, 3), false)
    sem.release(2, 2)
    assert.deepEqual(ledger(sem), [1, 1, 0, 0])
    assert.equal(sem.used(), 2)
  })

  it('clear() zeroes a semaphore nobody counts on, and refuses one with a permit or a waiter', async () => {
    const sem = make()
    assert.equal(sem.tryAcquire(2, 1), true)
    assert.equal(sem.clear(), false)
    assert.deepEqual(ledger(sem), [0, 1, 0, 0])
    sem.release(1)
    const waiting = sem.acquire(0, 2, { timeoutMs: 50 })
    assert.equal(sem.clear(), false, 'cleared under a waiter')
    assert.equal(await waiting, false)
    assert.equal(sem.clear(), true)
    assert.equal(sem.used(), 0)
    assert.equal(sem.waiters(), 0)
  })

  it('reclaim() of a holder with nothing leaves the words unwritten', () => {
    const i32 = new Int32Array(new SharedArrayBuffer(Semaphore.words(HOLDERS) * 4))
    const sem = new Semaphore(i32, 0, HOLDERS)
    assert.equal(sem.tryAcquire(5, 0), true)
    const before = Array.from(i32)
    assert.equal(sem.reclaim(1), 0)
    assert.deepEqual(Array.from(i32), before)
  })

  it('refuses a zero or NaN limit', () => {
    const sem = make()
    assert.equal(sem.tryAcquire(0, 0), false)
    assert.equal(sem.tryAcquire(Number.NaN, 0), false)
    assert.equal(sem.used(), 0)
  })

  it('does not touch words outside its own', () => {
    const i32 = new Int32Array(new SharedArrayBuffer((2 + Semaphore.words(HOLDERS)) * 4))
    const sem = new Semaphore(i32, 1, HOLDERS)
    sem.tryAcquire(5, HOLDERS - 1)
    assert.equal(i32[0], 0)
    assert.equal(i32.at(-1), 0)
    // used, waiters, lock, journal (used, ledger before the update), ledgers, waiter shares
    assert.deepEqual(Array.from(i32.subarray(1, -1)), [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
  })

  it('rejects a release beyond what the holder holds, and bad holders', () => {
    const sem = make()
    sem.tryAcquire(2, 1)
    assert.throws(() => sem.release(0), { code: 'ERR_SEMAPHORE' })
    assert.throws(() => sem.release(1, 2), SemaphoreError)
    assert.throws(() => sem.tryAcquire(2, HOLDERS), { code: 'ERR_SEMAPHORE' })
    assert.throws(() => sem.held(-1), { code: 'ERR_SEMAPHORE' })
    assert.throws(() => new Semaphore(new Int32Array(4), 0, 1), { code: 'ERR_SEMAPHORE' })
    assert.throws(() => new Semaphore(new Int32Array(new SharedArrayBuffer(8)), 0, 1), {
      code: 'ERR_SEMAPHORE',
    })
    assert.equal(sem.used(), 1)
  })

  it('wakes a waiter on release and the waiter takes the permit', async () => {
    const sem = make()
    assert.equal(sem.tryAcquire(1, 0), true)
    const waiting = sem.acquire(1, 1, { timeoutMs: 5_000 })
    assert.equal(sem.waiters(), 1)
    const started = performance.now()
    setTimeout(() => sem.release(0), 20)
    assert.equal(await waiting, true)
    assert.ok(performance.now() - started < 2_000, 'woken by the release, not the timeout')
    assert.deepEqual(ledger(sem), [0, 1, 0, 0])
    assert.equal(sem.waiters(), 0)
  })

  it('wakes one waiter per released permit', async () => {
    const sem = make()
    sem.tryAcquire(2, 0)
    sem.tryAcquire(2, 0)
    const results: boolean[] = []
    const waits = [1, 2, 3].map((h) =>
      sem.acquire(2, h, { timeoutMs: 300 }).then((ok) => results.push(ok)),
    )
    setTimeout(() => sem.release(0, 2), 10)
    await Promise.all(waits)
    assert.deepEqual(results.sort(), [false, true, true])
    assert.equal(sem.used(), 2)
    assert.equal(sem.held(0), 0)
    assert.equal(sem.waiters(), 0)
  })

  it('acquire times out with false and leaves no waiter behind', async () => {
    const sem = make()
    sem.tryAcquire(1, 0)
    const started = performance.now()
    assert.equal(await sem.acquire(1, 1, { timeoutMs: 50 }), false)
    const elapsed = performance.now() - started
    assert.ok(elapsed >= 45 && elapsed < 2_000, `waited ${elapsed} ms`)
    assert.equal(sem.waiters(), 0)
    assert.equal(sem.held(1), 0)
    assert.equal(await sem.acquire(1, 1, { timeoutMs: 0 }), false)
    assert.equal(sem.used(), 1)
  })

  it('abort rejects with the reason, leaves waiters at 0, and loses no wake-up', async () => {
    const sem = make()
    sem.tryAcquire(1, 0)
    const ac = new AbortController()
    const aborted = sem.acquire(1, 1, { signal: ac.signal })
    // Queued behind the aborted one on the same word: the release's single
    // notify goes to the abandoned waitAsync first and must be passed on.
    const next = sem.acquire(1, 2, { timeoutMs: 3_000 })
    assert.equal(sem.waiters(), 2)
    const reason = new Error('client went away')
    ac.abort(reason)
    await assert.rejects(aborted, (err) => err === reason)
    assert.equal(sem.waiters(), 1)
    const started = performance.now()
    sem.release(0)
    assert.equal(await next, true)
    assert.ok(performance.now() - started < 1_000, 'woken through the pass, not by its timeout')
    assert.equal(sem.waiters(), 0)
    assert.deepEqual(ledger(sem), [0, 0, 1, 0])
  })

  it('an already aborted signal rejects before taking anything', async () => {
    const sem = make()
    const reason = new Error('too late')
    await assert.rejects(
      sem.acquire(5, 0, { signal: AbortSignal.abort(reason) }),
      (e) => e === reason,
    )
    assert.equal(sem.used(), 0)
    assert.equal(sem.waiters(), 0)
  })

  it('passes a wake-up on to a waiter with a larger limit (reserve pool)', async () => {
    const sem = make()
    for (let i = 0; i < 3; i++) sem.tryAcquire(3, 0) // pool_size 3 full, reserve 1 in use below
    sem.tryAcquire(4, 0)
    const normal = sem.acquire(3, 1, { timeoutMs: 400 }) // queued first, cannot use used=3
    const reserve = sem.acquire(4, 2, { timeoutMs: 3_000 })
    const started = performance.now()
    sem.release(0) // used 4 → 3: one notify, reaches `normal` first
    assert.equal(await reserve, true)
    assert.ok(performance.now() - started < 300, 'reserve waiter woken by the pass, not later')
    assert.equal(await normal, false)
    assert.equal(sem.waiters(), 0)
  })

  it('reclaim returns every permit of a holder and wakes waiters', async () => {
    const sem = make()
    sem.tryAcquire(3, 1)
    sem.tryAcquire(3, 1)
    sem.tryAcquire(3, 2)
    const waiting = sem.acquire(3, 3, { timeoutMs: 3_000 })
    assert.equal(sem.reclaim(1), 2)
    assert.equal(await waiting, true)
    assert.deepEqual(ledger(sem), [0, 0, 1, 1])
    assert.equal(sem.used(), 2)
    assert.equal(sem.reclaim(1), 0)
    assert.equal(sem.used(), 2)
  })

  it("reclaim takes a dead holder's parked acquire off the waiter count", async () => {
    const sem = make()
    assert.equal(sem.tryAcquire(1, 0), true)
    // Holder 2 parks; it "dies" (the promise is abandoned, as a terminated thread's would be).
    void sem.acquire(1, 2, { timeoutMs: 60_000 })
    await new Promise((r) => setImmediate(r))
    assert.equal(sem.waiters(), 1)
    assert.equal(sem.reclaim(2), 0)
    assert.equal(sem.waiters(), 0)
  })
})
