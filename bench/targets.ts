// Starts and stops what the benchmark compares: direct PostgreSQL, PgBouncer
// and pgbouncer-cluster, the poolers from one generated pgbouncer.ini, and a
// bare Node relay as the yardstick of what Node itself costs.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { existsSync, openSync, readFileSync } from 'node:fs'
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { trackDir, trackPid } from './cleanup.ts'
import { clusterCli } from './cluster-build.ts'
import type { Endpoint } from './endpoint.ts'
import { withNofile } from './pgbench.ts'
import { type PoolerConfigOptions, poolerIni, userlist } from './pooler-config.ts'

export type TargetKind = 'direct' | 'pgbouncer' | 'cluster' | 'relay'

export interface Target {
  id: string
  label: string
  kind: TargetKind
  endpoint: Endpoint
  /** The processes whose CPU and memory count as the pooler's; none for direct. */
  pids: number[]
  /** The pooler answers SSLRequest (client_tls_sslmode = allow in its ini). */
  clientTls: boolean
  /** Where the target's threads write their allocation totals (PGBC_ALLOC_STATS); null if they do not. */
  allocDir: string | null
  status: 'ready' | 'skipped' | 'failed'
  reason?: string
  /** The pooler's log (PgBouncer's first process's). */
  logFile?: string
  /** null while the process runs (always for direct); else how it ended, with its log's tail. */
  exitNote(): string | null
  stop(): Promise<void>
}

export const PGBOUNCER_BIN = process.env.BENCH_PGBOUNCER ?? '/usr/sbin/pgbouncer'
const RELAY_SCRIPT = fileURLToPath(new URL('./node-relay.ts', import.meta.url))
export const POOL_SIZE = 20
/** Enough for the 10,000 idle connections of the memory scenario. */
export const MAX_CLIENT_CONN = 12000
const NOFILE = 65536

export function clusterWorkerCounts(): number[] {
  const cpus = availableParallelism()
  return cpus > 1 ? [1, cpus] : [1]
}

export function allTargetIds(): string[] {
  const [one, many] = clusterWorkerCounts()
  // PgBouncer ×N (N processes on one port) sits beside pgbouncer-cluster ×N
  const scaled = many ? [`pgbouncer-${many}`, `cluster-${many}`] : []
  return ['direct', 'pgbouncer', `cluster-${one}`, ...scaled, 'node-relay']
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port })
    sock.once('connect', () => {
      sock.destroy()
      resolve(true)
    })
    sock.once('error', () => resolve(false))
  })
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

interface Spawned {
  child: ChildProcess
  logFile: string
  exited: Promise<number | null>
}

function spawnLogged(
  cmd: string,
  args: string[],
  logFile: string,
  env?: Record<string, string>,
): Spawned {
  const fd = openSync(logFile, 'a')
  const child = spawn(cmd, args, {
    stdio: ['ignore', fd, fd],
    detached: false,
    env: env ? { ...process.env, ...env } : process.env,
  })
  const untrack = child.pid === undefined ? () => {} : trackPid(child.pid)
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code, signal) => {
      untrack()
      resolve(code ?? (signal ? -1 : null))
    })
    child.once('error', () => resolve(-1))
  })
  return { child, logFile, exited }
}

async function waitReady(
  s: Spawned,
  port: number,
  readyLine: RegExp | null,
  timeoutMs: number,
): Promise<string | null> {
  const deadline = Date.now() + timeoutMs
  let exitCode: number | null | undefined
  void s.exited.then((c) => {
    exitCode = c
  })
  while (Date.now() < deadline) {
    if (exitCode !== undefined) return `exited with code ${exitCode}`
    const lineOk = readyLine === null || readyLine.test(tail(s.logFile, 200))
    if (lineOk && (await canConnect(port))) return null
    await new Promise((r) => setTimeout(r, 100))
  }
  return `not ready within ${timeoutMs / 1000}s`
}

function exitNote(s: Spawned): string | null {
  const { exitCode, signalCode } = s.child
  if (exitCode === null && signalCode === null) return null
  return `exited (${signalCode ?? `code ${exitCode}`}) while the benchmark ran\n${tail(s.logFile)}`
}

async function stopSpawned(s: Spawned, graceMs: number): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return
  s.child.kill('SIGTERM')
  const timer = setTimeout(() => s.child.kill('SIGKILL'), graceMs)
  await s.exited
  clearTimeout(timer)
}

function osUser(name: string): { uid: number; gid: number } | null {
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim())
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim())
    return { uid, gid }
  } catch {
    return null
  }
}

export interface PostgresInfo {
  host: string
  port: number
  user: string
  database: string
}

export interface StartTargetsOptions {
  ids: readonly string[]
  pg: PostgresInfo
  log?: (line: string) => void
  /** A scenario's own settings and '*' keys, in every pooler's ini (autodb.ts). */
  config?: Pick<PoolerConfigOptions, 'settings' | 'fallback'>
}

export interface TargetSet {
  targets: Target[]
  dir: string
  /** The generated pgbouncer.ini, as every pooler got it but with listen_port = 0. */
  ini: string
  stopAll(): Promise<void>
}

