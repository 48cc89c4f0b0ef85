import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { errorFields, extended, queryMessage, RawConnection } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Transaction mode with max_prepared_statements: a client's DEALLOCATE ALL or
// DISCARD ALL empties its server of the pooler's statements, and the pooler's
// map of them must follow, or the next client on that server binds a
// statement PostgreSQL no longer has. A second Parse of a name the client has
// prepared already is refused as PgBouncer 1.21+ refuses it. (PgBouncer 1.18
// has no prepared-statement mapping: these run against ours alone.)
const db = usePostgres({})

describe('transaction mode, one server', { timeout: 60_000 }, () => {
  let p: Pooler
  before(async () => {
    p = await startPooler(
      writeIni({
        databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
        pgbouncer: { pool_mode: 'transaction', default_pool_size: 1 },
      }),
      { workers: 1 },
    )
  })
  after(() => p.stop())

  const config = () => ({ host: p.host, port: p.port, user: 'postgres', database: 'postgres' })

  for (const reset of ['DEALLOCATE ALL', '  discard   all ;', 'Deallocate Prepare All']) {
    test(`after another client's ${JSON.stringify(reset)} a statement is prepared again`, async () => {
      const a = new pg.Client(config())
      await a.connect()
      try {
        const named = { name: 'q', text: 'SELECT $1::int + 1 AS v', values: [1] }
        assert.equal((await a.query(named)).rows[0].v, 2)
        // One server: the other client's reset runs on the server that holds `q`.
        await withClient(config(), (b) => b.query(reset))
        assert.equal((await a.query({ ...named, values: [41] })).rows[0].v, 42)
        const { rows } = await a.query('SELECT count(*)::int AS n FROM pg_prepared_statements')
        assert.equal(rows[0].n, 1, 'prepared once more, under a new name')
      } finally {
        await a.end()
      }
    })
  }

  test("the client's own DEALLOCATE ALL forgets its statements, as PostgreSQL does", async () => {
    const conn = await RawConnection.connect(p.host, p.port)
    try {
      await conn.login({ user: 'postgres', database: 'postgres' })
      conn.send(Buffer.concat([extended.parse('s', 'SELECT 1'), extended.sync()]))
      await conn.until('Z', 5000)
      conn.send(queryMessage('DEALLOCATE ALL'))
      await conn.until('Z', 5000)
      conn.send(Buffer.concat([extended.bind('s', []), extended.execute(), extended.sync()]))
      const seen = await conn.until('Z', 5000)
      const error = seen.find((m) => m.type === 'E')
      assert.ok(error !== undefined, 'the Bind of a deallocated statement fails')
      assert.equal(errorFields(error.body).code, '26000')
      // And the name is free again.
      conn.send(Buffer.concat([extended.parse('s', 'SELECT 2'), extended.sync()]))
      const again = await conn.until('Z', 5000)
      assert.equal(
        again.find((m) => m.type === 'E'),
        undefined,
      )
    } finally {
      conn.destroy()
    }
  })

  test('a second Parse of a name in use: PgBouncer\'s "prepared statement name is already in use"', async () => {
    const conn = await RawConnection.connect(p.host, p.port)
    try {
      await conn.login({ user: 'postgres', database: 'postgres' })
      conn.send(Buffer.concat([extended.parse('t', 'SELECT 1'), extended.sync()]))
      const first = await conn.until('Z', 5000)
      assert.equal(
        first.find((m) => m.type === 'E'),
        undefined,
      )
      conn.send(Buffer.concat([extended.parse('t', 'SELECT 1'), extended.sync()]))
      const seen = await conn.until('E', 5000)
      const fields = errorFields(seen.at(-1)!.body)
      assert.equal(fields.severity, 'FATAL')
      assert.equal(fields.message, 'prepared statement name is already in use')
      assert.equal(fields.code, '08P01')
    } finally {
      conn.destroy()
    }
    await assert.doesNotReject(withClient(config(), (c) => c.query('SELECT 1')))
    assert.match(p.output(), /prepared statement 't' was already prepared/)
  })
})
