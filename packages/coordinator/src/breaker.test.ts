import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ControlMessage } from '@pgbouncer-cluster/protocol/control'
import {
  BreakerState,
  createSharedMemory,
  SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import { LoginFailureKind } from '@pgbouncer-cluster/worker/server-restart'
import pino from 'pino'
import { BREAKER_THRESHOLD, Breakers, FIRST_RETRY_MS } from './breaker.ts'

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

  describe('a restarting database', () => {
    const { restarting, unreachable, refused: wrong } = LoginFailureKind
    const startingUp: [string, string] = ['57P03', 'the database system is starting up']
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

    /** Opens the breaker, then fails `rounds` probes: the cool-down before each probe, in ms. */
    async function coolDowns(
      breakers: Breakers,
      words: ReturnType<typeof setup>['words'],
      rounds: number,
    ): Promise<number[]> {
      for (let i = 0; i < BREAKER_THRESHOLD; i++)
        breakers.loginFailed(1, 'app', ...startingUp, undefined, restarting)
      const out: number[] = []
      for (let round = 0; round < rounds; round++) {
        const opened = performance.now()
        await waitHalfOpen(words)
        out.push(performance.now() - opened)
        assert.equal(words.claimProbe(), true)
        breakers.loginFailed(1, 'app', ...startingUp, undefined, restarting)
      }
      return out
    }

    it('is tried again after 100 ms, then 200, 400, where server_login_retry would wait 10 s', async () => {
      const { breakers, words } = setup(10)
      const ms = await coolDowns(breakers, words, 3)
      ms.forEach((got, i) => {
        const expected = FIRST_RETRY_MS * 2 ** i
        // Late under load, never early; far from 10 s either way.
        assert.ok(
          got >= expected - 5,
          `cool-down ${i}: ${Math.round(got)} ms, expected ${expected}`,
        )
        assert.ok(got < 3000, `cool-down ${i}: ${Math.round(got)} ms, expected ${expected}`)
      })
      // A success starts the backoff over.
      await waitHalfOpen(words)
      assert.equal(words.claimProbe(), true)
      breakers.loginSucceeded(1, 'app')
      for (let i = 0; i < BREAKER_THRESHOLD; i++)
        breakers.loginFailed(1, 'app', ...refused, undefined, unreachable)
      const opened = performance.now()
      await waitHalfOpen(words)
      assert.ok(performance.now() - opened < 3000, 'the backoff did not start over')
      breakers.close()
    })

    it('the backoff stops doubling at server_login_retry', async () => {
      const { breakers, words } = setup(0.25)
      const ms = await coolDowns(breakers, words, 5)
      // 100, 200, then 250 each time (doubling would make it 400, 800, 1600).
      assert.ok(ms[2]! >= 245 && ms[4]! >= 245, ms.map(Math.round).join(', '))
      assert.ok(ms[4]! < 1200, `${Math.round(ms[4]!)} ms: doubled past server_login_retry`)
      breakers.close()
    })

    it('a refused login (a password) waits the whole server_login_retry', async () => {
      const { breakers, words } = setup(0.5)
      for (let i = 0; i < BREAKER_THRESHOLD; i++)
        breakers.loginFailed(1, 'app', '28P01', 'password authentication failed', undefined, wrong)
      await sleep(300)
      assert.equal(words.state(), BreakerState.open, 'half-open before server_login_retry')
      await waitHalfOpen(words)
      breakers.close()
    })

    it('keeps clients waiting, through the refusals of its restart gap, until the grace is over', async () => {
      const { breakers, words } = setup(0.3) // the grace is at most server_login_retry
      assert.equal(words.clientsWait(), false)
      breakers.loginFailed(1, 'app', ...startingUp, undefined, restarting)
      assert.equal(words.clientsWait(), true)
      breakers.loginFailed(1, 'app', ...refused, undefined, unreachable)
      assert.equal(words.clientsWait(), true, 'a refusal right after the restart began')
      await sleep(150)
      breakers.loginFailed(1, 'app', ...refused, undefined, unreachable)
      assert.equal(words.clientsWait(), true, 'the grace counts from the first refusal')
      await sleep(250)
      assert.equal(words.clientsWait(), false, 'down for longer than the grace')
      // Starting up again: clients wait; a login makes it all over.
      breakers.loginFailed(1, 'app', ...startingUp, undefined, restarting)
      assert.equal(words.clientsWait(), true)
      breakers.loginSucceeded(1, 'app')
      assert.equal(words.clientsWait(), false)
      breakers.close()
    })

    it('refusals with no restart before them, or a refused login, give clients the error', () => {
      const { breakers, words } = setup()
      breakers.loginFailed(1, 'app', ...refused, undefined, unreachable)
      assert.equal(words.clientsWait(), false)
      breakers.loginFailed(1, 'app', ...startingUp, undefined, restarting)
      breakers.loginFailed(1, 'app', '28P01', 'password authentication failed', undefined, wrong)
      assert.equal(words.clientsWait(), false)
      breakers.close()
    })
  })
})

async function waitHalfOpen(words: { state(): number }): Promise<boolean> {
  const deadline = performance.now() + 5000
  while (words.state() !== BreakerState.halfOpen) {
    if (performance.now() > deadline) assert.fail('not half-open within 5 s')
    await new Promise((r) => setTimeout(r, 5))
  }
  return true
}
