import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

const run = promisify(execFile)

// The original plan's scenarios, through psql and node-postgres, in every pool mode.
const db = usePostgres({ databases: ['app'] })

for (const mode of ['session', 'transaction', 'statement'] as const) {
  describe(`${mode} pooling`, () => {
    let pooler: Pooler
    before(async () => {
      const ini = writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: mode, default_pool_size: 5 },
      })
      pooler = await startPooler(ini, { workers: 2 })
    })
    after(() => pooler.stop())

    test('connect and SELECT 1 returns 1', async () => {
      const rows = await withClient(
        { connectionString: pooler.url({ database: 'app' }) },
        async (c) => (await c.query('SELECT 1 AS one')).rows,
      )
      assert.deepEqual(rows, [{ one: 1 }])
    })

    test('five queries in a row on one connection', async () => {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
        for (let i = 0; i < 5; i++) {
          const { rows } = await c.query('SELECT $1::int AS n', [i])
          assert.equal(rows[0].n, i)
        }
      })
    })

    test('10 concurrent connections each get a backend pid', async () => {
      const pids = await Promise.all(
        Array.from({ length: 10 }, () =>
          withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) =>
            Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid),
          ),
        ),
      )
      assert.equal(pids.length, 10)
      for (const pid of pids) assert.ok(pid > 0)
    })

    test('psql runs a query', {
      skip: skipWithout('psql', findPgTool('psql')),
    }, async () => {
      const psql = findPgTool('psql')!
      const { stdout } = await run(psql, [
        '-X',
        '-A',
        '-t',
        '-c',
        'SELECT 40 + 2',
        pooler.url({ database: 'app' }),
      ])
      assert.equal(stdout.trim(), '42')
    })
  })
}
