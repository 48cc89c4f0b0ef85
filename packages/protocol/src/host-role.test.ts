import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  HostRole,
  mismatchText,
  roleFits,
  roleName,
  roleOf,
  SessionAttrs,
  sessionAttrsCode,
  TARGET_SESSION_ATTRS,
} from './host-role.ts'

describe('host roles and target_session_attrs', () => {
  const primary = roleOf('off', 'off')
  const readOnlyPrimary = roleOf('off', 'on')
  const standby = roleOf('on', 'off')

  it('reads a role from the two values PostgreSQL 14+ reports', () => {
    assert.equal(primary, HostRole.known)
    assert.equal(standby, HostRole.known | HostRole.standby)
    assert.equal(readOnlyPrimary, HostRole.known | HostRole.readOnly)
    assert.equal(roleOf('off', undefined), HostRole.known)
    assert.deepEqual([primary, readOnlyPrimary, standby, 0].map(roleName), [
      'primary',
      'read-only primary',
      'standby',
      'unknown',
    ])
  })

  it("decides as libpq does (fe-connect.c's checks of in_hot_standby and default_transaction_read_only)", () => {
    const table: [string, boolean, boolean, boolean][] = [
      // attrs, primary, read-only primary, standby
      ['any', true, true, true],
      ['read-write', true, false, false],
      ['read-only', false, true, true],
      ['primary', true, true, false],
      ['standby', false, false, true],
      // A primary serves prefer-standby only as its fall-back, which the pool decides.
      ['prefer-standby', false, false, true],
    ]
    for (const [attrs, p, rop, s] of table) {
      const code = sessionAttrsCode(attrs as (typeof TARGET_SESSION_ATTRS)[number])
      assert.deepEqual(
        [roleFits(code, primary), roleFits(code, readOnlyPrimary), roleFits(code, standby)],
        [p, rop, s],
        attrs,
      )
    }
    assert.equal(sessionAttrsCode(undefined), SessionAttrs.any)
    assert.equal(TARGET_SESSION_ATTRS.length, table.length)
  })

  it("names libpq's reason for a host that does not fit", () => {
    assert.equal(mismatchText(SessionAttrs.readWrite), 'session is read-only')
    assert.equal(mismatchText(SessionAttrs.readOnly), 'session is not read-only')
    assert.equal(mismatchText(SessionAttrs.primary), 'server is in hot standby mode')
    assert.equal(mismatchText(SessionAttrs.standby), 'server is not in hot standby mode')
  })
})