export async function startTargets(o: StartTargetsOptions): Promise<TargetSet> {
  const log = o.log ?? (() => {})
  const dir = await mkdtemp(join(tmpdir(), 'bench-poolers-'))
  const untrackDir = trackDir(dir)
  // PgBouncer drops root for the postgres user: it must read its config there
  const pgUser = process.getuid?.() === 0 ? osUser('postgres') : null
  await chmod(dir, 0o755)
  if (pgUser) await chown(dir, pgUser.uid, pgUser.gid)
  const authFile = join(dir, 'userlist.txt')
  await writeFile(authFile, userlist([o.pg.user]), { mode: 0o644 })
  const clientTls = await makeCertificate(dir, pgUser, log)
  const base = {
    pgHost: o.pg.host,
    pgPort: o.pg.port,
    authFile,
    maxClientConn: MAX_CLIENT_CONN,
    poolSize: POOL_SIZE,
    ...(clientTls ? { clientTls } : {}),
    ...o.config,
  }
  const endpoint = (port: number): Endpoint => ({ ...o.pg, host: '127.0.0.1', port })
  const targets: Target[] = []

  for (const id of o.ids) {
    if (id === 'direct') {
      targets.push({
        id,
        label: 'PostgreSQL (direct)',
        kind: 'direct',
        endpoint: { ...o.pg },
        pids: [],
        clientTls: false,
        allocDir: null,
        status: 'ready',
        exitNote: () => null,
        stop: async () => {},
      })
      continue
    }
    const port = await freePort()
    const logFile = join(dir, `${id}.log`)
    const ini = join(dir, `${id}.ini`)
    if (id !== 'node-relay' && !id.startsWith('pgbouncer-')) {
      await writeFile(ini, poolerIni(base, port), { mode: 0o644 })
    }
    if (id === 'node-relay') {
      targets.push(await startRelay(id, port, o.pg, logFile, endpoint(port)))
    } else if (id === 'pgbouncer' || /^pgbouncer-\d+$/.test(id)) {
      const n = id === 'pgbouncer' ? 1 : Number(id.slice('pgbouncer-'.length))
      // each process gets its part of the pool, so the PostgreSQL side is the same
      const inis: string[] = []
      for (let i = 0; i < n; i++) {
        const file = n === 1 ? ini : join(dir, `${id}.${i}.ini`)
        if (n > 1) {
          const part = { ...base, poolSize: Math.ceil(POOL_SIZE / n), soReuseport: true }
          await writeFile(file, poolerIni(part, port), { mode: 0o644 })
        }
        inis.push(file)
      }
      targets.push(await startPgbouncer(id, inis, port, dir, pgUser !== null, endpoint(port)))
    } else if (/^(cluster|baseline)-\d+$/.test(id)) {
      const workers = Number(id.slice(id.indexOf('-') + 1))
      const allocDir = join(dir, `${id}.alloc`)
      await mkdir(allocDir)
      targets.push(await startCluster(id, workers, ini, port, logFile, allocDir, endpoint(port)))
    } else {
      throw Object.assign(new Error(`unknown target ${id}; known: ${allTargetIds().join(', ')}`), {
        code: 'BENCH_UNKNOWN_TARGET',
      })
    }
    const t = targets[targets.length - 1]!
    // the poolers read the ini, which has client TLS when the certificate was made
    t.clientTls = clientTls !== null && t.status === 'ready' && t.kind !== 'relay'
    log(`${t.label}: ${t.status}${t.reason ? ` (${t.reason})` : ` on port ${port}`}`)
  }

  return {
    targets,
    dir,
    ini: poolerIni(base, 0),
    async stopAll() {
      await Promise.all(targets.map((t) => t.stop()))
      await rm(dir, { recursive: true, force: true })
      untrackDir()
    },
  }
}

/**
 * A self-signed certificate for the poolers' client TLS (P-256, as PgBouncer's
 * and Node's defaults negotiate it), readable by the postgres user PgBouncer
 * runs as. Null, with the reason logged, where openssl is missing.
 */
