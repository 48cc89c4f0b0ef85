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

/** Polls `check` until it holds; fails after `ms` (generous: the host is shared). */
export async function until(
  what: string,
  check: () => Promise<boolean>,
  ms = 20_000,
): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const CANCEL_REQUEST_CODE = 80877102
const SSL_REQUEST_CODE = 80877103

export interface CancelRelay {
  readonly port: number
  /** While true, CancelRequests wait at the relay until release(). */
  hold: boolean
  /** Each CancelRequest waits a random 0..jitterMs ms before it goes on. */
  jitterMs: number
  /** CancelRequests waiting now. */
  readonly held: number
  /** CancelRequests sent on to PostgreSQL. */
  readonly forwarded: number
  /** Of those, the ones PostgreSQL closed: it has acted on them. */
  readonly taken: number
  release(): void
  /** Resolves once no cancel is on its way for a while (bounded). */
  settled(): Promise<void>
  close(): void
}

/**
 * A TCP relay in front of the real PostgreSQL. Everything passes through at
 * once, except CancelRequests, which it can hold or delay: the test decides
 * when PostgreSQL sees them. It reads each connection's first packets to tell
 * a CancelRequest (an SSLRequest may come first, as server_tls_sslmode=prefer
 * sends it: PostgreSQL's answer goes back and the next packet is looked at).
 */
export async function cancelRelay(pgPort: number): Promise<CancelRelay> {
  const sockets = new Set<net.Socket>()
  const waiting: (() => void)[] = []
  let forwarded = 0
  let taken = 0
  let pending = 0
  // Half-open allowed both ways: the pooler ends its side after the
  // CancelRequest, and its connection must stay open until PostgreSQL closes,
  // as it would without the relay.
  const server = net.createServer({ allowHalfOpen: true }, (inbound) => {
    const outbound = net.connect({ host: '127.0.0.1', port: pgPort, allowHalfOpen: true })
    sockets.add(inbound)
    sockets.add(outbound)
    inbound.on('error', () => {})
    outbound.on('error', () => {})
    inbound.on('close', () => outbound.destroy())
    outbound.on('close', () => inbound.destroy())
    outbound.pipe(inbound)
    let head = Buffer.alloc(0)
    const sniff = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk])
      while (head.length >= 8) {
        const length = head.readInt32BE(0)
        const code = head.readInt32BE(4)
        if (length === 8 && code === SSL_REQUEST_CODE) {
          outbound.write(head.subarray(0, 8))
          head = head.subarray(8)
          continue
        }
        inbound.off('data', sniff)
        if (length !== 16 || code !== CANCEL_REQUEST_CODE) {
          outbound.write(head)
          inbound.pipe(outbound)
          return
        }
        inbound.pause()
        pending++
        const go = () => {
          forwarded++
          outbound.on('close', () => {
            taken++
            pending--
          })
          outbound.write(head)
          inbound.pipe(outbound)
        }
        if (relay.hold) waiting.push(go)
        else if (relay.jitterMs > 0) setTimeout(go, Math.random() * relay.jitterMs)
        else go()
        return
      }
    }
    inbound.on('data', sniff)
  })
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok))
  const relay: CancelRelay = {
    port: (server.address() as net.AddressInfo).port,
    hold: false,
    jitterMs: 0,
    get held() {
      return waiting.length
    },
    get forwarded() {
      return forwarded
    },
    get taken() {
      return taken
    },
    release() {
      for (const go of waiting.splice(0)) go()
    },
    async settled() {
      // Quiet for 500 ms: a cancel the pooler sent after its client hung up has arrived by then.
      let quietSince = Date.now()
      await until('the cancels to settle', async () => {
        if (pending > 0) quietSince = Date.now()
        return Date.now() - quietSince >= 500
      })
    },
    close() {
      server.close()
      for (const s of sockets) s.destroy()
    },
  }
  return relay
}
