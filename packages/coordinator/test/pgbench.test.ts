import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type Pooler, startPooler, writeIni } from './support.ts'

const run = promisify(execFile)
const PGBENCH = findPgTool('pgbench')

// pgbench through the pooler in transaction mode: every transaction must succeed.
describe('pgbench through pgbouncer-cluster', {
  skip: skipWithout('pgbench', PGBENCH),
}, () => {
  const db = usePostgres({ pgbenchInit: { scale: 1 } })
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
      pgbouncer: { pool_mode: 'transaction', default_pool_size: 4, max_client_conn: 200 },
    })
    pooler = await startPooler(ini, { workers: 2 })
  })
  after(() => pooler.stop())

  /** pgbench with `args` against the pooler; resolves with its report. */
  async function pgbench(args: string[]): Promise<string> {
    const target = ['-h', pooler.host, '-p', String(pooler.port), '-U', 'postgres', 'postgres']
    const { stdout } = await run(PGBENCH!, [...args, ...target], {
      env: { ...process.env, PGCONNECT_TIMEOUT: '10' },
    })
    return stdout
  }

  for (const protocol of ['simple', 'extended'] as const) {
    test(`pgbench -M ${protocol}: 16 clients on a pool of 4, no failed transaction`, async () => {
      const stdout = await pgbench(['-n', '-M', protocol, '-c', '16', '-j', '2', '-T', '3'])
      const processed = Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1])
      const failed = Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0)
      assert.ok(processed > 100, `only ${processed} transactions:\n${stdout}`)
      assert.equal(failed, 0)
    })
  }

  test('pgbench -S -C (a new connection per transaction) runs clean', async () => {
    const stdout = await pgbench(['-n', '-S', '-C', '-c', '8', '-j', '2', '-t', '50'])
    assert.match(stdout, /number of transactions actually processed: 400\/400/)
  })
})
