import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { TargetSessionAttrs } from '@pgbouncer-cluster/protocol/host-role'
import { roleOf } from '@pgbouncer-cluster/protocol/host-role'
import {
  BreakerState,
  createSharedMemory,
  SharedMemory,
} from '@pgbouncer-cluster/protocol/shared-memory'
import type { DatabaseConfig } from '../config-types.ts'
import { RECHECK_MS, TargetSession } from './target-session.ts'

const PRIMARY = roleOf('off', 'off')
const STANDBY = roleOf('on', 'off')

function setUp(attrs: TargetSessionAttrs | undefined) {
  const shared = new SharedMemory(
    createSharedMemory({ maxWorkers: 2, maxPools: 2, maxDatabases: 2, maxUsers: 2 }),
  )
  const breaker = shared.breaker(0)
  const database: DatabaseConfig = {
    name: 'app',
    host: 'a,b',
    port: 5432,
    hosts: [
      { host: 'a', port: 5432 },
      { host: 'b', port: 5432 },
    ],
    dbname: 'app',
    targetSessionAttrs: attrs,
  }
  return { breaker, roles: new TargetSession(database, breaker) }
}

const params = (hot: string, ro = 'off') =>
  new Map([
    ['in_hot_standby', hot],
    ['default_transaction_read_only', ro],
  ])

describe('TargetSession (no PostgreSQL)', () => {
  it('tries hosts of unknown role, learns from the login, and shares the role through shared memory', () => {
    const { breaker, roles } = setUp('read-write')
    assert.equal(roles.candidate(0, 0), true, 'unknown: tried')
    assert.equal(roles.loggedIn(1, params('on'), assert.fail), false, 'a standby does not fit')
    assert.equal(breaker.hostRole(1), STANDBY)
    assert.equal(roles.candidate(1, 0), false)
    assert.equal(roles.loggedIn(0, params('off'), assert.fail), true)
    assert.equal(breaker.hostRole(0), PRIMARY)
    assert.equal(roles.upHost(), 0)
    assert.equal(roles.waitText(), null, 'a host fits')
  })

  it('follows a promotion reported by a logged-in server; the old host no longer fits', () => {
    const { breaker, roles } = setUp('read-write')
    breaker.setHostRole(0, PRIMARY)
    breaker.setHostRole(1, STANDBY)
    breaker.setHostState(0, BreakerState.open) // the old primary went down
    assert.equal(roles.upHost(), -1)
    assert.equal(
      roles.waitText(),
      'query_wait_timeout: no host of database "app" fits target_session_attrs=read-write: session is read-only',
    )
    assert.equal(roles.reported(1, 'off'), true)
    assert.equal(breaker.hostRole(1), PRIMARY)
    assert.equal(roles.upHost(), 1)
    const ro = setUp('standby')
    ro.breaker.setHostRole(1, STANDBY)
    assert.equal(ro.roles.reported(1, 'off'), false, 'a standby entry lets the promoted host go')
  })

  it('logs in again to a host that did not fit at most every RECHECK_MS, and only to one that is up', () => {
    const { breaker, roles } = setUp('primary')
    breaker.setHostRole(0, STANDBY)
    breaker.setHostRole(1, STANDBY)
    breaker.setHostState(0, BreakerState.open)
    assert.equal(roles.recheck(0, 1000), 1)
    assert.equal(roles.recheck(0, 1000 + RECHECK_MS - 1), -1)
    assert.equal(roles.recheck(0, 1000 + RECHECK_MS), 1)
    breaker.setHostState(1, BreakerState.open)
    assert.equal(roles.recheck(0, 5000), -1)
  })

  it('prefer-standby: a primary serves only while no host is or may be a standby that is up', () => {
    const { breaker, roles } = setUp('prefer-standby')
    assert.equal(roles.passes, 2)
    breaker.setHostRole(0, PRIMARY)
    assert.equal(roles.fits(0), false, 'host 1 may be a standby: try it first')
    breaker.setHostRole(1, STANDBY)
    assert.equal(roles.fits(0), false)
    assert.equal(roles.fits(1), true)
    breaker.setHostState(1, BreakerState.open)
    assert.equal(roles.fits(0), true, 'the standby is down: fall back')
    assert.equal(roles.standbyDue(0), false, 'nothing to try while its breaker is open')
    breaker.setHostState(1, BreakerState.halfOpen)
    assert.equal(roles.standbyDue(1000), true)
    assert.equal(roles.standbyToTry(1000), 1, 'claims the probe')
    assert.equal(breaker.hostState(1), BreakerState.probing)
    assert.equal(roles.standbyToTry(1000), -1, 'once per RECHECK_MS')
  })

  it('any: everything fits, nothing is read', () => {
    const { breaker, roles } = setUp(undefined)
    breaker.setHostRole(0, STANDBY)
    assert.equal(roles.fits(0), true)
    assert.equal(roles.waitText(), null)
    assert.equal(roles.passes, 1)
  })

  it('a server of PostgreSQL before 14 reports no role: it serves, with one warning', () => {
    const { breaker, roles } = setUp('read-write')
    const warnings: string[] = []
    assert.equal(
      roles.loggedIn(0, new Map(), (m) => warnings.push(m)),
      true,
    )
    assert.equal(
      roles.loggedIn(1, new Map(), (m) => warnings.push(m)),
      true,
    )
    assert.equal(warnings.length, 1)
    assert.equal(breaker.hostRole(0), 0)
  })
})
