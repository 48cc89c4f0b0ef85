// The published package as a user gets it: `npm run pack`'s tarball installed
// alone into an empty directory, run on every Node version package.json's
// engines claims (the oldest, 22.12, from the `node` npm package in a cache
// directory; the newest, the repository's own Node 24), refused by the host's
// Node 20, and used as a library from a plain .mjs file.

import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import pg from 'pg'
import { buildPackage, MIN_NODE, packTarball } from './package-build.ts'
import { usePostgres } from './pg-harness.ts'

/** Each test starts Node processes, some several: generous, for a loaded machine. */
const SLOW = { timeout: 300_000 }
const OLDEST_NODE = `${MIN_NODE}.0`
const work = mkdtempSync(join(tmpdir(), 'pgbc-package-'))
const app = join(work, 'app')
const bin = join(app, 'node_modules', '.bin', 'pgbouncer-cluster')
const db = usePostgres()
let tarball = ''
let oldestNode = ''

/**
 * npm as a user's shell runs it: on the host's own Node, without the node_modules/.bin
 * directories and npm_* variables of the `npm test` this may run under. Under the
 * repository's Node, npm would read its global npmrc from that Node's prefix and miss the
 * host's (where a host keeps its registry CA file, for one), and npm_config_local_prefix
 * would make `npm install` work on the repository instead of `cwd`.
 */
function userNpm(args: string[], cwd: string): string {
  const env = userEnv()
  env.PATH = (process.env.PATH ?? '')
    .split(':')
    .filter((dir) => !/node_modules[/\\](\.bin|node[/\\]bin)$/.test(dir))
    .join(':')
  return execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd,
    encoding: 'utf8',
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 600_000,
  })
}

function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key)) env[key] = value
  }
  env.PATH = `${join(process.execPath, '..')}:${process.env.PATH}`
  return env
}

/** The `node` npm package at `version`, installed once per machine in the temp dir. */
function nodeBinary(version: string): string {
  const dir = join(tmpdir(), `pgbc-node-${version}`)
  const path = join(dir, 'node_modules', 'node', 'bin', 'node')
  const works = () => {
    try {
      return execFileSync(path, ['--version'], { encoding: 'utf8' }).trim() === `v${version}`
    } catch {
      return false
    }
  }
  if (works()) return path
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  // The package's install script fetches the platform's binary from the registry.
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({ private: true, allowScripts: { node: true } }),
  )
  userNpm(['install', `node@${version}`], dir)
  assert.ok(works(), `node@${version} did not install a working binary at ${path}`)
  return path
}

function run(node: string, args: string[], cwd = app) {
  return spawnSync(node, args, { cwd, encoding: 'utf8', timeout: 120_000, env: userEnv() })
}

/** One line on stderr, no stack trace, no Node error code. */
function assertOneLine(stderr: string): void {
  const lines = stderr.trimEnd().split('\n')
  assert.equal(lines.length, 1, stderr)
  assert.doesNotMatch(stderr, /\n\s+at |ERR_[A-Z_]+/, stderr)
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}

