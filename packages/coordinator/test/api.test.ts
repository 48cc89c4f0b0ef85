import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pino from 'pino'
import { ConfigError, startPooler } from '../src/index.ts'
import { until, withClient } from './support.ts'

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

  test('reload({ databases }) keeps the running [pgbouncer] settings', async () => {
    const pooler = await startPooler({
      config: {
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'trust', max_client_conn: 7, admin_users: 'postgres' },
      },
      listen: '127.0.0.1:0',
      workers: 1,
      logLevel: 'silent',
    })
    try {
      pooler.reload({
        databases: { other: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
      })
      // auth_type stays trust (no password asked); the databases are the new ones.
      const client = { host: pooler.host, port: pooler.port, user: 'postgres' }
      const name = await withClient(
        { ...client, database: 'other' },
        async (c) => (await c.query('select current_database() as d')).rows[0].d,
      )
      assert.equal(name, 'postgres')
      await assert.rejects(
        withClient({ ...client, database: 'app' }, async () => {}),
        { message: 'no such database: app' },
      )
      const config = await withClient({ ...client, database: 'pgbouncer' }, async (c) => {
        const { rows } = await c.query('SHOW CONFIG')
        return new Map(rows.map((r: { key: string; value: string }) => [r.key, r.value]))
      })
      assert.equal(config.get('max_client_conn'), '7')
      assert.equal(config.get('auth_type'), 'trust')
    } finally {
      await pooler.close()
    }
  })

  test('a pino logger gets every record of the pooler and its workers, with its own bindings; the logfile too', async () => {
    const dir = tempDir()
    const logfile = join(dir, 'pooler.log')
    const lines: Record<string, unknown>[] = []
    const logger = pino(
      { level: 'info', base: { app: 'mine' } },
      { write: (line: string) => void lines.push(JSON.parse(line)) },
    )
    const pooler = await startPooler({
      config: {
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'trust', logfile },
      },
      listen: '127.0.0.1:0',
      workers: 2,
      logger,
    })
    try {
      await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'app' },
        (c) => c.query('select 1'),
      )
      await until('the login line', async () => lines.some((l) => l.msg === 'login'))
    } finally {
      await pooler.close()
    }
    const listening = lines.find((l) => String(l.msg).startsWith('listening on'))
    assert.equal(listening?.worker, 'coordinator', JSON.stringify(lines))
    assert.equal(listening?.app, 'mine')
    const login = lines.find((l) => l.msg === 'login')!
    assert.ok(login.worker === 0 || login.worker === 1, JSON.stringify(login))
    assert.equal(login.app, 'mine')
    assert.equal(login.db, 'app')
    assert.equal(login.level, 30)
    const file = readFileSync(logfile, 'utf8')
    assert.match(file, /"msg":"listening on/)
    assert.match(file, /"msg":"login"/)
  })

  test('a destination gets the JSON lines instead of stdout', async () => {
    const lines: string[] = []
    const pooler = await startPooler({
      config: {
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'trust' },
      },
      listen: '127.0.0.1:0',
      workers: 1,
      destination: { write: (line: string) => void lines.push(line) },
    })
    try {
      await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'app' },
        (c) => c.query('select 1'),
      )
      await until('the login line', async () => lines.some((l) => l.includes('"msg":"login"')))
    } finally {
      await pooler.close()
    }
    const records = lines.map((l) => JSON.parse(l))
    assert.ok(records.some((r) => r.worker === 'coordinator' && /^listening on/.test(r.msg)))
    assert.ok(records.some((r) => r.worker === 0 && r.msg === 'login'))
  })

  test('on a terminal it logs one human line per record, as the command does', async () => {
    const dir = tempDir()
    const script = join(dir, 'terminal.mjs')
    const entry = pathToFileURL(new URL('../src/index.ts', import.meta.url).pathname).href
    writeFileSync(
      script,
      `process.stdout.isTTY = true
const { startPooler } = await import(${JSON.stringify(entry)})
const pooler = await startPooler({
  config: { databases: { '*': 'host=127.0.0.1 port=${db.server.port}' }, pgbouncer: { auth_type: 'trust' } },
  listen: '127.0.0.1:0', workers: 1,
})
await pooler.close()
`,
    )
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [script], { timeout: 60_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stdout}${stderr}`)) : resolve(stdout),
      )
    })
    assert.match(out, /^\S+ INFO {2}\[coordinator\] listening on 127\.0\.0\.1:\d+/m)
    assert.doesNotMatch(out, /"level":/)
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
