import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn } from 'node:child_process'
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { NO_PGBOUNCER, PGBOUNCER } from './reference-pgbouncer.ts'
import { freePort, startPooler, until, withClient } from './support.ts'

// `user =`: started as root, the pooler becomes that user once it listens,
// as PgBouncer does (PgBouncer switches before it binds, so it cannot take a
// port below 1024 that way; pgbouncer-cluster binds first). Each body runs
// against both.

const run = promisify(execFile)
const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname
const SRC = new URL('../src/', import.meta.url)
const WORKER_SRC = new URL('../../worker/src/', import.meta.url)

function account(name: string): { uid: number; gid: number } | null {
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }))
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }))
    return { uid, gid }
  } catch {
    return null
  }
}

const POSTGRES = account('postgres')
const NOT_ROOT =
  process.getuid?.() !== 0
    ? 'needs root: the tests start the pooler as root to see it become another user'
    : POSTGRES === null
      ? 'needs a postgres OS user'
      : false

/** Uid, Gid and Groups of every thread of `pid`, from /proc. */
function identities(pid: number): { uid: string; gid: string; groups: string }[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')
    const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? ''
    return {
      uid: field('Uid').split(/\s+/).join(' '),
      gid: field('Gid').split(/\s+/).join(' '),
      groups: field('Groups').trim(),
    }
  })
}

