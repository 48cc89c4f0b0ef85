import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'

const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname

export interface IniSpec {
  /** `[databases]` lines, e.g. `{ app: 'host=127.0.0.1 port=5432 dbname=postgres' }`. */
  databases: Record<string, string>
  pgbouncer?: Record<string, string | number>
  users?: Record<string, string>
  /** userlist.txt entries: user → password, md5 hash or SCRAM secret. */
  userlist?: Record<string, string>
  /** `[peers]` lines: peer id → `host=... port=...`. */
  peers?: Record<string, string>
}

/** A fresh temp dir, removed when the test process ends. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-test-'))
  tempDirs.push(dir)
  return dir
}

/** Writes a pgbouncer.ini (and userlist.txt) into a fresh temp dir; returns its path. */
export function writeIni(spec: IniSpec): string {
  const dir = tempDir()

  const lines = ['[databases]']
  for (const [name, value] of Object.entries(spec.databases)) lines.push(`${name} = ${value}`)
  if (spec.users) {
    lines.push('', '[users]')
    for (const [name, value] of Object.entries(spec.users)) lines.push(`${name} = ${value}`)
  }
  if (spec.peers) {
    lines.push('', '[peers]')
    for (const [id, value] of Object.entries(spec.peers)) lines.push(`${id} = ${value}`)
  }
  const settings: Record<string, string | number> = {
    listen_addr: '127.0.0.1',
    listen_port: 0,
    auth_type: 'trust',
    ...spec.pgbouncer,
  }
  if (spec.userlist) {
    const file = join(dir, 'userlist.txt')
    writeFileSync(
      file,
      `${Object.entries(spec.userlist)
        .map(([u, p]) => `"${u.replaceAll('"', '""')}" "${p.replaceAll('"', '""')}"`)
        .join('\n')}\n`,
    )
    settings.auth_file = file
  }
  lines.push('', '[pgbouncer]')
  for (const [key, value] of Object.entries(settings)) lines.push(`${key} = ${value}`)
  const path = join(dir, 'pgbouncer.ini')
  writeFileSync(path, `${lines.join('\n')}\n`)
  return path
}

export interface Pooler {
  readonly host: string
  readonly port: number
  readonly child: ChildProcess
  /** Everything the process printed so far (stdout and stderr). */
  output(): string
  url(opts?: { user?: string; password?: string; database?: string }): string
  client(opts?: pg.ClientConfig): pg.Client
  /**
   * Sends a signal (SIGQUIT, an immediate stop, unless told) and resolves with
   * the exit code. SIGTERM would wait for every client to leave (PgBouncer 1.23+).
   */
  stop(signal?: NodeJS.Signals): Promise<number | null>
  readonly exited: Promise<number | null>
}

// Everything a test file started goes when its process ends, whatever the outcome.
// (node:test's after() inside a before() hook would run right after that hook.)
const running = new Set<ChildProcess>()
const tempDirs: string[] = []
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
})

/** Starts `pgbouncer-cluster` as users do, and waits until it logs that it listens. */
export async function startPooler(
  ini: string | null,
  opts: { workers?: number; args?: string[]; timeoutMs?: number } = {},
): Promise<Pooler> {
  const args = [
    BIN,
    ...(ini === null ? [] : [ini]),
    '--workers',
    String(opts.workers ?? 2),
    ...(opts.args ?? []),
  ]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  running.add(child)
  // A forgotten pooler must not keep the test process alive; 'exit' above kills it.
  child.unref()
  let out = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s
  })
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    out += s
  })
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => {
      running.delete(child)
      resolve(code)
    })
  })
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000)
  let listen: { host: string; port: number } | null = null
  while (listen === null) {
    const m = /"host":"([^"]+)","port":(\d+)[^\n]*listening on/.exec(out)
    if (m) listen = { host: m[1], port: Number(m[2]) }
    else if (child.exitCode !== null)
      throw new Error(`pgbouncer-cluster exited ${child.exitCode}:\n${out}`)
    else if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`pgbouncer-cluster did not start listening:\n${out}`)
    } else await new Promise((r) => setTimeout(r, 25))
  }
  const { host, port } = listen
  ;(child.stdout as unknown as { unref?: () => void }).unref?.()
  ;(child.stderr as unknown as { unref?: () => void }).unref?.()
  const pooler: Pooler = {
    host,
    port,
    child,
    exited,
    output: () => out,
    url: (o = {}) =>
      `postgres://${encodeURIComponent(o.user ?? 'postgres')}${o.password ? `:${encodeURIComponent(o.password)}` : ''}@${host}:${port}/${encodeURIComponent(o.database ?? 'postgres')}`,
    client: (config = {}) =>
      new pg.Client({ host, port, user: 'postgres', database: 'postgres', ...config }),
    async stop(signal = 'SIGQUIT') {
      if (child.exitCode === null) child.kill(signal)
      return exited
    },
  }
  return pooler
}

/** A TCP port on 127.0.0.1 that nothing listened on a moment ago (for configs that name ports ahead). */
export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Runs `fn` on a fresh connected client and always ends it. */
export async function withClient<T>(
  config: pg.ClientConfig,
  fn: (c: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client(config)
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end().catch(() => {})
  }
}

/** The /metrics base URL a pooler started with `--metrics HOST:0` logged. */
export function metricsBase(pooler: Pooler): string {
  const m = /metrics on (http:\/\/[^"\s]+)\/metrics/.exec(pooler.output())
  assert.ok(m, `no metrics address in the log:\n${pooler.output()}`)
  return m[1]!
}

export type Samples = Map<string, number>

/** A Prometheus text body as name{labels} → value, labels in the order the body has them. */
export function parseMetrics(body: string): Samples {
  const out: Samples = new Map()
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    out.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return out
}

/** GET base/metrics, parsed. */
export async function scrapeMetrics(base: string): Promise<Samples> {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(15_000) })
  assert.equal(res.status, 200)
  return parseMetrics(await res.text())
}
