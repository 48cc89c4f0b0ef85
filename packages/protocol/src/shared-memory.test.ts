import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Counter } from './counters.ts'
import { HostRole } from './host-role.ts'
import {
  BreakerState,
  createSharedMemory,
  MAX_HOSTS,
  type SharedLayout,
  SharedMemory,
  sharedMemoryByteLength,
} from './shared-memory.ts'

const layout: SharedLayout = { maxWorkers: 4, maxPools: 5, maxDatabases: 3, maxUsers: 2 }

describe('SharedMemory', () => {
  it('attaches from the buffer alone and reads the layout back', () => {
    const sab = createSharedMemory(layout)
    assert.equal(sab.byteLength, sharedMemoryByteLength(layout))
    assert.equal(sab.byteLength % 64, 0)
    const shm = new SharedMemory(sab)
    assert.deepEqual(shm.layout, layout)
    assert.ok(Object.isFrozen(shm.layout))
  })

  it('gives every semaphore its own words, seen alike by every attachment', () => {
    const sab = createSharedMemory(layout)
    const a = new SharedMemory(sab)
    const b = new SharedMemory(sab)
    const all = (m: SharedMemory) => [
      ...Array.from({ length: layout.maxPools }, (_, i) => m.pool(i)),
      ...Array.from({ length: layout.maxDatabases }, (_, i) => m.database(i)),
      ...Array.from({ length: layout.maxUsers }, (_, i) => m.user(i)),
    ]
    const semsA = all(a)
    semsA.forEach((sem, i) => {
      for (let k = 0; k <= i; k++) assert.equal(sem.tryAcquire(100, i % layout.maxWorkers), true)
    })
    all(b).forEach((sem, i) => {
      assert.equal(sem.used(), i + 1, `semaphore ${i}`)
      assert.equal(sem.held(i % layout.maxWorkers), i + 1)
    })
    assert.equal(a.pool(2), a.pool(2), 'cached, no allocation per call')
    // Nothing spilled into the flags, breakers or counters.
    assert.equal(a.flag('paused'), 0)
    assert.equal(a.breaker(layout.maxDatabases - 1).state(), 0)
    assert.equal(a.counters.get(0, Counter.cl_active), 0n)
  })

  it('holds flags and breaker words', () => {
    const sab = createSharedMemory(layout)
    const coordinator = new SharedMemory(sab)
    const worker = new SharedMemory(sab)
    coordinator.setFlag('paused', 1)
    assert.equal(worker.flag('paused'), 1)
    assert.equal(worker.flag('shutdown'), 0)
    coordinator.breaker(1).setState(BreakerState.open)
    assert.equal(coordinator.breaker(1).bumpErrorSeq(), 1)
    assert.equal(coordinator.breaker(1).bumpErrorSeq(), 2)
    assert.equal(worker.breaker(1).state(), BreakerState.open)
    assert.equal(worker.breaker(1).lastErrorSeq(), 2)
    assert.equal(worker.breaker(0).state(), BreakerState.closed)
    assert.equal(worker.breaker(2).lastErrorSeq(), 0)
  })

  it('keeps a state per host of a database, apart from the database and its neighbours', () => {
    const sab = createSharedMemory(layout)
    const coordinator = new SharedMemory(sab)
    const worker = new SharedMemory(sab)
    const w = worker.breaker(1)
    w.markHostDown(MAX_HOSTS - 1)
    assert.equal(coordinator.breaker(1).hostState(MAX_HOSTS - 1), BreakerState.open)
    assert.equal(coordinator.breaker(1).state(), BreakerState.closed)
    assert.equal(coordinator.breaker(2).hostState(0), BreakerState.closed)
    assert.equal(coordinator.breaker(1).error(), null, 'the error text is untouched')
    // Only closed → open: a worker never undoes the coordinator's half-open.
    coordinator.breaker(1).setHostState(0, BreakerState.halfOpen)
    w.markHostDown(0)
    assert.equal(w.hostState(0), BreakerState.halfOpen)
    assert.equal(w.claimHostProbe(0), true)
    assert.equal(w.claimHostProbe(0), false, 'one probe per half-open period')
    assert.equal(coordinator.breaker(1).hostState(0), BreakerState.probing)
    assert.throws(() => w.hostState(MAX_HOSTS), { code: 'ERR_SHARED_MEMORY' })
  })

  it('keeps a role word per host beside its breaker, apart from the other words and databases', () => {
    const sab = createSharedMemory(layout)
    const coordinator = new SharedMemory(sab)
    const w = new SharedMemory(sab).breaker(1)
    const role = HostRole.known | HostRole.standby
    w.setHostRole(MAX_HOSTS - 1, role)
    w.setHostRole(0, HostRole.known)
    assert.equal(coordinator.breaker(1).hostRole(MAX_HOSTS - 1), role)
    assert.equal(coordinator.breaker(1).hostRole(0), HostRole.known)
    assert.equal(coordinator.breaker(1).hostRole(1), HostRole.unknown)
    assert.equal(coordinator.breaker(2).hostRole(0), HostRole.unknown)
    assert.equal(coordinator.breaker(1).hostState(MAX_HOSTS - 1), BreakerState.closed)
    assert.equal(coordinator.breaker(1).clientsWait(), false)
    assert.throws(() => w.hostRole(MAX_HOSTS), { code: 'ERR_SHARED_MEMORY' })
    assert.equal(coordinator.clearDatabase(1), true)
    assert.equal(w.hostRole(MAX_HOSTS - 1), HostRole.unknown, 'a freed database forgets its roles')
  })

  it('reclaimWorker returns a dead worker’s permits everywhere and zeroes its gauges', () => {
    const shm = new SharedMemory(createSharedMemory(layout))
    shm.pool(4).tryAcquire(10, 2)
    shm.pool(4).tryAcquire(10, 1)
    shm.database(2).tryAcquire(10, 2)
    shm.user(1).tryAcquire(10, 2)
    shm.counters.add(4, 2, Counter.sv_active, 1)
    shm.counters.add(4, 2, Counter.server_connects, 1)
    assert.equal(shm.reclaimWorker(2), 3)
    assert.equal(shm.pool(4).used(), 1)
    assert.equal(shm.database(2).used(), 0)
    assert.equal(shm.user(1).used(), 0)
    assert.equal(shm.counters.get(4, Counter.sv_active), 0n)
    assert.equal(shm.counters.get(4, Counter.server_connects), 1n)
  })

  it('clearPool, clearDatabase and clearUser zero what a slot held, once nothing counts there', () => {
    const shm = new SharedMemory(
      createSharedMemory({ maxWorkers: 2, maxPools: 4, maxDatabases: 2, maxUsers: 2 }),
    )
    assert.equal(shm.pool(1).tryAcquire(5, 0), true)
    shm.counters.add(1, 1, Counter.handovers, 2)
    assert.equal(shm.clearPool(1), false, 'a permit is still taken')
    shm.pool(1).release(0)
    assert.equal(shm.clearPool(1), true)
    assert.equal(shm.counters.read(1, 1, Counter.handovers), 0)
    shm.breaker(1).setError('3D000', 'gone')
    shm.breaker(1).setState(BreakerState.open)
    shm.breaker(1).markHostDown(3)
    assert.equal(shm.databaseClients(1).tryAcquire(9, 1), true)
    assert.equal(shm.clearDatabase(1), false, 'a client is still counted')
    shm.databaseClients(1).release(1)
    assert.equal(shm.clearDatabase(1), true)
    assert.equal(shm.breaker(1).state(), BreakerState.closed)
    assert.equal(shm.breaker(1).hostState(3), BreakerState.closed)
    assert.equal(shm.breaker(1).error(), null)
    assert.equal(shm.breaker(0).state(), BreakerState.closed)
    assert.equal(shm.userClients(0).tryAcquire(1, 0), true)
    assert.equal(shm.clearUser(0), false)
    shm.userClients(0).release(0)
    assert.equal(shm.clearUser(0), true)
  })

  it('rejects bad layouts, foreign buffers and out-of-range slots', () => {
    assert.throws(() => createSharedMemory({ ...layout, maxWorkers: 65 }), {
      code: 'ERR_SHARED_MEMORY',
    })
    assert.throws(() => createSharedMemory({ ...layout, maxPools: 0 }), {
      code: 'ERR_SHARED_MEMORY',
    })
    assert.throws(() => createSharedMemory({ ...layout, maxUsers: 1.5 }), {
      code: 'ERR_SHARED_MEMORY',
    })
    assert.throws(() => new SharedMemory(new SharedArrayBuffer(4096)), /bad magic/)
    const truncated = new SharedArrayBuffer(createSharedMemory(layout).byteLength - 64)
    new Int32Array(truncated).set(new Int32Array(createSharedMemory(layout), 0, 16))
    assert.throws(() => new SharedMemory(truncated), { code: 'ERR_SHARED_MEMORY' })
    const shm = new SharedMemory(createSharedMemory(layout))
    assert.throws(() => shm.pool(layout.maxPools), { code: 'ERR_SHARED_MEMORY' })
    assert.throws(() => shm.database(-1), { code: 'ERR_SHARED_MEMORY' })
    assert.throws(() => shm.user(0.5), { code: 'ERR_SHARED_MEMORY' })
    assert.throws(() => shm.breaker(layout.maxDatabases), { code: 'ERR_SHARED_MEMORY' })
  })
})
