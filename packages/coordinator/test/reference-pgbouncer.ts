import { execFileSync, spawn } from 'node:child_process'
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { findTool, skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import pg from 'pg'
import type { IniSpec, Pooler } from './support.ts'

/**
 * The installed PgBouncer (1.18 on this project's machines), the reference some
 * tests compare with; without it (or with PGBC_TEST_WITHOUT=pgbouncer) they skip.
 */
export const PGBOUNCER = findTool('pgbouncer') ?? undefined
export const NO_PGBOUNCER = skipWithout('pgbouncer', PGBOUNCER)

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}

/**
 * Starts the real PgBouncer on an ini built like writeIni's (on a free port,
 * without a unix socket unless the spec names unix_socket_dir, logging to a file), as the `postgres` OS user when
 * the tests run as root (PgBouncer refuses root). Resolves once it answers.
 * The result has the same shape as startPooler's, so one test body can run
 * against both; `output()` is PgBouncer's log file, `ini` its configuration.
 */
export async function startPgBouncer(spec: IniSpec): Promise<Pooler & { ini: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-reference-'))
  const port = await freePort()
  const settings: Record<string, string | number> = {
    listen_addr: '127.0.0.1',
    auth_type: 'trust',
    ...spec.pgbouncer,
    listen_port: port,
    // No socket of its own unless the test asks: then the directory also
    // serves entries without host=, and must be writable by the postgres user.
    unix_socket_dir: spec.pgbouncer?.unix_socket_dir ?? '',
    logfile: join(dir, 'pgbouncer.log'),
    pidfile: join(dir, 'pgbouncer.pid'),
    auth_file: join(dir, 'userlist.txt'),
  }
  const userlist = { postgres: '', ...spec.userlist }
  writeFileSync(
    settings.auth_file as string,
    `${Object.entries(userlist)
      .map(([u, p]) => `"${u}" "${p}"`)
      .join('\n')}\n`,
  )
  const lines = ['[databases]']
  for (const [name, value] of Object.entries(spec.databases)) lines.push(`${name} = ${value}`)
  if (spec.users) {
    lines.push('', '[users]')
    for (const [name, value] of Object.entries(spec.users)) lines.push(`${name} = ${value}`)
  }
  lines.push('', '[pgbouncer]')
  for (const [key, value] of Object.entries(settings)) lines.push(`${key} = ${value}`)
  const ini = join(dir, 'pgbouncer.ini')
  writeFileSync(ini, `${lines.join('\n')}\n`)
  let ids: { uid: number; gid: number } | null = null
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }))
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }))
    ids = { uid, gid }
    for (const f of ['', 'userlist.txt', 'pgbouncer.ini']) chownSync(join(dir, f), uid, gid)
  }
  const child = spawn(PGBOUNCER!, [ini], { stdio: 'ignore', ...(ids ?? {}) })
  child.unref()
  process.on('exit', () => {
    child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const host = '127.0.0.1'
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host, port }, () => {
        s.destroy()
        resolve(true)
      })
      s.on('error', () => resolve(false))
    })
    if (up) break
    if (i > 200 || child.exitCode !== null) throw new Error('PgBouncer did not start')
    await new Promise((r) => setTimeout(r, 50))
  }
  const output = () => {
    try {
      return readFileSync(settings.logfile as string, 'utf8')
    } catch {
      return ''
    }
  }
  return {
    ini,
    host,
    port,
    child,
    exited,
    output,
    url: (o = {}) =>
      `postgres://${encodeURIComponent(o.user ?? 'postgres')}@${host}:${port}/${encodeURIComponent(o.database ?? 'postgres')}`,
    client: (config = {}) =>
      new pg.Client({ host, port, user: 'postgres', database: 'postgres', ...config }),
    async stop(signal = 'SIGQUIT') {
      if (child.exitCode === null) child.kill(signal === 'SIGQUIT' ? 'SIGTERM' : signal)
      return exited
    },
  }
}
