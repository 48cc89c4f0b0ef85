import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { dataRowValues, errorFields, extended, RawConnection } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Named prepared statements in transaction mode (max_prepared_statements):
// a client's statements follow it from server to server.
const PGBENCH = findPgTool('pgbench')
const db = usePostgres(PGBENCH === null ? {} : { pgbenchInit: { scale: 1 } })
const run = promisify(execFile)

function pooler(settings: Record<string, string | number> = {}, workers = 2): Promise<Pooler> {
  return startPooler(
    writeIni({
      databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 3, ...settings },
    }),
    { workers },
  )
}

function client(p: Pooler): pg.ClientConfig {
  return { host: p.host, port: p.port, user: 'postgres', database: 'postgres' }
}

/** A hand-rolled client logged in to the pooler, for messages drivers do not send this way. */
async function withRaw(p: Pooler, fn: (conn: RawConnection) => Promise<void>): Promise<void> {
  const conn = await RawConnection.connect(p.host, p.port)
  try {
    await conn.login({ user: 'postgres', database: 'postgres' })
    await fn(conn)
  } finally {
    conn.destroy()
  }
}

/** Rows (as text) and the types of what came back, up to ReadyForQuery. */
async function exchange(conn: RawConnection, ...messages: Buffer[]) {
  conn.send(Buffer.concat(messages))
  const seen = await conn.until('Z', 5000)
  const error = seen.find((m) => m.type === 'E')
  return {
    types: seen.map((m) => m.type).join(''),
    rows: seen.filter((m) => m.type === 'D').map((m) => dataRowValues(m.body)),
    error: error === undefined ? null : errorFields(error.body),
  }
}

