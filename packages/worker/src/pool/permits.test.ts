import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { Semaphore } from '@pgbouncer-cluster/protocol/semaphore'
import fc from 'fast-check'
import { PERMIT_DATABASE, PERMIT_POOL, PERMIT_USER, Permits } from './permits.ts'

const HOLDERS = 4

function semaphores(): [Semaphore, Semaphore, Semaphore] {
  const words = Semaphore.words(HOLDERS)
  const i32 = new Int32Array(new SharedArrayBuffer(words * 3 * 4))
  return [
    new Semaphore(i32, 0, HOLDERS),
    new Semaphore(i32, words, HOLDERS),
    new Semaphore(i32, 2 * words, HOLDERS),
  ]
}

describe('a pool’s permits (invariant 1)', () => {
  test('the pool’s permit alone while the database and user are not limited', () => {
    const [pool, db, user] = semaphores()
    const permits = new Permits(pool, db, user, 1)
    assert.equal(permits.take(2, 0, 0), PERMIT_POOL)
    assert.equal(permits.take(2, 0, 0), PERMIT_POOL)
    assert.equal(permits.take(2, 0, 0), 0)
    assert.equal(permits.refusedBy, PERMIT_POOL)
    assert.equal(permits.used(), 2)
    assert.equal(permits.held(), 2)
    assert.equal(db.used(), 0)
    assert.equal(user.used(), 0)
  })

  test('a refusal by the database or the user gives back what was taken before it', () => {
    const [pool, db, user] = semaphores()
    const a = new Permits(pool, db, user, 1)
    assert.equal(a.take(5, 1, 2), PERMIT_POOL | PERMIT_DATABASE | PERMIT_USER)
    assert.equal(a.take(5, 1, 2), 0)
    assert.equal(a.refusedBy, PERMIT_DATABASE)
    assert.equal(pool.used(), 1, 'the pool permit taken before the refusal went back')
    assert.equal(a.semaphore(a.refusedBy), db)
    // Another pool of the same database with a larger database limit, stopped by the user's.
    const [pool2] = semaphores()
    const b = new Permits(pool2, db, user, 2)
    assert.equal(b.take(5, 3, 1), 0)
    assert.equal(b.refusedBy, PERMIT_USER)
    assert.equal(pool2.used(), 0)
    assert.equal(db.used(), 1, 'the database permit taken before the refusal went back')
    assert.equal(b.semaphore(PERMIT_USER), user)
  })

  test('a server gives back exactly the permits its mask names', () => {
    const [pool, db, user] = semaphores()
    const permits = new Permits(pool, db, user, 3)
    const mask = permits.take(3, 2, 0)
    assert.equal(mask, PERMIT_POOL | PERMIT_DATABASE)
    permits.release(mask)
    assert.equal(pool.used(), 0)
    assert.equal(db.used(), 0)
    assert.equal(user.used(), 0)
    assert.equal(permits.held(), 0)
  })

  test('no mix of takes and releases, by several workers, goes past a limit or loses a permit', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 4 }),
        fc.integer({ min: 0, max: 4 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: HOLDERS - 1 }), fc.boolean()), {
          maxLength: 60,
        }),
        (poolLimit, maxDb, maxUser, steps) => {
          const [pool, db, user] = semaphores()
          const workers = [0, 1, 2, 3].map((id) => new Permits(pool, db, user, id))
          const held: number[][] = [[], [], [], []]
          for (const [w, take] of steps) {
            if (take) {
              const mask = workers[w]!.take(poolLimit, maxDb, maxUser)
              if (mask !== 0) held[w]!.push(mask)
            } else if (held[w]!.length > 0) workers[w]!.release(held[w]!.pop()!)
            const servers = held.flat()
            assert.ok(pool.used() <= poolLimit)
            if (maxDb > 0) assert.ok(db.used() <= maxDb)
            if (maxUser > 0) assert.ok(user.used() <= maxUser)
            assert.equal(pool.used(), servers.length)
            assert.equal(db.used(), servers.filter((m) => m & PERMIT_DATABASE).length)
            assert.equal(user.used(), servers.filter((m) => m & PERMIT_USER).length)
          }
          for (let w = 0; w < 4; w++) for (const mask of held[w]!) workers[w]!.release(mask)
          assert.equal(pool.used() + db.used() + user.used(), 0)
        },
      ),
    )
  })

  test('a limit another pool waits at is seen from here', async () => {
    const [pool, db, user] = semaphores()
    const permits = new Permits(pool, db, user, 1)
    assert.equal(permits.waitingLimits(), 0)
    assert.equal(permits.take(5, 1, 0), PERMIT_POOL | PERMIT_DATABASE)
    const wait = db.acquire(1, 2, { timeoutMs: 10_000 })
    assert.equal(permits.waitingLimits(), PERMIT_DATABASE)
    permits.release(PERMIT_POOL | PERMIT_DATABASE)
    assert.equal(await wait, true)
    db.release(2)
    assert.equal(permits.waitingLimits(), 0)
  })
})
