import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ControlMessage, ControlOf } from '@pgbouncer-cluster/protocol/control'
import { Counter } from '@pgbouncer-cluster/protocol/counters'
import { Latency } from '@pgbouncer-cluster/protocol/latency'
import {
  BreakerState,
  createSharedMemory,
  SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import pino from 'pino'
import { PoolSlots } from './pool-slots.ts'
import { SlotRegistry } from './registry.ts'

// The coordinator's side of slot reuse, with the workers played by the test:
// what is asked of them, what their answers do, and what a freed slot looks
// like when it is given again. Real shared memory, no threads.

const LAYOUT = { maxPools: 4, maxDatabases: 2, maxUsers: 2 }

function setup(opts: { workers?: number[]; configured?: string[]; idleTimeout?: number } = {}) {
  // One database slot past the table, for the console, as cluster.ts makes it.
  const shared = new SharedMemory(
    createSharedMemory({ ...LAYOUT, maxDatabases: LAYOUT.maxDatabases + 1, maxWorkers: 2 }),
  )
  const registry = new SlotRegistry(LAYOUT)
  const sent: { worker: number; msg: ControlMessage }[] = []
  const forgotten: string[] = []
  let workers = opts.workers ?? [0, 1]
  const slots = new PoolSlots({
    registry,
    shared,
    log: pino({ level: 'silent' }),
    configured: (name) => (opts.configured ?? []).includes(name),
    console: (name) => name === 'pgbouncer',
    paused: () => false,
    idleTimeout: () => opts.idleTimeout ?? 10,
    workers: () => workers,
    send: (worker, msg) => void sent.push({ worker, msg }),
    released: (name) => void forgotten.push(name),
  })
  slots.close()
  const ask = (database: string, user = 'u', worker = 0) =>
    slots.request({ type: 'pool-slot-request', worker, database, user })
  const take = <T extends ControlMessage['type']>(type: T) => {
    const out = sent.filter((s) => s.msg.type === type)
    for (const s of out) sent.splice(sent.indexOf(s), 1)
    return out as { worker: number; msg: ControlOf<T> }[]
  }
  const answer = (database: string, released: number, worker: number) =>
    slots.onReleased({
      type: 'databases-released',
      worker,
      released: released ? [database] : [],
      kept: released ? [] : [database],
    })
  return {
    shared,
    registry,
    slots,
    sent,
    forgotten,
    ask,
    take,
    answer,
    setWorkers: (w: number[]) => {
      workers = w
    },
  }
}

describe('pool slots: freeing automatic databases', () => {
  it("counts the console's clients past the database table: it takes no database's slot", () => {
    const { slots, ask, take, registry } = setup()
    slots.request({ type: 'client-slot-request', worker: 0, database: 'pgbouncer', user: 'u' })
    const [console] = take('client-slot')
    assert.equal(console!.msg.databaseSlot, LAYOUT.maxDatabases)
    assert.equal(registry.database('pgbouncer'), undefined)
    // Both database slots are still there for databases.
    ask('a')
    ask('b')
    assert.deepEqual(
      take('pool-slot').map((s) => s.msg.database),
      ['a', 'b'],
    )
  })

  it('answers a request with the slots, the same ones each time', () => {
    const { ask, take } = setup()
    ask('a')
    ask('a', 'u', 1)
    const [first, second] = take('pool-slot')
    assert.deepEqual(first!.msg, {
      type: 'pool-slot',
      database: 'a',
      user: 'u',
      pool: 0,
      databaseSlot: 0,
      userSlot: 0,
    })
    assert.equal(second!.worker, 1)
    assert.deepEqual({ ...second!.msg }, { ...first!.msg })
  })

  it('after autodb_idle_timeout unused, asks every worker to let go; frees and zeroes the slots once all did', () => {
    const { shared, registry, slots, ask, take, answer, forgotten } = setup({ idleTimeout: 10 })
    ask('a')
    take('pool-slot')
    // What the database's slots held while it was used.
    shared.counters.add(0, 1, Counter.handovers, 3)
    shared.histograms.record(0, 1, Latency.query, 500)
    shared.breaker(0).setError('3D000', 'database "a" does not exist')
    shared.breaker(0).setState(BreakerState.open)
    slots.sweep(1000)
    slots.sweep(5000)
    assert.equal(take('release-databases').length, 0, 'released before autodb_idle_timeout')
    slots.sweep(11_000)
    const asked = take('release-databases')
    assert.deepEqual(
      asked.map((s) => [s.worker, s.msg.databases]),
      [
        [0, ['a']],
        [1, ['a']],
      ],
    )
    answer('a', 1, 0)
    assert.ok(registry.database('a'), 'freed before every worker let go')
    answer('a', 1, 1)
    assert.equal(registry.database('a'), undefined)
    assert.deepEqual(forgotten, ['a'])
    assert.equal(shared.counters.read(0, 1, Counter.handovers), 0)
    assert.equal(shared.histograms.snapshot(0, Latency.query).cumulative.at(-1), 0)
    assert.equal(shared.breaker(0).state(), BreakerState.closed)
    assert.equal(shared.breaker(0).error(), null)
    // The slots go to the next database.
    ask('b', 'v')
    assert.deepEqual(
      take('pool-slot').map((s) => [s.msg.pool, s.msg.databaseSlot, s.msg.userSlot]),
      [[0, 0, 0]],
    )
  })

  it('keeps a database one worker still uses; the others ask for its slots again', () => {
    const { registry, slots, ask, take, answer } = setup({ idleTimeout: 1 })
    ask('a')
    take('pool-slot')
    slots.sweep(1000)
    slots.sweep(3000)
    assert.equal(take('release-databases').length, 2)
    ask('a', 'u', 0) // a login on worker 0 meanwhile: held until the release is over
    assert.equal(take('pool-slot').length, 0)
    answer('a', 1, 0)
    answer('a', 0, 1)
    assert.ok(registry.database('a'))
    assert.equal(registry.database('a')!.idleSince, 0)
    const [held] = take('pool-slot')
    assert.equal(held!.worker, 0)
    assert.equal(held!.msg.databaseSlot, registry.database('a')!.slot)
  })

  it('never frees a database something counts in shared memory, nor one of [databases]', () => {
    const { shared, slots, ask, take } = setup({ idleTimeout: 1, configured: ['fixed'] })
    ask('a')
    ask('fixed')
    const [a] = take('pool-slot')
    shared.databaseClients(a!.msg.databaseSlot).tryAcquire(100, 1) // a client of worker 1
    slots.sweep(1000)
    slots.sweep(5000)
    assert.equal(take('release-databases').length, 0)
    shared.databaseClients(a!.msg.databaseSlot).release(1)
    shared.pool(a!.msg.pool).tryAcquire(1, 0) // a server (or one closing)
    slots.sweep(6000)
    slots.sweep(9000)
    assert.equal(take('release-databases').length, 0)
    shared.pool(a!.msg.pool).release(0)
    slots.sweep(10_000)
    slots.sweep(12_000)
    assert.deepEqual(
      take('release-databases').flatMap((s) => s.msg.databases),
      ['a', 'a'],
    )
  })

  it('databases due together are asked for in one message per worker', () => {
    const { registry, slots, ask, take, answer } = setup({ idleTimeout: 1 })
    ask('a')
    ask('b')
    take('pool-slot')
    slots.sweep(1000)
    slots.sweep(3000)
    assert.deepEqual(
      take('release-databases').map((s) => s.msg.databases),
      [
        ['a', 'b'],
        ['a', 'b'],
      ],
    )
    for (const worker of [0, 1]) {
      slots.onReleased({ type: 'databases-released', worker, released: ['a'], kept: ['b'] })
    }
    assert.equal(registry.database('a'), undefined)
    assert.ok(registry.database('b'))
    answer('b', 1, 0) // a late or repeated answer changes nothing
    assert.ok(registry.database('b'))
  })

  it('a worker that never answers keeps the database; the logins held meanwhile are served', () => {
    const { registry, slots, ask, take, answer } = setup({ idleTimeout: 1 })
    ask('a')
    take('pool-slot')
    slots.sweep(1000)
    slots.sweep(3000)
    take('release-databases')
    answer('a', 1, 0)
    ask('a', 'u', 0)
    assert.equal(take('pool-slot').length, 0)
    slots.sweep(Date.now() + 6000)
    assert.ok(registry.database('a'))
    assert.equal(take('pool-slot').length, 1)
  })

  it('a worker that dies while asked counts as having let go', () => {
    const { registry, slots, ask, take, answer, setWorkers } = setup({ idleTimeout: 1 })
    ask('a')
    take('pool-slot')
    slots.sweep(1000)
    slots.sweep(3000)
    take('release-databases')
    answer('a', 1, 0)
    setWorkers([0])
    slots.workerGone(1)
    assert.equal(registry.database('a'), undefined)
  })

  it('tables full: an unused automatic database is freed at once for a new one; with none, the login is refused', () => {
    const { shared, registry, ask, take, answer } = setup({ idleTimeout: 0 })
    ask('a')
    ask('b')
    const [a, b] = take('pool-slot')
    // Both in use: the third database has no slot.
    shared.databaseClients(a!.msg.databaseSlot).tryAcquire(100, 0)
    shared.databaseClients(b!.msg.databaseSlot).tryAcquire(100, 0)
    ask('c', 'u', 1)
    const [refused] = take('pool-slot-error')
    assert.equal(refused!.worker, 1)
    assert.equal(refused!.msg.sqlstate, '53400')
    assert.equal(refused!.msg.message, 'no more databases allowed: all 2 database slots are in use')
    // b's last client leaves: it is freed for c, though autodb_idle_timeout is off.
    shared.databaseClients(b!.msg.databaseSlot).release(0)
    ask('c', 'u', 1)
    assert.equal(take('pool-slot').length, 0)
    const asked = take('release-databases')
    assert.deepEqual(
      asked.map((s) => s.msg.databases),
      [['b'], ['b']],
    )
    answer('b', 1, 0)
    answer('b', 1, 1)
    assert.equal(registry.database('b'), undefined)
    const [c] = take('pool-slot')
    assert.equal(c!.worker, 1)
    assert.equal(c!.msg.database, 'c')
    assert.equal(c!.msg.databaseSlot, b!.msg.databaseSlot)
  })
})

describe('slot registry', () => {
  it('a user slot goes with the last database that holds it', () => {
    const registry = new SlotRegistry({ maxPools: 8, maxDatabases: 4, maxUsers: 4 })
    registry.slotsFor('a', 'shared')
    registry.slotsFor('a', 'only_a')
    registry.slotsFor('b', 'shared')
    const a = registry.database('a')!
    assert.deepEqual(registry.usersOnlyOf(a), [1])
    assert.deepEqual(registry.release('a'), { databaseSlot: 0, pools: [0, 1], users: [1] })
    assert.equal(registry.lookup('b', 'shared')?.userSlot, 0)
    assert.deepEqual(registry.release('b'), { databaseSlot: 1, pools: [2], users: [0] })
    assert.deepEqual(registry.usage().users, { used: 0, max: 4 })
  })

  it('gives the slot freed last first', () => {
    const registry = new SlotRegistry({ maxPools: 8, maxDatabases: 4, maxUsers: 4 })
    for (const name of ['a', 'b', 'c']) registry.slotsFor(name, 'u')
    registry.release('a')
    registry.release('c')
    assert.deepEqual(registry.slotsFor('d', 'u'), { pool: 2, databaseSlot: 2, userSlot: 0 })
    assert.deepEqual(registry.slotsFor('e', 'u'), { pool: 0, databaseSlot: 0, userSlot: 0 })
    assert.deepEqual(registry.slotsFor('f', 'u'), { pool: 3, databaseSlot: 3, userSlot: 0 })
    assert.equal(registry.slotsFor('g', 'u'), 'databases')
  })
})