/** Starts the installed command, waits for it to listen, runs a query through it, stops it. */
async function serveOneQuery(node: string): Promise<void> {
  const port = await freePort()
  const ini = join(work, `serve-${port}.ini`)
  writeFileSync(
    ini,
    `[databases]\n* = host=127.0.0.1 port=${db.server.port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = ${port}\nauth_type = trust\npool_mode = transaction\n`,
  )
  const child = spawn(node, [bin, ini, '--workers', '2'], {
    cwd: app,
    env: userEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d) => {
    out += d
  })
  child.stderr.on('data', (d) => {
    out += d
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  try {
    const deadline = Date.now() + 60_000
    while (!/listening on/.test(out)) {
      assert.equal(child.exitCode, null, `exited early:\n${out}`)
      assert.ok(Date.now() < deadline, `did not listen:\n${out}`)
      await new Promise((r) => setTimeout(r, 50))
    }
    const client = new pg.Client({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      database: 'postgres',
    })
    await client.connect()
    try {
      const { rows } = await client.query('select 6 * 7 as n, version() as v')
      assert.equal(rows[0].n, 42)
      assert.match(rows[0].v, /PostgreSQL/)
    } finally {
      await client.end()
    }
  } finally {
    child.kill('SIGQUIT')
  }
  assert.equal(await exited, 0, out)
}

/** A plain .mjs program using the API; it must end by itself once it closed the pooler. */
function apiProgram(node: string): void {
  const script = join(app, 'program.mjs')
  writeFileSync(
    script,
    `import pg from ${JSON.stringify(import.meta.resolve('pg'))}
import { ConfigError, startPooler } from 'pgbouncer-cluster'
try {
  await startPooler({ config: { pgbouncer: { pool_mode: 'sometimes' } }, logLevel: 'silent' })
} catch (err) {
  if (!(err instanceof ConfigError) || err.key !== 'pgbouncer.pool_mode') throw err
}
const pooler = await startPooler({
  config: { databases: { '*': 'host=127.0.0.1 port=${db.server.port}' }, pgbouncer: { auth_type: 'trust' } },
  listen: '127.0.0.1:0', workers: 2, poolMode: 'transaction', logLevel: 'warn',
})
const client = new pg.Client({ host: pooler.host, port: pooler.port, user: 'postgres', database: 'postgres' })
await client.connect()
const { rows } = await client.query('select 1 as one')
await client.end()
const stats = await pooler.stats()
await pooler.close()
console.log('served', rows[0].one, 'queries', stats.pools[0].queryCount)
`,
  )
  const r = run(node, [script])
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`)
  assert.match(r.stdout, /served 1 queries [1-9]/)
}

describe('the packed tarball, installed alone', () => {
  before(
    async () => {
      const built = await buildPackage(join(work, 'build'))
      const dist = join(work, 'dist')
      tarball = packTarball(built, dist)
      assert.deepEqual(readdirSync(dist), [tarball.split('/').pop()])
      mkdirSync(app)
      writeFileSync(join(app, 'package.json'), '{ "private": true }\n')
      userNpm(['install', tarball], app)
      oldestNode = nodeBinary(OLDEST_NODE)
    },
    { timeout: 600_000 },
  )
  after(() => rmSync(work, { recursive: true, force: true }))

  test(
    'ships compiled JavaScript with types, a files list, and no private dependency',
    SLOW,
    () => {
      const manifest = JSON.parse(
        readFileSync(join(app, 'node_modules', 'pgbouncer-cluster', 'package.json'), 'utf8'),
      )
      assert.deepEqual(manifest.files, ['bin', 'lib'])
      assert.equal(manifest.engines.node, `>=${MIN_NODE}`)
      for (const dep of Object.keys(manifest.dependencies)) {
        assert.doesNotMatch(dep, /^@pgbouncer-cluster\//)
      }
      const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n')
      assert.ok(files.includes('package/lib/index.js'))
      assert.ok(files.includes('package/lib/index.d.ts'))
      assert.ok(files.includes('package/lib/thread.js'), 'the worker thread is its own file')
      assert.deepEqual(
        files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')),
        [],
        'no TypeScript sources',
      )
    },
  )

  test('--version on the newest and the oldest Node it claims', SLOW, () => {
    for (const node of [process.execPath, oldestNode]) {
      const r = run(node, [bin, '--version'])
      assert.equal(r.status, 0, r.stderr)
      // The same words as the console's SHOW VERSION.
      assert.equal(r.stdout.trim(), 'PgBouncer 1.18.0 (pgbouncer-cluster 0.1.0)')
    }
  })

  test(
    'the host Node 20 is refused in one line, by the command and by an import of the API',
    SLOW,
    (t) => {
      const system = ['/usr/bin/node', '/usr/local/bin/node'].find((p) => existsSync(p))
      const version = system && execFileSync(system, ['--version'], { encoding: 'utf8' }).trim()
      if (!version || Number(version.slice(1).split('.')[0]) >= 22) {
        t.skip('no Node.js older than 22 at /usr/bin/node or /usr/local/bin/node')
        return
      }
      const r = run(system!, [bin, '--version'])
      assert.equal(r.status, 1)
      const line = `pgbouncer-cluster needs Node.js >= ${MIN_NODE} (this is ${version.slice(1)})`
      assert.equal(r.stderr, `${line}\n`)
      // A program importing the API gets the same line as the import's error.
      const program = join(app, 'old-node.mjs')
      writeFileSync(
        program,
        "import('pgbouncer-cluster').then(() => console.log('imported'), (err) => console.log(err.message))\n",
      )
      const imported = run(system!, [program])
      assert.equal(imported.stdout, `${line}\n`, imported.stderr)
    },
  )

  test('serves a query with --workers 2 on Node 24', SLOW, async () => {
    await serveOneQuery(process.execPath)
  })

  test(`serves a query with --workers 2 on Node ${OLDEST_NODE}`, SLOW, async () => {
    await serveOneQuery(oldestNode)
  })

  test('startPooler from a plain .mjs file that exits by itself', SLOW, () => {
    apiProgram(process.execPath)
    apiProgram(oldestNode)
  })

  test('the types check for a TypeScript user', SLOW, () => {
    writeFileSync(
      join(app, 'user.ts'),
      `import { type Pooler, startPooler } from 'pgbouncer-cluster'
const pooler: Pooler = await startPooler({ config: { databases: { app: 'host=db' } }, workers: 2 })
const port: number = pooler.port
await pooler.close({ mode: 'wait-for-servers' })
export { port }
`,
    )
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'nodenext',
          target: 'es2022',
          strict: true,
          noEmit: true,
          types: [],
        },
        files: ['user.ts'],
      }),
    )
    writeFileSync(join(app, 'package.json'), '{ "private": true, "type": "module" }\n')
    const tsc = new URL('../node_modules/typescript/bin/tsc', import.meta.url).pathname
    const r = run(process.execPath, [tsc, '-p', 'tsconfig.json'])
    assert.equal(r.status, 0, r.stdout + r.stderr)
  })

  test('--check: exit 0 with what it serves, exit 2 with file, line and key', SLOW, () => {
    const good = join(work, 'good.ini')
    writeFileSync(
      good,
      '[databases]\napp = host=127.0.0.1 port=5432 dbname=postgres\n\n[pgbouncer]\nlisten_port = 6432\nauth_type = trust\ndns_max_ttl = 10\n',
    )
    const ok = run(process.execPath, [bin, '--check', good])
    assert.equal(ok.status, 0, ok.stderr)
    assert.match(ok.stdout, /configuration is good/)
    assert.match(ok.stdout, /app -> 127\.0\.0\.1:5432, dbname postgres/)
    assert.match(ok.stdout, /accepted but not implemented .*dns_max_ttl/)
    const bad = join(work, 'bad.ini')
    writeFileSync(bad, '[databases]\napp = host=127.0.0.1\n\n[pgbouncer]\npool_mode = sometimes\n')
    const r = run(process.execPath, [bin, '--check', bad])
    assert.equal(r.status, 2)
    assert.match(r.stderr, new RegExp(`${bad}:5: pool_mode: `))
    assertOneLine(r.stderr)
  })

  test('an unreadable config: one line, exit 2', SLOW, () => {
    for (const path of [join(work, 'missing.ini'), work]) {
      const r = run(process.execPath, [bin, path])
      assert.equal(r.status, 2, r.stderr)
      assert.match(r.stderr, /cannot read config file/)
      assertOneLine(r.stderr)
    }
  })

  test('a port already taken: one line, exit 1', SLOW, async () => {
    const holder = net.createServer()
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve))
    const { port } = holder.address() as net.AddressInfo
    try {
      const r = run(process.execPath, [bin, '--listen', `127.0.0.1:${port}`, '--workers', '1'])
      assert.equal(r.status, 1)
      assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port}: the port is in use`))
      assertOneLine(r.stderr)
    } finally {
      holder.close()
    }
  })

  test('an install that lost a dependency: one line naming it, exit 1', SLOW, () => {
    const broken = join(work, 'broken')
    cpSync(app, broken, { recursive: true, verbatimSymlinks: true })
    rmSync(join(broken, 'node_modules', 'yargs'), { recursive: true })
    const r = run(process.execPath, [
      join(broken, 'node_modules', 'pgbouncer-cluster', 'bin', 'pgbouncer-cluster.js'),
      '--version',
    ])
    assert.equal(r.status, 1)
    assert.match(r.stderr, /cannot load yargs/)
    assertOneLine(r.stderr)
  })
})
