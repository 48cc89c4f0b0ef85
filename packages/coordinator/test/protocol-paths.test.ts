import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { after, before, describe, test } from 'node:test'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// The paths beyond simple queries: pipelines, COPY both ways, large results, errors.
const db = usePostgres({ databases: ['app'] })

const PSQL = findPgTool('psql')

/** Runs psql against `url` with `input` on stdin; resolves with stdout's sha256. */
function psql(url: string, command: string, input = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(PSQL!, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', command, url], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const hash = createHash('sha256')
    let stderr = ''
    child.stdout.on('data', (b: Buffer) => hash.update(b))
    child.stderr.on('data', (b: Buffer) => {
      stderr += b
    })
    child.on('error', reject)
    // psql may exit (and report why) before it read its input.
    child.stdin.on('error', () => {})
    child.on('close', (code) => {
      if (code === 0) resolve(hash.digest('hex'))
      else reject(new Error(`psql exited ${code}: ${stderr}`))
    })
    child.stdin.end(input)
  })
}

for (const mode of ['session', 'transaction', 'statement'] as const) {
  describe(`${mode} pooling`, () => {
    let pooler: Pooler
    const table = `copy_${mode}`
    before(async () => {
      await withClient({ connectionString: db.server.url({ database: 'app' }) }, (c) =>
        c.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id int, label text)`),
      )
      const ini = writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: mode, default_pool_size: 3 },
      })
      pooler = await startPooler(ini, { workers: 2 })
    })
    after(() => pooler.stop())

    test('extended protocol: many unnamed statements pipelined before one result is read', async () => {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
        // pg pipelines queries queued on one client: Parse/Bind/Execute/Sync back to back.
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) => c.query('SELECT $1::int * 2 AS v', [i])),
        )
        assert.deepEqual(
          results.map((r) => r.rows[0].v),
          Array.from({ length: 50 }, (_, i) => i * 2),
        )
      })
    })

    test('COPY FROM STDIN and COPY TO STDOUT give the same bytes as direct PostgreSQL', {
      skip: skipWithout('psql', PSQL),
    }, async () => {
      const rows = Array.from(
        { length: 20_000 },
        (_, i) => `${i}\tlabel-${i}-${'x'.repeat(i % 50)}\n`,
      ).join('')
      await psql(pooler.url({ database: 'app' }), `COPY ${table} FROM STDIN`, rows)
      const count = await withClient(
        { connectionString: db.server.url({ database: 'app' }) },
        async (c) => (await c.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n,
      )
      assert.equal(count, 20_000)
      const copyOut = `COPY (SELECT * FROM ${table} ORDER BY id) TO STDOUT`
      const viaPooler = await psql(pooler.url({ database: 'app' }), copyOut)
      const direct = await psql(db.server.url({ database: 'app' }), copyOut)
      assert.equal(viaPooler, direct)
      assert.equal(viaPooler, createHash('sha256').update(rows).digest('hex'))
    })

    test('a 50 MB result arrives whole', async () => {
      await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
        const { rows } = await c.query(
          "SELECT g AS i, repeat('y', 1000) AS pad FROM generate_series(1, 50000) g",
        )
        assert.equal(rows.length, 50_000)
        assert.equal(rows[49_999].i, 50_000)
        assert.equal(rows[12_345].pad.length, 1000)
      })
    })

    if (mode === 'statement') {
      test("a transaction block is refused with PgBouncer's error", async () => {
        const c = pooler.client({ database: 'app' })
        const failed = new Promise<Error>((resolve) => c.on('error', resolve))
        await c.connect()
        await c.query('BEGIN').catch(() => {})
        const err = await failed
        assert.match(err.message, /transaction blocks not allowed in statement pooling mode/)
        await c.end().catch(() => {})
      })
    } else {
      test('an error inside a transaction, then ROLLBACK, leaves the connection usable', async () => {
        await withClient({ connectionString: pooler.url({ database: 'app' }) }, async (c) => {
          await c.query('BEGIN')
          await assert.rejects(
            c.query('SELECT 1/0'),
            (err: Error & { code?: string }) => err.code === '22012',
          )
          await assert.rejects(
            c.query('SELECT 1'),
            (err: Error & { code?: string }) => err.code === '25P02',
          )
          await c.query('ROLLBACK')
          const { rows } = await c.query('SELECT 7 AS seven')
          assert.equal(rows[0].seven, 7)
        })
      })
    }
  })
}