describe('transaction mode, pool_size 3, 2 workers', () => {
  let p: Pooler
  before(async () => {
    p = await pooler()
  })
  after(() => p.stop())

  test('pgbench -M prepared over 3 servers: not one failed transaction', {
    skip: skipWithout('pgbench', PGBENCH),
  }, async () => {
    const pgbench = PGBENCH
    const env = {
      ...process.env,
      PGHOST: p.host,
      PGPORT: String(p.port),
      PGUSER: 'postgres',
      PGDATABASE: 'postgres',
    }
    // Select-only with 16 clients; TPC-B with 3. pgbench prepares each
    // statement synchronously on first use, so with more clients per thread
    // than servers one client would wait, inside the transaction it began,
    // for another one's server: a deadlock of pgbench, not of the pooler.
    for (const args of [
      ['-S', '-c', '16'],
      ['-c', '3'],
    ]) {
      const { stdout } = await run(
        pgbench!,
        [...args, '-M', 'prepared', '-j', '2', '-T', '3', '-n'],
        {
          env,
        },
      )
      const processed = Number(/actually processed: (\d+)/.exec(stdout)?.[1])
      assert.ok(processed > 100, stdout)
      assert.match(stdout, /number of failed transactions: 0 /)
      assert.doesNotMatch(stdout, /aborted/)
    }
  })

  test('20 node-postgres clients reuse named statements across servers; each gets its own answers', async () => {
    const clients = Array.from({ length: 20 }, () => new pg.Client(client(p)))
    await Promise.all(clients.map((c) => c.connect()))
    try {
      await Promise.all(
        clients.map(async (c, i) => {
          for (let n = 0; n < 30; n++) {
            // Same statement name everywhere, a different text per client.
            const { rows } = await c.query({
              name: 'next',
              text: `SELECT $1::int + ${i} AS n, 'client ${i}' AS who`,
              values: [n],
            })
            assert.deepEqual(rows[0], { n: n + i, who: `client ${i}` })
          }
        }),
      )
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
  })

  test("PostgreSQL sees the pooler's names, never the client's", async () => {
    await withClient(client(p), async (c) => {
      await c.query({ name: 'mine', text: 'SELECT 1' })
      const { rows } = await c.query({
        name: 'list',
        text: 'SELECT name FROM pg_prepared_statements ORDER BY name',
      })
      const names = rows.map((r) => r.name as string)
      assert.ok(!names.includes('mine') && !names.includes('list'), names.join(','))
      assert.ok(
        names.every((n) => /^PGBOUNCER_\d+$/.test(n)),
        names.join(','),
      )
    })
  })

  test('Describe, Close and a new Parse under the same name, in one pipeline', async () => {
    await withRaw(p, async (conn) => {
      const first = await exchange(
        conn,
        extended.parse('s', 'SELECT $1::text AS v'),
        extended.describeStatement('s'),
        extended.bind('s', ['one']),
        extended.execute(),
        extended.sync(),
      )
      assert.equal(first.error, null)
      assert.equal(first.types, '1tT2DCZ')
      assert.deepEqual(first.rows, [['one']])
      const second = await exchange(
        conn,
        extended.closeStatement('s'),
        extended.parse('s', "SELECT 'two' AS v, $1::int AS k"),
        extended.bind('s', ['2']),
        extended.execute(),
        extended.sync(),
      )
      assert.equal(second.error, null)
      assert.equal(second.types, '312DCZ')
      assert.deepEqual(second.rows, [['two', '2']])
    })
  })

  test('Binds alternating between statements whose names differ in one byte each get their own', async () => {
    await withRaw(p, async (conn) => {
      const ready = await exchange(
        conn,
        extended.parse('s1', "SELECT 'first' AS v"),
        extended.parse('s2', "SELECT 'second' AS v"),
        extended.sync(),
      )
      assert.equal(ready.error, null)
      for (const order of [
        ['s1', 's2', 's1'],
        ['s2', 's2', 's1'],
      ]) {
        const { error, rows } = await exchange(
          conn,
          ...order.flatMap((name) => [extended.bind(name, []), extended.execute()]),
          extended.sync(),
        )
        assert.equal(error, null)
        assert.deepEqual(
          rows,
          order.map((name) => [name === 's1' ? 'first' : 'second']),
        )
      }
    })
  })

  test('a Parse and a Bind larger than a read arrive whole and right', async () => {
    await withRaw(p, async (conn) => {
      const comment = `/* ${'x'.repeat(200_000)} */`
      const value = 'v'.repeat(300_000)
      const { error, rows, types } = await exchange(
        conn,
        extended.parse('big', `SELECT length($1::text) AS n ${comment}`),
        extended.bind('big', [value]),
        extended.execute(),
        extended.sync(),
      )
      assert.equal(error, null)
      assert.equal(types, '12DCZ')
      assert.deepEqual(rows, [['300000']])
    })
  })
})

describe('every transaction on a server whose statements were discarded', () => {
  // server_reset_query_always: DISCARD ALL after each transaction, so every
  // Bind finds the statement gone and the pooler prepares it again first.
  let p: Pooler
  before(async () => {
    p = await pooler({ server_reset_query_always: 1, default_pool_size: 1 }, 1)
  })
  after(() => p.stop())

  test('the statement is prepared again each time, and the client sees only its own ParseComplete', async () => {
    await withRaw(p, async (conn) => {
      const first = await exchange(
        conn,
        extended.parse('q', 'SELECT $1::int * 2 AS n'),
        extended.bind('q', ['1']),
        extended.execute(),
        extended.sync(),
      )
      assert.equal(first.types, '12DCZ')
      for (let i = 2; i < 12; i++) {
        const next = await exchange(
          conn,
          extended.bind('q', [String(i)]),
          extended.execute(),
          extended.sync(),
        )
        assert.equal(next.types, '2DCZ')
        assert.deepEqual(next.rows, [[String(i * 2)]])
      }
    })
  })

  test('a statement that can no longer be prepared fails with PostgreSQL’s error, and the session goes on', async () => {
    await db.server.query('CREATE TABLE prep_gone (v int)')
    await withClient(client(p), async (c) => {
      const q = { name: 'from_table', text: 'SELECT count(*)::int AS n FROM prep_gone' }
      assert.equal((await c.query(q)).rows[0].n, 0)
      await db.server.query('DROP TABLE prep_gone')
      await assert.rejects(c.query(q), (err: Error & { code?: string }) => {
        assert.equal(err.code, '42P01')
        return true
      })
      assert.equal((await c.query('SELECT 5 AS n')).rows[0].n, 5)
    })
  })
})

describe('max_prepared_statements', () => {
  const poolers: Pooler[] = []
  after(() => Promise.all(poolers.map((p) => p.stop())))
  async function start(max: number): Promise<Pooler> {
    const p = await pooler({ max_prepared_statements: max, default_pool_size: 1 }, 1)
    poolers.push(p)
    return p
  }

  test('past the limit a released server drops them all; the clients’ statements still work', async () => {
    const p = await start(2)
    await withClient(client(p), async (c) => {
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 5; i++) {
          const { rows } = await c.query({
            name: `s${i}`,
            text: `SELECT ${i} + $1::int AS n`,
            values: [round],
          })
          assert.equal(rows[0].n, i + round)
        }
      }
      const { rows } = await c.query('SELECT count(*)::int AS n FROM pg_prepared_statements')
      assert.ok(rows[0].n <= 3, `${rows[0].n} statements on the server`)
    })
  })

  test('0 turns the mapping off, as in PgBouncer before 1.21: names go through as they are', async () => {
    const p = await start(0)
    await withClient(client(p), async (c) => {
      await c.query({ name: 'mine', text: 'SELECT 1' })
      const { rows } = await c.query('SELECT name FROM pg_prepared_statements')
      assert.ok(
        rows.some((r) => r.name === 'mine'),
        JSON.stringify(rows),
      )
    })
  })
})

describe('session mode', () => {
  let p: Pooler
  before(async () => {
    p = await pooler({ pool_mode: 'session' })
  })
  after(() => p.stop())

  test('statements keep the client’s own names: the server is the client’s alone', async () => {
    await withClient(client(p), async (c) => {
      await c.query({ name: 'mine', text: 'SELECT 1' })
      const { rows } = await c.query('SELECT name FROM pg_prepared_statements')
      assert.deepEqual(
        rows.map((r) => r.name),
        ['mine'],
      )
    })
  })
})
