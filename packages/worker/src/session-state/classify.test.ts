import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import { describe, test } from 'node:test'
import { parse, query } from '@pgbouncer-cluster/protocol/serializer'
import {
  bit,
  CANNOT_FOLLOW,
  classify,
  classifyParse,
  classifyQuery,
  KIND_COUNT,
  PREPARE_NEW,
  refusedName,
  SESSION_KINDS,
  SessionKind,
} from './classify.ts'

/** The kinds a text counts, by name, each as often as seen. */
function kinds(sql: string): string[] {
  const counts = new Float64Array(KIND_COUNT)
  const buf = Buffer.from(sql)
  classify(buf, 0, buf.length, counts)
  const out: string[] = []
  counts.forEach((n, k) => {
    for (let i = 0; i < n; i++) out.push(SESSION_KINDS[k]!)
  })
  return out
}

describe('session state: the statement classifier', () => {
  test('session settings: SET, SET SESSION, RESET, RESET ALL, SET ROLE, SET SESSION AUTHORIZATION', () => {
    for (const sql of [
      "SET statement_timeout = '1s'",
      'set search_path to alpha, public',
      "SET SESSION work_mem = '8MB'",
      'RESET work_mem',
      'reset all',
      'SET ROLE app',
      'SET SESSION AUTHORIZATION app',
      'SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY',
      '  \n\t SeT TimeZone = UTC',
    ]) {
      assert.deepEqual(kinds(sql), ['set'], sql)
    }
  })

  test('SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with the transaction: nothing', () => {
    for (const sql of [
      "SET LOCAL statement_timeout = '1s'",
      'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
      'SET CONSTRAINTS ALL DEFERRED',
      'SETTINGS',
      'RESETS',
    ]) {
      assert.deepEqual(kinds(sql), [], sql)
    }
  })

  test('set_config: session when its third argument is false, nothing when true', () => {
    assert.deepEqual(kinds("SELECT set_config('search_path', 'alpha', false)"), ['set'])
    assert.deepEqual(kinds("select SET_CONFIG ( 'a.b' , 'x', 'f' )"), ['set'])
    assert.deepEqual(kinds("SELECT set_config('search_path', 'alpha', true)"), [])
    assert.deepEqual(kinds("SELECT set_config('search_path', lower('A'), 'on')"), [])
    assert.deepEqual(kinds("SELECT pg_catalog.set_config('x.y', '1', false)"), ['set'])
  })

  test('SQL prepared statements: PREPARE, EXECUTE, DEALLOCATE; PREPARE TRANSACTION is not one', () => {
    assert.deepEqual(kinds('PREPARE p (int) AS SELECT $1'), ['prepare'])
    assert.deepEqual(kinds('EXECUTE p(1)'), ['prepare'])
    assert.deepEqual(kinds('DEALLOCATE ALL'), ['prepare'])
    assert.deepEqual(kinds("PREPARE TRANSACTION 'x'"), [])
    const buf = Buffer.from('prepare p as select 1')
    assert.equal(classify(buf, 0, buf.length, null) & PREPARE_NEW, PREPARE_NEW)
    const exec = Buffer.from('execute p')
    assert.equal(classify(exec, 0, exec.length, null) & PREPARE_NEW, 0)
  })

  test('session advisory locks, not the transaction ones nor the unlocks', () => {
    for (const fn of [
      'pg_advisory_lock',
      'pg_advisory_lock_shared',
      'pg_try_advisory_lock',
      'PG_TRY_ADVISORY_LOCK_SHARED',
    ]) {
      assert.deepEqual(kinds(`SELECT ${fn}(42)`), ['advisory_lock'], fn)
    }
    assert.deepEqual(kinds('SELECT pg_catalog.pg_advisory_lock (1, 2)'), ['advisory_lock'])
    assert.deepEqual(kinds('WITH x AS (SELECT pg_advisory_lock(1)) SELECT * FROM x'), [
      'advisory_lock',
    ])
    for (const sql of [
      'SELECT pg_advisory_xact_lock(42)',
      'SELECT pg_try_advisory_xact_lock(42)',
      'SELECT pg_advisory_unlock(42)',
      "SELECT 'pg_advisory_lock(1)'",
      'SELECT my_pg_advisory_lock(1)',
      'INSERT INTO t VALUES (1)',
    ]) {
      assert.deepEqual(kinds(sql), [], sql)
    }
  })

  test('temporary tables, except ON COMMIT DROP', () => {
    for (const sql of [
      'CREATE TEMP TABLE t (x int)',
      'create temporary table t as select 1',
      'CREATE LOCAL TEMPORARY TABLE t (x int)',
      'CREATE GLOBAL TEMP TABLE t (x int)',
      'CREATE TEMP VIEW v AS SELECT 1',
    ]) {
      assert.deepEqual(kinds(sql), ['temp_table'], sql)
    }
    assert.deepEqual(kinds('CREATE TEMP TABLE t (x int) ON COMMIT DROP'), [])
    assert.deepEqual(kinds('CREATE TABLE temp (x int)'), [])
    assert.deepEqual(kinds('CREATE TABLE t (x int)'), [])
  })

  test('cursors WITH HOLD, not the others', () => {
    assert.deepEqual(kinds('DECLARE c CURSOR WITH HOLD FOR SELECT 1'), ['cursor_with_hold'])
    assert.deepEqual(kinds('declare c binary no scroll cursor with hold for select 1'), [
      'cursor_with_hold',
    ])
    assert.deepEqual(kinds('DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1'), [])
    assert.deepEqual(kinds('DECLARE c CURSOR FOR SELECT 1 WITH HOLD'), [])
  })

  test('LISTEN and LOAD; UNLISTEN is not state', () => {
    assert.deepEqual(kinds('LISTEN chan'), ['listen'])
    assert.deepEqual(kinds("LOAD 'auto_explain'"), ['load'])
    assert.deepEqual(kinds('UNLISTEN *'), [])
  })

  test('comments, several statements, quotes that hide a semicolon', () => {
    assert.deepEqual(kinds('/* a /* nested */ comment */ -- line\n SET x.y = 1'), ['set'])
    assert.deepEqual(kinds("SET a.b = 1; select 'x;y'; LISTEN c ; select pg_advisory_lock(1);"), [
      'set',
      'advisory_lock',
      'listen',
    ])
    assert.deepEqual(kinds('INSERT INTO t VALUES (1); SET a.b = 2'), ['set'])
    assert.deepEqual(kinds('SELECT $q$ ; SET a.b = 1 $q$'), [])
    assert.deepEqual(kinds('SELECT "a;b" FROM t; LOAD \'x\''), ['load'])
    assert.deepEqual(kinds('SET a.b = 1; SET a.c = 2'), ['set', 'set'])
  })

  test('what it cannot classify is nothing', () => {
    for (const sql of [
      '',
      ';',
      '   ',
      'SELECT 1',
      'select',
      'BEGIN',
      'DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$',
      'garbage (((',
    ]) {
      assert.deepEqual(kinds(sql), [], sql)
    }
  })

  test('from protocol messages: Query and Parse', () => {
    const q = query('SELECT pg_advisory_lock(1)')
    assert.equal(classifyQuery(q, 0, q.length, null), bit(SessionKind.advisory_lock))
    const p = parse('named', 'LISTEN x', [23])
    assert.equal(classifyParse(p, 0, p.length, null), bit(SessionKind.listen))
    const plain = query('select 1')
    assert.equal(classifyQuery(plain, 0, plain.length, null), 0)
  })

  test('what session_state_policy looks at, and how the refusal names it', () => {
    assert.equal(CANNOT_FOLLOW & bit(SessionKind.set), 0)
    assert.equal(refusedName(bit(SessionKind.advisory_lock)), 'pg_advisory_lock')
    assert.equal(refusedName(PREPARE_NEW | bit(SessionKind.prepare)), 'PREPARE')
    assert.equal(
      refusedName(bit(SessionKind.temp_table) | bit(SessionKind.load)),
      'CREATE TEMP TABLE',
    )
  })
})
