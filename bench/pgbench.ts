// Runs pgbench against one target and turns its output into numbers: tps and
// counts from the summary on stdout, per-transaction latencies from the
// --log files (the summary has only the average).

import { spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { trackDir } from './cleanup.ts'
import type { Endpoint } from './endpoint.ts'
import type { PgbenchWorkload } from './workloads.ts'

export interface PgbenchSummary {
  tps: number
  transactions: number
  failed: number
  latencyAvgMs: number
  /** Only with -C: pgbench's own average connection time. */
  connectionTimeMs: number
  abortedClients: number
}

export interface PgbenchResult extends PgbenchSummary {
  exitCode: number | null
  elapsedS: number
  latenciesUs: Float64Array
  logFailed: number
  errors: string[]
}

/** Raises the open-file limit in a bash wrapper so -c 1000 is not cut short. */
export function withNofile(limit: number, cmd: string, args: string[]): [string, string[]] {
  const script = `ulimit -n ${limit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"`
  return ['bash', ['-c', script, cmd, ...args]]
}

export function pgbenchArgs(w: PgbenchWorkload, ep: Endpoint, logPrefix: string): string[] {
  const args = [
    '-n', // the tables are vacuumed once after init, not before every run
    '-S',
    '-M',
    w.mode,
    '-c',
    String(w.clients),
    '-j',
    String(w.threads),
    '-T',
    String(w.durationS),
    '-h',
    ep.host,
    '-p',
    String(ep.port),
    '-U',
    ep.user,
    '--log',
    `--log-prefix=${logPrefix}`,
  ]
  if (w.reconnect) args.push('-C')
  args.push(ep.database)
  return args
}

function num(text: string, re: RegExp): number {
  const m = re.exec(text)
  return m ? Number(m[1]) : Number.NaN
}

export function parsePgbenchSummary(stdout: string, stderr = ''): PgbenchSummary {
  const failedMatch = /number of failed transactions:\s*(\d+)/.exec(stdout)
  return {
    tps: num(stdout, /^tps = ([\d.]+)/m),
    transactions: num(stdout, /number of transactions actually processed:\s*(\d+)/),
    failed: failedMatch ? Number(failedMatch[1]) : 0,
    latencyAvgMs: num(stdout, /latency average = ([\d.]+) ms/),
    connectionTimeMs: num(stdout, /average connection time = ([\d.]+) ms/),
    abortedClients: (stderr.match(/client \d+ (?:script \d+ )?aborted/g) ?? []).length,
  }
}

/**
 * Adds the latencies (µs) of one --log file to `out`; returns how many lines
 * were failed or skipped transactions. Line: client tx time script epoch us [...]
 */
export function parsePgbenchLog(text: string, out: number[]): number {
  let failed = 0
  let start = 0
  while (start < text.length) {
    let end = text.indexOf('\n', start)
    if (end === -1) end = text.length
    const s1 = text.indexOf(' ', start)
    const s2 = s1 === -1 ? -1 : text.indexOf(' ', s1 + 1)
    const s3 = s2 === -1 ? -1 : text.indexOf(' ', s2 + 1)
    if (s3 !== -1 && s3 < end) {
      const field = text.slice(s2 + 1, s3)
      const us = Number(field)
      if (Number.isFinite(us) && field !== '') out.push(us)
      else failed++
    }
    start = end + 1
  }
  return failed
}

/** First few distinct error lines: enough to say why, never a flood. */
export function errorLines(stderr: string, max = 5): string[] {
  const seen = new Set<string>()
  for (const line of stderr.split('\n')) {
    if (!/error|fatal|aborted|failed/i.test(line)) continue
    const key = line
      .replace(/client \d+/g, 'client N')
      .replace(/"P\d*_\d+"/g, '"P_n"')
      .trim()
    if (key) seen.add(key)
    if (seen.size >= max) break
  }
  return [...seen]
}

export interface RunPgbenchOptions {
  bin: string
  env?: NodeJS.ProcessEnv
  /** Called with the child's pid so the runner can kill it on Ctrl-C. */
  onSpawn?: (pid: number) => void
}

export async function runPgbench(
  w: PgbenchWorkload,
  ep: Endpoint,
  opts: RunPgbenchOptions,
): Promise<PgbenchResult> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-pgbench-'))
  const untrackDir = trackDir(dir)
  try {
    const args = pgbenchArgs(w, ep, join(dir, 'log'))
    const [cmd, argv] = w.clients > 500 ? withNofile(65536, opts.bin, args) : [opts.bin, args]
    const started = performance.now()
    const { code, stdout, stderr } = await execBounded(cmd, argv, {
      // Explicit either way: libpq's default (prefer) would take TLS wherever it is offered.
      env: { ...(opts.env ?? process.env), PGSSLMODE: w.tls ? 'require' : 'disable' },
      cwd: dir,
      timeoutMs: (w.durationS + 60) * 1000,
      onSpawn: opts.onSpawn,
    })
    const elapsedS = (performance.now() - started) / 1000
    const latencies: number[] = []
    let logFailed = 0
    for (const f of await readdir(dir)) {
      if (f.startsWith('log'))
        logFailed += parsePgbenchLog(await readFile(join(dir, f), 'utf8'), latencies)
    }
    const summary = parsePgbenchSummary(stdout, stderr)
    const errors = errorLines(stderr)
    if (code !== 0 && errors.length === 0) errors.push(`pgbench exited with ${code}`)
    return {
      ...summary,
      exitCode: code,
      elapsedS,
      latenciesUs: Float64Array.from(latencies),
      logFailed,
      errors,
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
    untrackDir()
  }
}

interface ExecOptions {
  env?: NodeJS.ProcessEnv
  cwd?: string
  timeoutMs: number
  onSpawn?: (pid: number) => void
}

export function execBounded(
  cmd: string,
  args: string[],
  opts: ExecOptions,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    if (child.pid !== undefined) opts.onSpawn?.(child.pid)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
    })
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      // pgbench can print one line per aborted client: keep the head only
      if (stderr.length < 256 * 1024) stderr += d
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}
