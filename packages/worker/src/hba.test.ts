import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { addressBytes, type HbaRule, matchHba, parseIpv6 } from './hba.ts'

const none = { all: false, sameuser: false, replication: false, names: [] as string[] }
const all = { ...none, all: true }

function rule(over: Partial<HbaRule>): HbaRule {
  return {
    file: 'hba.conf',
    line: 1,
    type: 'host',
    databases: all,
    users: all,
    address: { bytes: [0, 0, 0, 0], mask: [0, 0, 0, 0] },
    method: 'trust',
    ...over,
  }
}

const login = { address: '127.0.0.1', tls: false, database: 'app', user: 'alice' }

describe('hba matching', () => {
  test('addresses: IPv4, IPv6, IPv4-mapped IPv6, garbage', () => {
    assert.deepEqual(addressBytes('10.1.2.3'), [10, 1, 2, 3])
    assert.deepEqual(addressBytes('::ffff:10.1.2.3'), [10, 1, 2, 3])
    assert.deepEqual(addressBytes('::1'), [...new Array(15).fill(0), 1])
    assert.deepEqual(parseIpv6('fe80::1%eth0')?.slice(0, 2), [0xfe, 0x80])
    assert.deepEqual(parseIpv6('1:2:3:4:5:6:7:8'), [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8])
    assert.equal(addressBytes('256.1.1.1'), null)
    assert.equal(addressBytes('1:2:3'), null)
    assert.equal(addressBytes('1::2::3'), null)
    assert.equal(addressBytes('localhost'), null)
  })

  test('the first rule that fits wins; none fitting is null', () => {
    const rules = [
      rule({ line: 1, databases: { ...none, names: ['other'] }, method: 'reject' }),
      rule({ line: 2, users: { ...none, names: ['bob'] }, method: 'reject' }),
      rule({ line: 3, method: 'md5' }),
      rule({ line: 4, method: 'trust' }),
    ]
    assert.equal(matchHba(rules, login)?.line, 3)
    assert.equal(matchHba(rules, { ...login, user: 'bob' })?.line, 2)
    assert.equal(matchHba(rules.slice(0, 2), login), null)
  })

  test('connection types: local only on the unix socket, hostssl and hostnossl by TLS', () => {
    const rules = [
      rule({ line: 1, type: 'local', address: null }),
      rule({ line: 2, type: 'hostssl' }),
      rule({ line: 3, type: 'hostnossl' }),
    ]
    assert.equal(matchHba(rules, { ...login, address: null })?.line, 1)
    assert.equal(matchHba(rules, { ...login, tls: true })?.line, 2)
    assert.equal(matchHba(rules, login)?.line, 3)
    assert.equal(matchHba(rules.slice(1), { ...login, address: null }), null)
  })

  test('networks and masks, IPv4 and IPv6 kept apart', () => {
    const v4 = rule({ address: { bytes: [10, 1, 0, 0], mask: [255, 255, 0, 0] } })
    assert.ok(matchHba([v4], { ...login, address: '10.1.200.7' }))
    assert.ok(matchHba([v4], { ...login, address: '::ffff:10.1.200.7' }))
    assert.equal(matchHba([v4], { ...login, address: '10.2.0.1' }), null)
    assert.equal(matchHba([v4], { ...login, address: '::1' }), null)
    const v6 = rule({
      address: {
        bytes: [0xfd, 0, ...new Array(14).fill(0)],
        mask: [0xff, ...new Array(15).fill(0)],
      },
    })
    assert.ok(matchHba([v6], { ...login, address: 'fd12:3456::1' }))
    assert.equal(matchHba([v6], { ...login, address: 'fe80::1' }), null)
    assert.equal(matchHba([v6], login), null)
  })

  test('sameuser: the database named like the user', () => {
    const r = rule({ databases: { ...none, sameuser: true } })
    assert.ok(matchHba([r], { ...login, database: 'alice' }))
    assert.equal(matchHba([r], login), null)
  })
})
