import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { ConfigError } from './ini.ts'
import { loadUserlist, parseUserlist } from './userlist.ts'

describe('parseUserlist', () => {
  test('plain, md5 and SCRAM secrets, "" escapes, comments, trailing fields', () => {
    const scram = 'SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVk:c2VydmVy'
    const users = parseUserlist(
      [
        '; semicolon comment (PgBouncer)',
        '# hash comment',
        '',
        '"alice" "plain pass"',
        '  "bob"\t"md545f2603610af569b6155c45067268c6b"   ignored rest',
        `"o""brien" "${scram}"`,
        '"q" "say ""hi"""\r',
        '"alice" "second wins"',
        '"nopass" ""',
      ].join('\n'),
      'userlist.txt',
    )
    assert.deepEqual(
      { ...users },
      {
        alice: 'second wins',
        bob: 'md545f2603610af569b6155c45067268c6b',
        'o"brien': scram,
        q: 'say "hi"',
        nopass: '',
      },
    )
  })

  for (const [line, re] of [
    ['alice "x"', /expected "user" "password"/],
    ['"alice"', /expected a quoted password after user "alice"/],
    ['"alice" x "y"', /expected a quoted password/],
    ['"alice "x"', /expected a quoted password after user "alice "/],
    ['"alice" "open', /unterminated quoted password for user "alice"/],
    ['"open', /unterminated quoted user name/],
    ['"" "x"', /empty user name/],
  ] as const) {
    test(`rejects ${line} with its line number`, () => {
      assert.throws(
        () => parseUserlist(`"ok" "ok"\n\n${line}\n`, 'users.txt'),
        (err: unknown) =>
          err instanceof ConfigError &&
          err.file === 'users.txt' &&
          err.line === 3 &&
          err.message.startsWith('users.txt:3: ') &&
          re.test(err.message),
      )
    })
  }
})

describe('loadUserlist', () => {
  test('reads a file; a missing file is a ConfigError', () => {
    const dir = mkdtempSync(join(tmpdir(), 'userlist-'))
    try {
      const path = join(dir, 'u.txt')
      writeFileSync(path, '"a" "b"\n')
      assert.equal(loadUserlist(path).a, 'b')
      assert.throws(
        () => loadUserlist(join(dir, 'none.txt'), 'none.txt'),
        /^ConfigError: none\.txt: cannot read auth_file: ENOENT/,
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
