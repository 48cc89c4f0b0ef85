import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type CliOptions, parseArgs, parseArgsWithYargs } from '../src/cli.ts'
import { NO_PGBOUNCER, PGBOUNCER } from './reference-pgbouncer.ts'
import { startPooler, withClient } from './support.ts'

const run = promisify(execFile)
const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname
const CLI = new URL('../src/cli.ts', import.meta.url).href

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args])
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

function tempFile(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-cli-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}

describe('the command line', () => {
  test('--help and --version answer and exit 0', async () => {
    const help = await cli(['--help'])
    assert.equal(help.code, 0)
    assert.match(help.stdout, /--workers/)
    assert.match(help.stdout, /--pool-mode/)
    const version = await cli(['--version'])
    assert.equal(version.code, 0)
    // The same words as the console's SHOW VERSION (admin-console.test.ts).
    assert.match(version.stdout.trim(), /^PgBouncer 1\.18\.0 \(pgbouncer-cluster \d+\.\d+\.\d+\)$/)
  })

  test('a broken config exits 2 with one message naming file, line and key', async () => {
    const ini = tempFile(
      'broken.ini',
      '[databases]\napp = host=127.0.0.1\n\n[pgbouncer]\nlisten_port = 6432\ndefault_pool_size = lots\n',
    )
    const { code, stderr } = await cli([ini])
    assert.equal(code, 2)
    assert.match(stderr, new RegExp(`${ini.replaceAll('/', '\\/')}:6: default_pool_size`))
    assert.equal(stderr.trim().split('\n').length, 1)
  })

  test('a key PgBouncer does not know exits 2 naming it', async () => {
    const ini = tempFile('unknown.ini', '[pgbouncer]\nlisten_port = 6432\nmax_clients = 5\n')
    const { code, stderr } = await cli([ini])
    assert.equal(code, 2)
    assert.match(stderr, /:3: max_clients/)
  })

  test('bad flags exit 2', async () => {
    assert.equal((await cli(['--workers', '0'])).code, 2)
    assert.equal((await cli(['--pool-mode', 'sometimes'])).code, 2)
    assert.equal((await cli(['--no-such-flag'])).code, 2)
  })

  test('a good command line reads the same without yargs as with it, and a bad one fails the same', async () => {
    const settle = (p: Promise<CliOptions>) =>
      p.then(
        (options) => ({ options }),
        (err: Error) => ({ error: err.message }),
      )
    const lines = [
      [],
      ['app.ini'],
      ['-w', '3', 'app.ini'],
      ['--workers=2', '--listen', '127.0.0.1:7000'],
      ['-l', '[::1]:6432', '--pool-mode', 'session', '--check', 'x.ini'],
      ['--no-check', '--log-level', 'debug', '--metrics', '127.0.0.1:9127'],
      ['--poolMode', 'statement', '--', 'x.ini'],
      ['0010'],
      ['--workers', '0'],
      ['--workers', 'two'],
      ['--workers', '1', '--workers', '2'],
      ['--workers'],
      ['--listen', '127.0.0.1:port'],
      ['--pool-mode', 'sometimes'],
      ['--no-such-flag'],
      ['-x'],
      ['a.ini', 'b.ini'],
    ]
    for (const argv of lines) {
      const quick = await settle(parseArgs(argv))
      assert.deepEqual(quick, await settle(parseArgsWithYargs(argv)), argv.join(' '))
    }
  })

  test('a good command line does not load yargs; --version does', async () => {
    const script = `
      import { registerHooks } from 'node:module'
      const resolved = []
      registerHooks({ resolve: (specifier, context, next) => { resolved.push(specifier); return next(specifier, context) } })
      const { parseArgs } = await import(${JSON.stringify(CLI)})
      await parseArgs(['--workers', '2', '--pool-mode', 'session', 'app.ini'])
      const good = resolved.includes('yargs')
      await parseArgs(['--version'])
      process.stdout.write('\\n' + JSON.stringify({ good, version: resolved.includes('yargs') }))
    `
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script])
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1) ?? ''), {
      good: false,
      version: true,
    })
  })

  test('without a file it listens on the given address and maps every database', async () => {
    const pooler = await startPooler(null, { workers: 1, args: ['--listen', '127.0.0.1:0'] })
    assert.equal(pooler.host, '127.0.0.1')
    assert.ok(pooler.port > 0)
    assert.equal(await pooler.stop('SIGTERM'), 0)
  })
})

describe('one pgbouncer.ini for PgBouncer and pgbouncer-cluster', () => {
  const db = usePostgres()

  test('the file that starts PgBouncer starts pgbouncer-cluster, and both serve the same query', {
    skip: NO_PGBOUNCER,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgbc-same-ini-'))
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
    const pgbouncerPort = await freePort()
    writeFileSync(join(dir, 'userlist.txt'), '"postgres" ""\n')
    const iniText = [
      '[databases]',
      `postgres = host=127.0.0.1 port=${db.server.port} dbname=postgres`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${pgbouncerPort}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      'default_pool_size = 5',
      'max_client_conn = 100',
      'server_reset_query = DISCARD ALL',
      'ignore_startup_parameters = extra_float_digits',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n')
    const ini = join(dir, 'pgbouncer.ini')
    writeFileSync(ini, iniText)
    const uid = Number((await run('id', ['-u', 'postgres'])).stdout)
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout)
    if (process.getuid?.() === 0)
      for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(join(dir, f), uid, gid)
    const bouncer = spawn(PGBOUNCER!, [ini], {
      stdio: 'ignore',
      ...(process.getuid?.() === 0 ? { uid, gid } : {}),
    })
    try {
      const query = (port: number) =>
        withClient(
          { host: '127.0.0.1', port, user: 'postgres', database: 'postgres' },
          async (c) => (await c.query('SELECT 6 * 7 AS answer')).rows,
        )
      let viaPgbouncer: unknown = null
      for (let i = 0; i < 100 && viaPgbouncer === null; i++) {
        viaPgbouncer = await query(pgbouncerPort).catch(
          () => new Promise((r) => setTimeout(() => r(null), 50)),
        )
      }
      assert.deepEqual(viaPgbouncer, [{ answer: 42 }])
      const pooler = await startPooler(ini, { workers: 2, args: ['--listen', '127.0.0.1:0'] })
      assert.deepEqual(await query(pooler.port), [{ answer: 42 }])
      assert.equal(await pooler.stop('SIGINT'), 0)
    } finally {
      bouncer.kill('SIGTERM')
    }
  })
})
