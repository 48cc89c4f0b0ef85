import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { parseHba } from './hba.ts'

describe('auth_hba_file', () => {
  test('types, lists, quoting, keywords, addresses with /bits or a mask, comments', () => {
    const rules = parseHba(
      [
        '# TYPE  DATABASE  USER  ADDRESS  METHOD',
        '',
        'local   all        all                    trust',
        'host    app,"all"  alice,bob  10.0.0.0/8  md5   # inline comment',
        'hostssl sameuser   all   192.168.1.0  255.255.255.0  cert',
        'hostnossl replication all ::1/128 scram-sha-256',
        'host "a ""q"" db" all fd00::  ffff:: password',
        'host all all 0.0.0.0/0 reject',
      ].join('\n'),
      '/etc/pgbouncer/hba.conf',
    )
    assert.equal(rules.length, 6)
    const [local, host, ssl, nossl, quoted, reject] = rules
    assert.equal(local!.type, 'local')
    assert.equal(local!.address, null)
    assert.equal(local!.line, 3)
    assert.deepEqual(host!.databases, {
      all: false,
      sameuser: false,
      replication: false,
      names: ['app', 'all'],
    })
    assert.deepEqual(host!.users.names, ['alice', 'bob'])
    assert.deepEqual(host!.address, { bytes: [10, 0, 0, 0], mask: [255, 0, 0, 0] })
    assert.equal(host!.method, 'md5')
    assert.equal(ssl!.databases.sameuser, true)
    assert.deepEqual(ssl!.address!.mask, [255, 255, 255, 0])
    assert.equal(ssl!.method, 'cert')
    assert.equal(nossl!.databases.replication, true)
    assert.deepEqual(nossl!.address!.mask, new Array(16).fill(255))
    assert.equal(nossl!.method, 'scram-sha-256')
    assert.deepEqual(quoted!.databases.names, ['a "q" db'])
    assert.deepEqual(quoted!.address!.mask, [255, 255, ...new Array(14).fill(0)])
    assert.equal(quoted!.method, 'password')
    assert.equal(reject!.method, 'reject')
  })

  test('@file lists names, relative to the hba file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgbc-hba-'))
    try {
      writeFileSync(join(dir, 'users.txt'), 'alice, bob\n# staff\ncarol\n')
      const [r] = parseHba('host all @users.txt 127.0.0.1/32 md5\n', join(dir, 'hba.conf'))
      assert.deepEqual(r!.users.names, ['alice', 'bob', 'carol'])
      assert.throws(
        () => parseHba('host all @missing.txt 127.0.0.1/32 md5', join(dir, 'hba.conf')),
        {
          message: /hba\.conf:1: cannot read @missing\.txt/,
        },
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  for (const [line, why] of [
    ['hostgssenc all all 127.0.0.1/32 trust', /unknown connection type "hostgssenc"/],
    ['host all', /no user column/],
    ['host all all trust', /address "trust": only IPv4 and IPv6/],
    ['host all all 1.2.3 trust', /invalid address "1\.2\.3"/],
    ['host all all samenet trust', /only IPv4 and IPv6 addresses/],
    ['host all all db.example.com trust', /only IPv4 and IPv6 addresses/],
    ['host all all 127.0.0.1/33 trust', /invalid mask length "\/33"/],
    ['host all all 127.0.0.1 trust', /invalid mask "trust"/],
    ['host all all 127.0.0.1', /no mask after address/],
    ['host all all 127.0.0.1/32', /no authentication method/],
    ['host all all 127.0.0.1/32 ldap', /unsupported method "ldap"/],
    ['local all all peer', /peer is not supported/],
    ['hostssl all all ::1/128 cert map=ops', /map=ops: user name maps \(auth_ident_file\)/],
    ['host samerole all 127.0.0.1/32 trust', /samerole is not supported/],
    ['host all +admins 127.0.0.1/32 trust', /group names \(\+admins\)/],
    ['host all "unterminated 127.0.0.1/32 trust', /unterminated quoted name/],
    // A comma continues the list past the blank: the address became a user name.
    ['host all alice, 127.0.0.1/32 trust', /address "trust"/],
    ['host all alice,', /a list ends with a comma/],
  ] as const) {
    test(`refuses: ${line}`, () => {
      assert.throws(
        () => parseHba(`# first\n${line}\n`, 'hba.conf'),
        (err: Error) => {
          assert.match(err.message, /^hba\.conf:2: /)
          assert.match(err.message, why)
          return true
        },
      )
    })
  }
})