interface Started {
  pid: number
  port: number
  exited: Promise<number | null>
  output(): string
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/**
 * A directory the way a deployment has one: the ini, userlist and logfile
 * owned by `postgres` (which re-reads them after the switch), and a
 * world-writable sticky directory for the unix socket, as /tmp is.
 */
function deployment(pgPort: number, listenPort: number) {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-run-as-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  const sockets = join(dir, 'sockets')
  mkdirSync(sockets)
  chmodSync(sockets, 0o1777)
  chmodSync(dir, 0o755)
  const files = join(dir, 'files')
  mkdirSync(files)
  const userlist = join(files, 'userlist.txt')
  writeFileSync(userlist, '"postgres" ""\n')
  const ini = join(files, 'pgbouncer.ini')
  const settings = (extraDatabases: string[]) =>
    [
      '[databases]',
      `postgres = host=127.0.0.1 port=${pgPort} dbname=postgres`,
      ...extraDatabases,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${listenPort}`,
      `unix_socket_dir = ${sockets}`,
      'auth_type = trust',
      `auth_file = ${userlist}`,
      `logfile = ${join(files, 'pooler.log')}`,
      `pidfile = ${join(files, 'pooler.pid')}`,
      'user = postgres',
      'admin_users = postgres',
      '',
    ].join('\n')
  writeFileSync(ini, settings([]))
  for (const f of [files, userlist, ini]) chownSync(f, POSTGRES!.uid, POSTGRES!.gid)
  return {
    ini,
    socket: join(sockets, `.s.PGSQL.${listenPort}`),
    pidfile: join(files, 'pooler.pid'),
    logfile: join(files, 'pooler.log'),
    /** Adds a database entry, as an operator would before SIGHUP. */
    addDatabase(line: string) {
      writeFileSync(ini, settings([line]))
    },
  }
}

function startCluster(ini: string): Promise<Started> {
  return startPooler(ini, { workers: 2 }).then((p) => ({
    pid: p.child.pid!,
    port: p.port,
    exited: p.exited,
    output: p.output,
    stop: p.stop,
  }))
}

async function startReference(ini: string, port: number): Promise<Started> {
  // As root: PgBouncer itself switches to `user`.
  const child = spawn(PGBOUNCER!, [ini], { stdio: 'ignore' })
  child.unref()
  process.on('exit', () => child.kill('SIGKILL'))
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  await until('PgBouncer to answer', async () => {
    if (child.exitCode !== null) throw new Error(`PgBouncer exited ${child.exitCode}`)
    return withClient({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' }, () =>
      Promise.resolve(true),
    ).catch(() => false)
  })
  const log = ini.replace(/pgbouncer\.ini$/, 'pooler.log')
  return {
    pid: child.pid!,
    port,
    exited,
    output: () => (existsSync(log) ? readFileSync(log, 'utf8') : ''),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal === 'SIGQUIT' ? 'SIGTERM' : signal)
      return exited
    },
  }
}

const TARGETS: [string, (ini: string, port: number) => Promise<Started>, false | string][] = [
  ['pgbouncer-cluster', (ini) => startCluster(ini), NOT_ROOT],
  ['PgBouncer 1.18', startReference, NOT_ROOT || NO_PGBOUNCER],
]

describe('user = postgres, started as root', { timeout: 120_000 }, () => {
  const db = usePostgres()
  const ask = (port: number, database = 'postgres') =>
    withClient(
      { host: '127.0.0.1', port, user: 'postgres', database },
      async (c) => (await c.query('select current_database() as d')).rows[0].d as string,
    )

  for (const [name, start, skip] of TARGETS) {
    test(`${name}: every thread runs as postgres, its group alone; clients, SIGHUP, the socket file and the pidfile work as that user`, {
      skip,
    }, async () => {
      const port = await freePort()
      const d = deployment(db.server.port, port)
      const pooler = await start(d.ini, port)
      try {
        const { uid, gid } = POSTGRES!
        for (const t of identities(pooler.pid)) {
          assert.equal(t.uid, `${uid} ${uid} ${uid} ${uid}`, 'real, effective, saved, fs uid')
          assert.equal(t.gid, `${gid} ${gid} ${gid} ${gid}`)
          // root's groups and postgres' own supplementary ones are gone.
          assert.equal(t.groups, String(gid))
        }
        assert.equal(await ask(pooler.port), 'postgres')
        assert.equal(statSync(d.socket).uid, uid, 'the socket file is the user’s')
        assert.equal(
          await withClient(
            { host: dirOf(d.socket), port, user: 'postgres', database: 'postgres' },
            async (c) => (await c.query('select 1 as one')).rows[0].one,
          ),
          1,
        )
        assert.equal(readFileSync(d.pidfile, 'utf8').trim(), String(pooler.pid))
        if (name === 'pgbouncer-cluster') {
          // Both workers take clients: the sockets handed to postgres are still one group.
          const held = await Promise.all(
            Array.from({ length: 20 }, async () => {
              const c = new pg.Client(address(pooler.port, 'postgres'))
              await c.connect()
              return c
            }),
          )
          try {
            const rows = await withClient(address(pooler.port, 'pgbouncer'), async (c) => {
              return (await c.query('SHOW CLIENTS')).rows as { id: string; database: string }[]
            })
            const workers = new Set(
              rows.filter((r) => r.database === 'postgres').map((r) => Number(r.id) >>> 24),
            )
            assert.equal(workers.size, 2, JSON.stringify(rows))
          } finally {
            await Promise.all(held.map((c) => c.end()))
          }
        }

        // SIGHUP: the file, read again as postgres, brings a new database.
        d.addDatabase(`other = host=127.0.0.1 port=${db.server.port} dbname=template1`)
        process.kill(pooler.pid, 'SIGHUP')
        await until('the reload to serve the new database', () =>
          ask(pooler.port, 'other').then(
            (d) => d === 'template1',
            () => false,
          ),
        )
      } finally {
        await pooler.stop('SIGTERM')
      }
      assert.equal(existsSync(d.pidfile), false, 'the pidfile is removed at exit')
      assert.equal(existsSync(d.socket), false, 'the socket file is removed at exit')
      if (name === 'pgbouncer-cluster') {
        // Lines written after the switch reach the logfile root opened.
        assert.match(readFileSync(d.logfile, 'utf8'), /configuration file reloaded/)
        assert.match(readFileSync(d.logfile, 'utf8'), /"msg":"stopped"/)
      }
    })

    test(`${name}: a user that does not exist stops the start with PgBouncer's text`, {
      skip,
    }, async () => {
      const port = await freePort()
      const d = deployment(db.server.port, port)
      writeFileSync(
        d.ini,
        readFileSync(d.ini, 'utf8').replace('user = postgres', 'user = nosuchuser'),
      )
      if (name === 'pgbouncer-cluster') {
        const r = await run(process.execPath, [BIN, d.ini], { timeout: 30_000 }).then(
          () => ({ code: 0, stderr: '' }),
          (e: { code: number; stderr: string }) => e,
        )
        assert.equal(r.code, 1)
        assert.equal(
          r.stderr,
          "pgbouncer-cluster: could not start: could not find user 'nosuchuser' to switch to\n",
        )
      } else {
        const r = await run(PGBOUNCER!, [d.ini], { timeout: 30_000 }).then(
          () => ({ code: 0, stderr: '' }),
          (e: { code: number; stderr: string }) => e,
        )
        assert.equal(r.code, 1)
        assert.match(r.stderr, /FATAL could not find user 'nosuchuser' to switch to/)
      }
    })
  }

  test('pgbouncer-cluster: a worker started after the switch joins the port and replaces the socket file', {
    skip: NOT_ROOT,
  }, async () => {
    // The supervisor's restart, in a program of its own (the switch is process-wide).
    const port = await freePort()
    const d = deployment(db.server.port, port)
    const program = join(dirOf(d.ini), 'restart.mjs')
    writeFileSync(
      program,
      `import pg from ${JSON.stringify(import.meta.resolve('pg'))}
import { Cluster } from ${JSON.stringify(new URL('cluster.ts', SRC).href)}
import { loadConfig } from ${JSON.stringify(new URL('config/config.ts', SRC).href)}
import { findUser } from ${JSON.stringify(new URL('privileges.ts', SRC).href)}
import { createLogger } from ${JSON.stringify(new URL('log.ts', WORKER_SRC).href)}
const config = loadConfig(${JSON.stringify(d.ini)})
const log = createLogger({ level: 'warn', worker: 'coordinator' })
const cluster = new Cluster({ config, workers: 2, logLevel: 'warn', log, runAs: findUser('postgres'), signals: false })
await cluster.start()
const served = async (host) => {
  const c = new pg.Client({ host, port: ${port}, user: 'postgres', database: 'postgres' })
  await c.connect()
  const { rows } = await c.query('select 1 as one')
  await c.end()
  return rows[0].one
}
for (const id of [0, 1]) {
  const old = cluster.workerThread(id)
  await old.terminate()
  while ([null, old].includes(cluster.workerThread(id))) await new Promise((r) => setTimeout(r, 20))
  await cluster.workerReady(id)
}
const result = { uid: process.getuid(), tcp: 0, unix: await served(${JSON.stringify(dirOf(d.socket))}) }
for (let i = 0; i < 20; i++) result.tcp += await served('127.0.0.1')
await cluster.stop('immediate')
process.stdout.write('\\n' + JSON.stringify(result))
`,
    )
    const { stdout } = await run(process.execPath, [program], { timeout: 60_000 })
    assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1)!), {
      uid: POSTGRES!.uid,
      tcp: 20,
      unix: 1,
    })
    assert.equal(existsSync(d.socket), false)
  })

  test('pgbouncer-cluster: root without user = says so in one start-up warning, in the logfile too', {
    skip: process.getuid?.() !== 0 && 'needs root',
  }, async () => {
    const port = await freePort()
    const d = deployment(db.server.port, port)
    writeFileSync(d.ini, readFileSync(d.ini, 'utf8').replace('user = postgres\n', ''))
    const pooler = await startCluster(d.ini)
    try {
      await until('the warning', async () => /running as root/.test(pooler.output()))
      assert.equal(pooler.output().match(/running as root/g)?.length, 1, pooler.output())
      assert.match(readFileSync(d.logfile, 'utf8'), /"level":40[^\n]*running as root: set user =/)
      assert.equal(identities(pooler.pid)[0]!.uid, '0 0 0 0')
    } finally {
      await pooler.stop()
    }
  })
})

function address(port: number, database: string): pg.ClientConfig {
  return { host: '127.0.0.1', port, user: 'postgres', database }
}

function dirOf(path: string): string {
  return path.slice(0, path.lastIndexOf('/'))
}
