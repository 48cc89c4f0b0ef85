import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { NO_PGBOUNCER, PGBOUNCER } from './reference-pgbouncer.ts'
import { freePort } from './support.ts'

// An address another process holds stops the start: one line on stderr, the
// reason, and exit status 1; nothing on stdout, no stack. The logfile keeps
// the same reason as a record. PgBouncer 1.18 exits 1 too (with its two log
// lines, "cannot listen on ..." and "nowhere to listen on").

const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname

interface Outcome {
  code: number | null
  stdout: string
  stderr: string
  log: string
}

function workDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-in-use-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  // PgBouncer runs as postgres when the tests run as root.
  chmodSync(dir, 0o777)
  return dir
}

function ini(dir: string, settings: Record<string, string | number>): string {
  const path = join(dir, 'pgbouncer.ini')
  const lines = ['[databases]', '* = host=127.0.0.1 port=5432', '', '[pgbouncer]']
  for (const [key, value] of Object.entries({
    listen_addr: '127.0.0.1',
    auth_type: 'trust',
    unix_socket_dir: '',
    logfile: join(dir, 'pooler.log'),
    ...settings,
  }))
    lines.push(`${key} = ${value}`)
  writeFileSync(path, `${lines.join('\n')}\n`)
  return path
}

function run(command: string, args: string[], asPostgres: boolean): Promise<Outcome> {
  return new Promise((resolve) => {
    const ids = asPostgres && process.getuid?.() === 0 ? postgresIds() : {}
    execFile(command, args, { timeout: 30_000, ...ids }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null
      resolve({ code, stdout, stderr, log: '' })
    })
  })
}

function postgresIds(): { uid: number; gid: number } {
  const [, , uid, gid] =
    readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('postgres:'))
      ?.split(':') ?? []
  return { uid: Number(uid), gid: Number(gid) }
}

type Target = (dir: string, iniPath: string, extra: string[]) => Promise<Outcome>

const readLog = (dir: string) => {
  try {
    return readFileSync(join(dir, 'pooler.log'), 'utf8')
  } catch {
    return ''
  }
}

const TARGETS: [string, Target, false | string][] = [
  [
    'pgbouncer-cluster',
    async (dir, path, extra) => ({
      ...(await run(process.execPath, [BIN, path, ...extra], false)),
      log: readLog(dir),
    }),
    false,
  ],
  [
    'PgBouncer 1.18',
    async (dir, path) => {
      if (process.getuid?.() === 0) {
        const { uid, gid } = postgresIds()
        chownSync(path, uid, gid)
      }
      return { ...(await run(PGBOUNCER!, [path], true)), log: readLog(dir) }
    },
    NO_PGBOUNCER,
  ],
]

/** A TCP listener without SO_REUSEPORT on a free port of 127.0.0.1. */
async function holdPort(): Promise<{ port: number; close(): void }> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() }
}

async function holdSocket(dir: string, port: number): Promise<{ close(): void }> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(join(dir, `.s.PGSQL.${port}`), resolve))
  return { close: () => server.close() }
}

function assertOneLine(name: string, r: Outcome, reason: RegExp): void {
  const all = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}\nlog:\n${r.log}`
  assert.equal(r.code, 1, all)
  if (name !== 'pgbouncer-cluster') return
  assert.equal(r.stdout, '', all)
  const lines = r.stderr.trimEnd().split('\n')
  assert.equal(lines.length, 1, all)
  assert.match(lines[0]!, /^pgbouncer-cluster: could not start: /)
  assert.match(lines[0]!, reason)
  assert.doesNotMatch(r.stderr, /\n\s+at |"stack"|\{"level"/)
  const records = r.log
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l))
  assert.deepEqual(
    records.map((l) => l.msg),
    ['could not start'],
    r.log,
  )
  assert.match(records[0].err, reason)
}

describe('an address in use', { timeout: 120_000 }, () => {
  for (const [name, start, skip] of TARGETS) {
    for (const reuse of [0, 1]) {
      for (const workers of name === 'pgbouncer-cluster' ? [1, 2] : [1]) {
        test(`${name}: a TCP port another process listens on, so_reuseport = ${reuse}${name === 'pgbouncer-cluster' ? `, ${workers} workers` : ''}`, {
          skip,
        }, async () => {
          const holder = await holdPort()
          try {
            const dir = workDir()
            const path = ini(dir, { listen_port: holder.port, so_reuseport: reuse })
            const r = await start(dir, path, ['--workers', String(workers)])
            assertOneLine(
              name,
              r,
              new RegExp(`cannot listen on 127\\.0\\.0\\.1:${holder.port}: the port is in use`),
            )
            if (name !== 'pgbouncer-cluster')
              assert.match(r.log + r.stderr, /Address already in use/)
          } finally {
            holder.close()
          }
        })
      }
    }
  }

  // PgBouncer 1.18 refuses a socket file only when a PgBouncer answers on it
  // (check_old_process_unix); one whose listener says nothing it replaces.
  for (const reuse of [0, 1]) {
    test(`pgbouncer-cluster: a unix socket another process answers on, so_reuseport = ${reuse}`, async () => {
      const dir = workDir()
      const port = await freePort()
      const holder = await holdSocket(dir, port)
      try {
        const path = ini(dir, { listen_port: port, unix_socket_dir: dir, so_reuseport: reuse })
        const r = await TARGETS[0]![1](dir, path, ['--workers', '2'])
        assertOneLine(
          'pgbouncer-cluster',
          r,
          new RegExp(`cannot listen on unix socket ${dir}/\\.s\\.PGSQL\\.${port}: it is in use`),
        )
      } finally {
        holder.close()
      }
    })
  }

  test('pgbouncer-cluster: a --metrics port in use', async () => {
    const holder = await holdPort()
    try {
      const dir = workDir()
      const path = ini(dir, { listen_port: await freePort() })
      const r = await TARGETS[0]![1](dir, path, ['--metrics', `127.0.0.1:${holder.port}`])
      assertOneLine(
        'pgbouncer-cluster',
        r,
        new RegExp(
          `cannot listen on 127\\.0\\.0\\.1:${holder.port} for --metrics: the port is in use`,
        ),
      )
    } finally {
      holder.close()
    }
  })
})
