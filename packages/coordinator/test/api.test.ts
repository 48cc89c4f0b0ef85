import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { ConfigError, startPooler } from '../src/index.ts'
import { withClient } from './support.ts'

const db = usePostgres({ databases: ['app'] })

const dirs: string[] = []
process.on('exit', () => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-api-'))
  dirs.push(dir)
  return dir
}

describe('startPooler', () => {
  test('serves queries from a config object, counts them, reloads and closes', async () => {
    const sigint = process.listenerCount('SIGINT')
    const sighup = process.listenerCount('SIGHUP')
    const pooler = await startPooler({
      config: {
        databases: { app: { host: '127.0.0.1', port: db.server.port, dbname: 'app' } },
        pgbouncer: { auth_type: 'trust', default_pool_size: 2 },
      },
      workers: 2,
      listen: '127.0.0.1:0',
      poolMode: 'transaction',
      logLevel: 'silent',
    })
    try {
      assert.equal(pooler.host, '127.0.0.1')
      assert.ok(pooler.port > 0)
      // It is the program's process: the pooler leaves its signals alone.
      assert.equal(process.listenerCount('SIGINT'), sigint)
      assert.equal(process.listenerCount('SIGHUP'), sighup)
      const client = { host: pooler.host, port: pooler.port, user: 'postgres', database: 'app' }
      const row = await withClient(
        client,
        async (c) => (await c.query('select 41 + 1 as n')).rows[0],
      )
      assert.equal(row.n, 42)
      const stats = await pooler.stats()
      assert.equal(stats.workers, 2)
      const app = stats.pools.find((p) => p.database === 'app' && p.user === 'postgres')
      assert.ok(app, JSON.stringify(stats))
      assert.ok(app.queryCount >= 1, JSON.stringify(app))

      // A bad reload throws and changes nothing; a good one serves the new entry.
      assert.throws(
        () => pooler.reload({ databases: { app: 'host=127.0.0.1 port=nope' } }),
        (err: unknown) => err instanceof ConfigError && err.key === 'databases.app',
      )
      pooler.reload({
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
          other: `host=127.0.0.1 port=${db.server.port} dbname=postgres`,
        },
        pgbouncer: { auth_type: 'trust' },
      })
      const other = await withClient({ ...client, database: 'other' }, async (c) => {
        return (await c.query('select current_database() as d')).rows[0].d
      })
      assert.equal(other, 'postgres')
    } finally {
      await pooler.close()
    }
  })

  test('a bad config throws ConfigError with file, line and key, as the command reports', async () => {
    const dir = tempDir()
    const ini = join(dir, 'pgbouncer.ini')
    writeFileSync(
      ini,
      '[databases]\napp = host=127.0.0.1\n\n[pgbouncer]\ndefault_pool_size = lots\n',
    )
    await assert.rejects(
      startPooler({ configFile: ini, logLevel: 'silent', workers: 1 }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.file === ini &&
        err.line === 5 &&
        err.key === 'default_pool_size' &&
        err.code === 'ERR_CONFIG',
    )
    await assert.rejects(
      startPooler({ config: { pgbouncer: { default_pool_size: 'lots' } }, logLevel: 'silent' }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.file === null &&
        err.key === 'pgbouncer.default_pool_size' &&
        /default_pool_size/.test(err.message),
    )
    await assert.rejects(
      startPooler({ configFile: join(dir, 'missing.ini'), logLevel: 'silent' }),
      (err: unknown) => err instanceof ConfigError && /cannot read config file/.test(err.message),
    )
    await assert.rejects(
      startPooler({ workers: 0, logLevel: 'silent' }),
      (err: unknown) => err instanceof ConfigError && err.key === 'workers',
    )
  })

  test('after close() nothing keeps the process alive', async () => {
    // A program of its own, since the test runner's process has handles of its own.
    const dir = tempDir()
    const script = join(dir, 'program.mjs')
    const entry = pathToFileURL(new URL('../src/index.ts', import.meta.url).pathname).href
    writeFileSync(
      script,
      `import pg from ${JSON.stringify(import.meta.resolve('pg'))}
import { startPooler } from ${JSON.stringify(entry)}
const pooler = await startPooler({
  config: { databases: { '*': 'host=127.0.0.1 port=${db.server.port}' }, pgbouncer: { auth_type: 'trust' } },
  listen: '127.0.0.1:0', workers: 2, logLevel: 'silent',
})
const client = new pg.Client({ host: pooler.host, port: pooler.port, user: 'postgres', database: 'app' })
await client.connect()
const { rows } = await client.query('select 1 as one')
await client.end()
await pooler.close()
console.log('served', rows[0].one)
`,
    )
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
    })
    child.stderr.on('data', (d) => {
      out += d
    })
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
      child.on('exit', (c) => {
        clearTimeout(timer)
        resolve(c)
      })
    })
    assert.equal(code, 0, out)
    assert.match(out, /served 1/)
  })
})