async function makeCertificate(
  dir: string,
  owner: { uid: number; gid: number } | null,
  log: (line: string) => void,
): Promise<{ certFile: string; keyFile: string } | null> {
  const certFile = join(dir, 'client-tls.crt')
  const keyFile = join(dir, 'client-tls.key')
  try {
    execFileSync(
      'openssl',
      [
        ...['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
        ...['-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=127.0.0.1'],
      ],
      { stdio: 'ignore' },
    )
    await chmod(keyFile, 0o600)
    await chmod(certFile, 0o644)
    if (owner) {
      await chown(keyFile, owner.uid, owner.gid)
      await chown(certFile, owner.uid, owner.gid)
    }
  } catch (err) {
    log(`no client TLS (the TLS workloads are skipped): openssl: ${(err as Error).message}`)
    return null
  }
  return { certFile, keyFile }
}

/** Started processes that are ready: stopped with SIGTERM, then SIGKILL after `graceMs`. */
function running(
  id: string,
  label: string,
  kind: TargetKind,
  ep: Endpoint,
  procs: readonly Spawned[],
  graceMs: number,
  allocDir: string | null = null,
): Target {
  return {
    id,
    label,
    kind,
    endpoint: ep,
    pids: procs.flatMap((s) => (s.child.pid === undefined ? [] : [s.child.pid])),
    clientTls: false,
    allocDir,
    status: 'ready',
    exitNote: () => procs.map(exitNote).find((n) => n !== null) ?? null,
    stop: async () => {
      await Promise.all(procs.map((s) => stopSpawned(s, graceMs)))
    },
  }
}

function notReady(
  id: string,
  label: string,
  kind: TargetKind,
  ep: Endpoint,
  status: 'skipped' | 'failed',
  reason: string,
): Target {
  return {
    id,
    label,
    kind,
    endpoint: ep,
    pids: [],
    clientTls: false,
    allocDir: null,
    status,
    reason,
    exitNote: () => null,
    stop: async () => {},
  }
}

/** PgBouncer, or N PgBouncer processes sharing one port (so_reuseport), one per ini. */
async function startPgbouncer(
  id: string,
  inis: readonly string[],
  port: number,
  dir: string,
  asRoot: boolean,
  ep: Endpoint,
): Promise<Target> {
  const label = inis.length === 1 ? 'PgBouncer' : `PgBouncer ×${inis.length}`
  if (!existsSync(PGBOUNCER_BIN)) {
    return notReady(
      id,
      label,
      'pgbouncer',
      ep,
      'skipped',
      `${PGBOUNCER_BIN} not found: apt-get install -y pgbouncer`,
    )
  }
  const procs: Spawned[] = []
  for (const [i, ini] of inis.entries()) {
    const logFile = join(dir, inis.length === 1 ? `${id}.log` : `${id}.${i}.log`)
    const args = asRoot ? ['-u', 'postgres', ini] : [ini]
    const [cmd, argv] = withNofile(NOFILE, PGBOUNCER_BIN, args)
    const s = spawnLogged(cmd, argv, logFile)
    procs.push(s)
    // with a shared port, a connect may reach an older process: wait for this one's line
    const err = await waitReady(s, port, inis.length === 1 ? null : /listening on/, 10_000)
    if (err) {
      await Promise.all(procs.map((p) => stopSpawned(p, 1000)))
      return notReady(id, label, 'pgbouncer', ep, 'failed', `${err}\n${tail(logFile)}`)
    }
  }
  return { ...running(id, label, 'pgbouncer', ep, procs, 3000), logFile: procs[0]!.logFile }
}

async function startCluster(
  id: string,
  workers: number,
  ini: string,
  port: number,
  logFile: string,
  allocDir: string,
  ep: Endpoint,
): Promise<Target> {
  const baseline = id.startsWith('baseline-')
  const label = `pgbouncer-cluster ×${workers}${baseline ? ' (baseline)' : ''}`
  let cli: string
  try {
    cli = baseline ? baselineCli() : (await clusterCli()).path
  } catch (err) {
    const reason = `failed to build the package: ${(err as Error).message}`
    return notReady(id, label, 'cluster', ep, 'failed', reason)
  }
  const args = [cli, ini, '--workers', String(workers), '--log-level', 'info']
  const [cmd, argv] = withNofile(NOFILE, process.execPath, args)
  // the threads' allocation totals, for the bytes per transaction and GC columns
  const s = spawnLogged(cmd, argv, logFile, { PGBC_ALLOC_STATS: allocDir })
  const err = await waitReady(s, port, /listening/i, 20_000)
  if (err) {
    await stopSpawned(s, 2000)
    return notReady(id, label, 'cluster', ep, 'failed', `failed to start: ${err}\n${tail(logFile)}`)
  }
  return { ...running(id, label, 'cluster', ep, [s], 5000, allocDir), logFile }
}

/**
 * `baseline-N`: another build of pgbouncer-cluster beside this one, in the same
 * rounds, so a change is measured before and after on the same machine at the
 * same time. BENCH_BASELINE_CLI names its bin (a package built from an older
 * commit: `git worktree add`, `npm ci`, `npm run pack`, unpack).
 */
function baselineCli(): string {
  const cli = process.env.BENCH_BASELINE_CLI
  if (cli === undefined || !existsSync(cli)) {
    throw new Error('BENCH_BASELINE_CLI must name the bin of the baseline build')
  }
  return cli
}

/** A bare Node relay (node-relay.ts): one PostgreSQL connection per client, no pooling. */
async function startRelay(
  id: string,
  port: number,
  pg: PostgresInfo,
  logFile: string,
  ep: Endpoint,
): Promise<Target> {
  const label = 'bare Node relay'
  const args = [RELAY_SCRIPT, String(port), pg.host, String(pg.port)]
  const [cmd, argv] = withNofile(NOFILE, process.execPath, args)
  const s = spawnLogged(cmd, argv, logFile)
  const err = await waitReady(s, port, /listening/, 10_000)
  if (err) {
    await stopSpawned(s, 1000)
    return notReady(id, label, 'relay', ep, 'failed', `failed to start: ${err}\n${tail(logFile)}`)
  }
  return running(id, label, 'relay', ep, [s], 2000)
}
