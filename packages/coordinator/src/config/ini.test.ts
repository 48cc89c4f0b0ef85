import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { ConfigError, parseIniText, readIniFile, resolveConfigPath } from './ini.ts'

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'ini-test-')))
after(() => rmSync(dir, { recursive: true, force: true }))

function write(name: string, text: string): string {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

function rejects(
  fn: () => unknown,
  expect: { file?: string; line?: number | null; key?: string | null; re: RegExp },
) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err))
    assert.equal(err.code, 'ERR_CONFIG')
    if (expect.file !== undefined) assert.equal(err.file, expect.file)
    if (expect.line !== undefined) assert.equal(err.line, expect.line)
    if (expect.key !== undefined) assert.equal(err.key, expect.key)
    assert.match(err.message, expect.re)
    return true
  })
}

describe('parseIniText', () => {
  test('sections, entries, comments and literal values', () => {
    const items = parseIniText(
      [
        '\uFEFF; comment',
        '  # another comment',
        '[databases]',
        'app-1.x = host=h  ',
        '"my ""db""" = host=q',
        '',
        '[ pgbouncer ]',
        'server_reset_query = DISCARD ALL ; not a comment',
        "quoted = 'kept as is'",
        'empty =',
        '\tpool_mode\t=\ttransaction\r',
      ].join('\n'),
      'f.ini',
    )
    assert.deepEqual(items, [
      { kind: 'section', name: 'databases', file: 'f.ini', line: 3 },
      { kind: 'entry', key: 'app-1.x', quoted: false, value: 'host=h', file: 'f.ini', line: 4 },
      { kind: 'entry', key: 'my "db"', quoted: true, value: 'host=q', file: 'f.ini', line: 5 },
      { kind: 'section', name: 'pgbouncer', file: 'f.ini', line: 7 },
      {
        kind: 'entry',
        key: 'server_reset_query',
        quoted: false,
        value: 'DISCARD ALL ; not a comment',
        file: 'f.ini',
        line: 8,
      },
      {
        kind: 'entry',
        key: 'quoted',
        quoted: false,
        value: "'kept as is'",
        file: 'f.ini',
        line: 9,
      },
      { kind: 'entry', key: 'empty', quoted: false, value: '', file: 'f.ini', line: 10 },
      {
        kind: 'entry',
        key: 'pool_mode',
        quoted: false,
        value: 'transaction',
        file: 'f.ini',
        line: 11,
      },
    ])
  })

  test('the "*" key of the fallback database', () => {
    const [item] = parseIniText('* = host=fallback', 'f.ini')
    assert.equal(item?.kind === 'entry' && item.key, '*')
  })

  for (const [text, re] of [
    ['[databases', /section header without closing/],
    ['[databases] x = 1', /text after section header/],
    ['key value', /expected "=" after "key"/],
    ['= value', /unexpected character "="/],
    ['na@me = 1', /expected "=" after "na"/],
    ['"unterminated = 1', /unterminated "quoted" key/],
    ['%includes x', /unknown directive "%includes"/],
    ['%include', /%include without a file name/],
  ] as const) {
    test(`syntax error: ${text}`, () => {
      rejects(() => parseIniText(`[pgbouncer]\n${text}`, 'bad.ini'), {
        file: 'bad.ini',
        line: 2,
        key: null,
        re: new RegExp(`^bad\\.ini:2: syntax error: ${re.source}`),
      })
    })
  }
})

describe('readIniFile', () => {
  test('%include splices the file in place, keeping the section in force', () => {
    mkdirSync(join(dir, 'conf.d'), { recursive: true })
    write('conf.d/pool.ini', 'default_pool_size = 7\n[databases]\nb = host=b\n')
    const main = write(
      'main.ini',
      '[pgbouncer]\nlisten_port = 1\n%include conf.d/pool.ini\na = host=a\n',
    )
    const items = readIniFile(main)
    assert.deepEqual(
      items.map((i) => (i.kind === 'section' ? `[${i.name}]` : `${i.key}@${i.file}:${i.line}`)),
      [
        '[pgbouncer]',
        `listen_port@${main}:2`,
        `default_pool_size@${join(dir, 'conf.d/pool.ini')}:1`,
        '[databases]',
        `b@${join(dir, 'conf.d/pool.ini')}:3`,
        `a@${main}:4`,
      ],
    )
  })

  test('an absolute %include path', () => {
    const inc = write('abs.ini', 'x = 1\n')
    const main = write('abs-main.ini', `[pgbouncer]\n%include ${inc}\n`)
    assert.equal(readIniFile(main).length, 2)
  })

  test('%include loop names the chain, the file, line and %include', () => {
    const a = write('loop-a.ini', '[pgbouncer]\n%include loop-b.ini\n')
    const b = write('loop-b.ini', '\n\n%include loop-a.ini\n')
    rejects(() => readIniFile(a), {
      file: b,
      line: 3,
      key: '%include',
      re: /%include loop: .*loop-a\.ini -> .*loop-b\.ini -> .*loop-a\.ini$/,
    })
  })

  test('a file including itself', () => {
    const a = write('self.ini', '%include self.ini\n')
    rejects(() => readIniFile(a), { file: a, line: 1, key: '%include', re: /%include loop/ })
  })

  test('includes deeper than PgBouncer allows', () => {
    for (let i = 0; i < 11; i++) write(`deep${i}.ini`, `%include deep${i + 1}.ini\n`)
    write('deep11.ini', 'x = 1\n')
    rejects(() => readIniFile(join(dir, 'deep0.ini')), {
      file: join(dir, 'deep9.ini'),
      key: '%include',
      re: /nested deeper than 10 files/,
    })
  })

  test('a missing included file', () => {
    const main = write('missing-inc.ini', '[pgbouncer]\n%include nowhere.ini\n')
    rejects(() => readIniFile(main), {
      file: main,
      line: 2,
      key: '%include',
      re: /cannot read included file "nowhere\.ini": ENOENT/,
    })
  })

  test('a missing main file', () => {
    rejects(() => readIniFile(join(dir, 'none.ini')), {
      line: null,
      re: /none\.ini: cannot read config file: ENOENT/,
    })
  })
})

describe('resolveConfigPath', () => {
  test('current directory first (as PgBouncer), then the naming file’s directory', () => {
    write('only-in-dir.txt', '')
    const from = join(dir, 'x.ini')
    assert.equal(resolveConfigPath('only-in-dir.txt', from), join(dir, 'only-in-dir.txt'))
    assert.equal(resolveConfigPath('package.json', from), join(process.cwd(), 'package.json'))
    assert.equal(resolveConfigPath('/abs/x', from), '/abs/x')
    assert.equal(resolveConfigPath('nowhere', from), join(process.cwd(), 'nowhere'))
  })
})
