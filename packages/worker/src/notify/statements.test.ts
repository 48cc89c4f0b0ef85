import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import {
  bind,
  describe as describeMsg,
  execute,
  flush,
  parse,
  query,
  sync,
} from '@pgbouncer-cluster/protocol/serializer'
import { listenBatch, mayBeListenBatch, parseIsCommit } from './extended.ts'
import { isCommit, listenStatements, mayBeListen, parseListen } from './statements.ts'

const q = (sql: string) => {
  const buf = query(sql)
  return { buf, start: 0, end: buf.length }
}

describe('LISTEN and UNLISTEN read from a Query', () => {
  test('the first test takes LISTEN and UNLISTEN in any case, and nothing else', () => {
    for (const sql of ['LISTEN a', 'listen a', 'UnListen *', 'UNLISTEN/**/a', 'LISTEN\ta']) {
      const { buf, start, end } = q(sql)
      assert.ok(mayBeListen(buf, start, end), sql)
    }
    for (const sql of ['LISTENER', 'UPDATE t SET a = 1', 'SELECT 1', 'LIST', '', 'UNLIST']) {
      const { buf, start, end } = q(sql)
      assert.equal(mayBeListen(buf, start, end), false, sql)
    }
  })

  test('names fold as PostgreSQL folds them, quoted ones keep their case', () => {
    assert.deepEqual(parseListen('LISTEN Jobs'), [{ listen: true, channel: 'jobs' }])
    assert.deepEqual(parseListen('LISTEN "Jobs"'), [{ listen: true, channel: 'Jobs' }])
    assert.deepEqual(parseListen('LISTEN "a""b"'), [{ listen: true, channel: 'a"b' }])
    assert.deepEqual(parseListen('listen x;'), [{ listen: true, channel: 'x' }])
    assert.deepEqual(parseListen('UNLISTEN *'), [{ listen: false, channel: null }])
    assert.deepEqual(parseListen(' -- c\n LISTEN a ; /* b */ UNLISTEN b;'), [
      { listen: true, channel: 'a' },
      { listen: false, channel: 'b' },
    ])
    // Cut to 63 bytes, as PostgreSQL cuts an identifier.
    assert.deepEqual(parseListen(`LISTEN ${'x'.repeat(70)}`), [
      { listen: true, channel: 'x'.repeat(63) },
    ])
  })

  test("anything beside them is not the pooler's", () => {
    for (const sql of [
      'LISTEN a; SELECT 1',
      'LISTEN',
      'LISTEN *',
      'LISTEN ""',
      'LISTEN "open',
      'LISTEN a b',
      'BEGIN; LISTEN a; COMMIT',
      'LISTEN U&"a"',
    ]) {
      assert.equal(parseListen(sql), null, sql)
    }
    const { buf, start, end } = q('LISTEN a; SELECT 1')
    assert.equal(listenStatements(buf, start, end), null)
  })

  test('COMMIT and END are told from ROLLBACK', () => {
    for (const sql of ['COMMIT', 'commit;', ' END', 'END TRANSACTION', 'COMMIT WORK']) {
      const { buf, start, end } = q(sql)
      assert.ok(isCommit(buf, start, end), sql)
    }
    for (const sql of ['ROLLBACK', 'ABORT', 'COMMITTED', 'ENDING']) {
      const { buf, start, end } = q(sql)
      assert.equal(isCommit(buf, start, end), false, sql)
    }
  })
})

describe('LISTEN through the extended protocol', () => {
  test("asyncpg's prepare (Parse, Describe, Flush) and execute (Bind, Execute, Sync)", () => {
    const statements = new Map()
    const prepare = Buffer.concat([
      parse('s1', 'LISTEN "py_jobs"'),
      describeMsg('S', 's1'),
      flush(),
    ])
    assert.ok(mayBeListenBatch(prepare, 0x50, 0, parse('s1', 'LISTEN "py_jobs"').length, null))
    const first = listenBatch(prepare, statements)
    assert.ok(first)
    assert.equal(first.sync, false)
    assert.equal(first.end, prepare.length)
    assert.deepEqual(
      first.answers.map((b) => String.fromCharCode(b[0]!)),
      ['1', 't', 'n'],
    )
    assert.deepEqual([...statements.keys()], ['s1'])
    const run = Buffer.concat([bind('', 's1', []), execute(''), sync()])
    const second = listenBatch(run, statements)
    assert.ok(second)
    assert.equal(second.sync, true)
    assert.deepEqual(second.ops, [{ listen: true, channel: 'py_jobs' }])
    assert.deepEqual(
      second.answers.map((b) => String.fromCharCode(b[0]!)),
      ['2', 'C'],
    )
  })

  test("a Parse of COMMIT (pgjdbc's commit()) is told from one of ROLLBACK", () => {
    for (const [sql, types, commits] of [
      ['COMMIT', [], true],
      ['END', [23], true],
      ['ROLLBACK', [], false],
      ['COMMITTED', [], false],
    ] as const) {
      const msg = parse('S_1', sql, [...types])
      assert.equal(parseIsCommit(msg, 0, msg.length), commits, sql)
    }
  })

  test("a batch with anything else, or without its end in the read, is not the pooler's", () => {
    const statements = new Map()
    const mixed = Buffer.concat([
      parse('', 'LISTEN a'),
      bind('', '', []),
      execute(''),
      parse('', 'SELECT 1'),
      sync(),
    ])
    assert.equal(listenBatch(mixed, statements), null)
    const open = Buffer.concat([parse('', 'LISTEN a'), bind('', '', []), execute('')])
    assert.equal(listenBatch(open, statements), null)
    const unknown = Buffer.concat([bind('', 'nope', []), execute(''), sync()])
    assert.equal(listenBatch(unknown, statements), null)
    assert.equal(statements.size, 0)
  })
})
