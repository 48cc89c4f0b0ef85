import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ControlMessage } from '@pgbouncer-cluster/protocol/control'
import {
  BreakerState,
  createSharedMemory,
  SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import pino from 'pino'
import { BREAKER_THRESHOLD, Breakers } from './breaker.ts'

const LAYOUT = { maxWorkers: 4, maxPools: 8, maxDatabases: 4, maxUsers: 4 }

function setup(retrySeconds = 60) {
  const coordinator = new SharedMemory(createSharedMemory(LAYOUT))
  const worker = new SharedMemory(coordinator.sab) // what a worker thread sees
  const sent: ControlMessage[] = []
  const breakers = new Breakers({
    shared: coordinator,
    log: pino({ level: 'silent' }),
    retrySeconds: () => retrySeconds,
    broadcast: (msg) => void sent.push(msg),
  })
  return { breakers, sent, words: worker.breaker(1), other: worker.breaker(2) }
}

const refused: [string, string] = [
  '08006',
  'pgbouncer cannot connect to server at 127.0.0.1:5432: connection refused',
]

describe('circuit breakers', () => {
  it('open after BREAKER_THRESHOLD failures in a row, with the last error broadcast first', () => {
    const { breakers, sent, words, other } = setup()
    for (let i = 1; i < BREAKER_THRESHOLD; i++) {
      breakers.loginFailed(1, 'app', '28P01', `attempt ${i}`)
      assert.equal(words.state(), BreakerState.closed)
      assert.equal(words.failures(), i)
    }
    breakers.loginFailed(1, 'app', '28P01', 'password authentication failed for user "app"')
    assert.equal(words.state(), BreakerState.open)
    assert.deepEqual(sent, [
      {
        type: 'breaker',
        database: 'app',
        seq: 1,
        sqlstate: '28P01',
        message: 'password authentication failed for user "app"',
      },
    ])
    assert.equal(words.lastErrorSeq(), 1)
    assert.equal(other.state(), BreakerState.closed, 'another database was affected')
    assert.deepEqual(breakers.messages(), sent)
    breakers.close()
  })

  it('a success in between starts the count again', () => {
    const { breakers, words } = setup()
    for (let i = 0; i < BREAKER_THRESHOLD - 1; i++) breakers.loginFailed(1, 'app', ...refused)
    breakers.loginSucceeded(1, 'app')
    assert.equal(words.failures(), 0)
    for (let i = 0; i < BREAKER_THRESHOLD - 1; i++) breakers.loginFailed(1, 'app', ...refused)
    assert.equal(words.state(), BreakerState.closed)
    breakers.close()
  })

  it('after server_login_retry exactly one worker claims the probe; its outcome decides', async () => {
    const { breakers, sent, words } = setup(0.05)
    for (let i = 0; i < BREAKER_THRESHOLD; i++) breakers.loginFailed(1, 'app', ...refused)
    assert.equal(words.claimProbe(), false, 'a probe while open')
    await new Promise((r) => setTimeout(r, 80))
    assert.equal(words.state(), BreakerState.halfOpen)
    assert.equal(words.claimProbe(), true)
    assert.equal(words.claimProbe(), false, 'two probes')
    assert.equal(words.state(), BreakerState.probing)
    // The probe fails: open again, with the newer error under a newer sequence number.
    breakers.loginFailed(1, 'app', '57P03', 'the database system is starting up')
    assert.equal(words.state(), BreakerState.open)
    assert.equal(sent.length, 2)
    assert.deepEqual(sent[1], {
      type: 'breaker',
      database: 'app',
      seq: 2,
      sqlstate: '57P03',
      message: 'the database system is starting up',
    })
    await new Promise((r) => setTimeout(r, 80))
    assert.equal(words.claimProbe(), true)
    breakers.loginSucceeded(1, 'app')
    assert.equal(words.state(), BreakerState.closed)
    assert.equal(words.failures(), 0)
    assert.deepEqual(breakers.messages(), [])
    breakers.close()
  })

  it('a probe whose worker died is given to another worker', async () => {
    const { breakers, words } = setup(0.01)
    for (let i = 0; i < BREAKER_THRESHOLD; i++) breakers.loginFailed(1, 'app', ...refused)
    await new Promise((r) => setTimeout(r, 40))
    assert.equal(words.claimProbe(), true)
    breakers.workerDied()
    assert.equal(words.state(), BreakerState.halfOpen)
    assert.equal(words.claimProbe(), true)
    breakers.close()
  })

  it('reset (a reload) closes open breakers and forgets failures', () => {
    const { breakers, words } = setup()
    for (let i = 0; i < BREAKER_THRESHOLD; i++) breakers.loginFailed(1, 'app', ...refused)
    assert.deepEqual([...breakers.databases()], ['app'])
    breakers.reset(['app'])
    assert.equal(words.state(), BreakerState.closed)
    assert.equal(words.failures(), 0)
    breakers.close()
  })

  it('host list: one dead host never opens the database breaker while another answers', async () => {
    const { breakers, sent, words } = setup(0.05)
    const a = { index: 0, count: 2 }
    const b = { index: 1, count: 2 }
    for (let i = 0; i < BREAKER_THRESHOLD * 3; i++) breakers.loginFailed(1, 'app', ...refused, a)
    assert.equal(words.hostState(0), BreakerState.open, 'host a is skipped')
    assert.equal(words.hostState(1), BreakerState.closed)
    assert.equal(words.state(), BreakerState.closed, 'the database stays closed')
    assert.equal(words.failures(), 0)
    assert.deepEqual(sent, [])
    breakers.loginSucceeded(1, 'app', b)
    // After server_login_retry host a is half-open: the next login to it probes.
    await new Promise((r) => setTimeout(r, 150))
    assert.equal(words.hostState(0), BreakerState.halfOpen)
    assert.equal(words.claimHostProbe(0), true)
    breakers.loginFailed(1, 'app', ...refused, a)
    assert.equal(words.hostState(0), BreakerState.open, 'a failed probe: down again')
    await new Promise((r) => setTimeout(r, 150))
    assert.equal(words.claimHostProbe(0), true)
    breakers.loginSucceeded(1, 'app', a)
    assert.equal(words.hostState(0), BreakerState.closed, 'host a is back')
    breakers.close()
  })

  it('host list: with every host down, failures count toward the database breaker', () => {
    const { breakers, sent, words } = setup()
    breakers.loginFailed(1, 'app', ...refused, { index: 0, count: 2 })
    breakers.loginFailed(1, 'app', ...refused, { index: 1, count: 2 })
    assert.equal(words.failures(), 1, 'the first failure with no host left counts')
    for (let i = 1; i < BREAKER_THRESHOLD; i++)
      breakers.loginFailed(1, 'app', ...refused, { index: i % 2, count: 2 })
    assert.equal(words.state(), BreakerState.open)
    assert.equal(sent.length, 1)
    // One host answers again: host and database close together.
    breakers.loginSucceeded(1, 'app', { index: 1, count: 2 })
    assert.equal(words.state(), BreakerState.closed)
    assert.equal(words.hostState(1), BreakerState.closed)
    assert.equal(words.hostState(0), BreakerState.open, 'the other host keeps its cool-down')
    // A reload that changes the database forgets every host's failures.
    breakers.reset(['app'])
    assert.equal(words.hostState(0), BreakerState.closed)
    breakers.close()
  })

  it('host list: a worker that died holding a host probe lets another worker probe', () => {
    const { breakers, words } = setup()
    breakers.loginFailed(1, 'app', ...refused, { index: 1, count: 3 })
    words.setHostState(1, BreakerState.halfOpen)
    assert.equal(words.claimHostProbe(1), true)
    breakers.workerDied()
    assert.equal(words.hostState(1), BreakerState.halfOpen)
    breakers.close()
  })
})
