// Every cluster the harness starts is tracked here so that no postmaster or temp dir outlives
// the process: on 'exit' (normal end, uncaught error, process.exit) and on SIGINT/SIGTERM the
// remaining clusters are killed synchronously, because async work never runs at that point.

import { existsSync, readFileSync, rmSync, writeSync } from 'node:fs'

export interface TrackedCluster {
  /** `127.0.0.1:<port>`, for log headers. */
  label: string
  readonly rootDir: string
  readonly dataDir: string
  readonly logPath: string
  /** True from the first start attempt until the cluster is stopped or destroyed. */
  running: boolean
  /** The log's last lines, captured before the temp dir is removed. */
  logTail: string | null
  logPrinted: boolean
  /** Set when a usePostgres() suite finished without failures: its log is not worth printing. */
  healthy: boolean
}

export const LOG_TAIL_LINES = 80

const clusters = new Set<TrackedCluster>()
let installed = false

export function track(cluster: TrackedCluster): void {
  install()
  clusters.add(cluster)
}

export function readLogTail(logPath: string, lines = LOG_TAIL_LINES): string {
  let text: string
  try {
    text = readFileSync(logPath, 'utf8')
  } catch {
    return ''
  }
  const all = text.trimEnd().split('\n')
  return all.slice(-lines).join('\n')
}

export function printLogTail(cluster: TrackedCluster): void {
  if (cluster.logPrinted) return
  cluster.logPrinted = true
  const tail = cluster.running ? readLogTail(cluster.logPath) : (cluster.logTail ?? '')
  const header = `pg-harness: last ${LOG_TAIL_LINES} lines of the PostgreSQL log (${cluster.label}, ${cluster.logPath}):`
  // writeSync: this also runs inside 'exit', where async stream writes may be lost.
  writeSync(
    2,
    `${header}\n${tail || '(empty log)'}\n--- end of PostgreSQL log (${cluster.label}) ---\n`,
  )
}

function postmasterPid(dataDir: string): number | null {
  try {
    const pid = Number.parseInt(
      readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n')[0]!,
      10,
    )
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  // The postmaster is reparented to PID 1, which may be slow to reap it: a zombie is dead.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT'
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** SIGQUIT (immediate shutdown, which also ends the backends), then SIGKILL if it lingers. */
export function killPostmasterSync(dataDir: string, graceMs = 3000): void {
  const pid = postmasterPid(dataDir)
  if (pid === null || !alive(pid)) return
  try {
    process.kill(pid, 'SIGQUIT')
  } catch {
    return
  }
  const deadline = Date.now() + graceMs
  while (alive(pid) && Date.now() < deadline) sleepSync(20)
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
}

/** Kills the cluster if it still runs and removes its temp dir. Idempotent. */
export function destroySync(cluster: TrackedCluster): void {
  if (cluster.running) {
    killPostmasterSync(cluster.dataDir)
    cluster.logTail = readLogTail(cluster.logPath)
    cluster.running = false
  }
  if (existsSync(cluster.rootDir)) rmSync(cluster.rootDir, { recursive: true, force: true })
}

function onExit(code: number): void {
  const failed = code !== 0 || Number(process.exitCode ?? 0) !== 0
  for (const cluster of clusters) {
    if (failed && !cluster.healthy) printLogTail(cluster)
    try {
      destroySync(cluster)
    } catch {}
  }
}

function onSignal(signal: NodeJS.Signals): void {
  for (const cluster of clusters) {
    try {
      destroySync(cluster)
    } catch {}
  }
  process.removeListener('SIGINT', onSignal)
  process.removeListener('SIGTERM', onSignal)
  // Re-raise so the default action (or someone else's handler) decides how the process ends.
  process.kill(process.pid, signal)
}

function install(): void {
  if (installed) return
  installed = true
  process.on('exit', onExit)
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}
