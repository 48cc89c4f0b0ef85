// The automatic-database scenario (`--only autodb`, never part of a default
// run): a multi-tenant host with a database per tenant, through the '*' entry.
// Each client logs in to a database name never used before, runs SELECT 1 and
// stays connected; the load generator keeps the newest `alive` of them open
// and closes the oldest, so that many databases are alive at once, and the
// pooler frees those unused for autodb_idle_timeout. Reported per pooler: the
// time to a new database's first answer (a new pool: slots, a server login,
// the welcome, the query), new databases per second, the most alive at once
// (SHOW LISTS), the databases freed (their log lines), RSS, and for
// pgbouncer-cluster the shared memory: its fixed size and the part of it
// committed (the mapping's RSS in /proc/PID/smaps).

import { readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { sharedMemoryByteLength } from '@pgbouncer-cluster/protocol/shared-memory'
import pg from 'pg'
import { SLOT_TABLES } from 'pgbouncer-cluster/registry'
import type { Endpoint } from './endpoint.ts'
import { startupMessage } from './idle-conns.ts'
import { cpuSeconds, memoryBytes, resetPeakRss, rssBytes } from './proc-stats.ts'
import { type LatencySummary, summarize } from './stats.ts'
import type { Target } from './targets.ts'

export interface AutodbOptions {
  /** Distinct database names over the pooler's life. */
  count: number
  /** Clients (each of its own database) held open at once. */
  alive: number
  /** Logins in flight at once. */
  inFlight: number
  /** Bound on the whole run, per pooler. */
  deadlineMs: number
}

/** What the poolers' ini gets for this scenario (targets.ts). */
export const AUTODB_SETTINGS = {
  autodb_idle_timeout: 2,
  // Servers go soon after their client's SELECT: PostgreSQL holds about
  // (new databases per second × this) of them, and a database with a server
  // is in use.
  server_idle_timeout: 0.5,
}

export interface AutodbSample {
  target: string
  requested: number
  opened: number
  failed: number
  seconds: number
  newPerSecond: number
  /** The pooler's CPU time (all threads, user + system) per new database, in ms. */
  cpuMsPerNew: number
  /** From connect to the first SELECT's answer, for a database never used before. */
  firstAnswerMs: LatencySummary
  /** SHOW LISTS' databases, at most, over the run. */
  aliveMax: number
  /** Databases the pooler logged as freed. */
  freed: number
  rssStartBytes: number
  rssPeakBytes: number
  rssEndBytes: number
  /** pgbouncer-cluster: the SharedArrayBuffer's size, fixed at start, and its committed part at most. */
  sharedBytes: number | null
  sharedRssPeakBytes: number | null
  errors: string[]
}

const QUERY = (() => {
  const sql = Buffer.from('SELECT 1\0')
  const msg = Buffer.alloc(5 + sql.length)
  msg[0] = 0x51 // Q
  msg.writeInt32BE(4 + sql.length, 1)
  sql.copy(msg, 5)
  return msg
})()
const TERMINATE = Buffer.from([0x58 /* X */, 0, 0, 0, 4])

/**
 * Logs in to `database` and runs SELECT 1; resolves with the socket, left
 * open, once the answer's ReadyForQuery arrived. Rejects with the server's
 * (or the pooler's) error text.
 */
function visit(ep: Endpoint, database: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: ep.host, port: ep.port })
    let buf: Buffer = Buffer.alloc(0)
    let readies = 0
    const fail = (err: Error) => {
      clearTimeout(timer)
      sock.destroy()
      reject(err)
    }
    const timer = setTimeout(() => fail(new Error('no answer in time')), timeoutMs)
    sock.once('error', fail)
    sock.once('close', () => fail(new Error('closed before the answer')))
    sock.once('connect', () => sock.write(startupMessage(ep.user, database)))
    sock.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      while (buf.length >= 5) {
        const len = buf.readInt32BE(1)
        if (buf.length < 1 + len) return
        const type = buf[0]
        if (type === 0x45 /* E */) {
          const m = /M([^\0]*)/.exec(buf.subarray(5, 1 + len).toString('utf8'))
          fail(new Error(m ? m[1] : 'ErrorResponse'))
          return
        }
        buf = buf.subarray(1 + len)
        if (type !== 0x5a /* Z */) continue
        if (++readies === 1) {
          sock.write(QUERY)
          continue
        }
        clearTimeout(timer)
        sock.removeAllListeners('data')
        sock.removeAllListeners('close')
        sock.removeAllListeners('error')
        sock.on('error', () => {})
        sock.pause()
        resolve(sock)
        return
      }
    })
  })
}

/**
 * The RSS of the mapping that holds the SharedArrayBuffer: an anonymous
 * mapping of its size (rounded up to pages, plus malloc's header page).
 */
export function mappingRss(smaps: string, byteLength: number): number | null {
  const sizeKb = Math.ceil(byteLength / 4096) * 4
  let best: number | null = null
  for (const block of smaps.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)) {
    const size = Number(/^Size:\s+(\d+) kB/m.exec(block)?.[1])
    const rss = Number(/^Rss:\s+(\d+) kB/m.exec(block)?.[1])
    if (size >= sizeKb && size <= sizeKb + 8 && Number.isFinite(rss)) {
      best = Math.max(best ?? 0, rss * 1024)
    }
  }
  return best
}

function sharedRss(pid: number, byteLength: number): number | null {
  try {
    return mappingRss(readFileSync(`/proc/${pid}/smaps`, 'utf8'), byteLength)
  } catch {
    return null
  }
}

/** SHOW LISTS' `databases`, through the admin console. */
async function aliveDatabases(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query('SHOW LISTS')
  const row = rows.find((r) => r.list === 'databases')
  return row ? Number(row.items) : Number.NaN
}

function countLines(file: string | undefined, pattern: RegExp): number {
  if (file === undefined) return 0
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => pattern.test(l)).length
  } catch {
    return 0
  }
}

/** What each pooler logs when it frees an automatic database. */
const FREED_LINE =
  /automatic database \S+ freed|dropping database '[^']*' as it does not exist anymore or inactive auto-database/

export async function autodbScenario(
  t: Target,
  o: AutodbOptions,
  progress?: (done: number) => void,
): Promise<AutodbSample> {
  const pid = t.pids[0]!
  const workers = /×(\d+)/.exec(t.label)?.[1]
  const sharedBytes =
    t.kind === 'cluster'
      ? sharedMemoryByteLength({ ...SLOT_TABLES, maxWorkers: Number(workers ?? 1) })
      : null
  const admin = new pg.Client({ ...t.endpoint, database: 'pgbouncer' })
  await admin.connect()
  const rssStartBytes = rssBytes(t.pids)
  resetPeakRss(pid)
  const held: Socket[] = []
  const latencies: number[] = []
  const errors = new Set<string>()
  let failed = 0
  let next = 0
  let aliveMax = 0
  let sharedRssPeakBytes = sharedBytes === null ? null : (sharedRss(pid, sharedBytes) ?? null)
  const cpu0 = t.pids.reduce((sum, p) => sum + cpuSeconds(p), 0)
  const t0 = performance.now()
  const sample = async () => {
    aliveMax = Math.max(aliveMax, await aliveDatabases(admin).catch(() => 0))
    if (sharedBytes !== null) {
      const rss = sharedRss(pid, sharedBytes)
      if (rss !== null) sharedRssPeakBytes = Math.max(sharedRssPeakBytes ?? 0, rss)
    }
  }
  let sampling = Promise.resolve()
  const sampler = setInterval(() => {
    sampling = sampling.then(sample)
  }, 2000)
  const loop = async () => {
    while (next < o.count && performance.now() - t0 < o.deadlineMs) {
      const database = `autodb_${next++}`
      const started = performance.now()
      try {
        const sock = await visit(t.endpoint, database, 30_000)
        latencies.push(performance.now() - started)
        held.push(sock)
        // The oldest client leaves: its database is unused from now on.
        while (held.length > o.alive) {
          const old = held.shift()!
          old.end(TERMINATE, () => old.destroy())
        }
      } catch (err) {
        failed++
        if (errors.size < 5) errors.add((err as Error).message)
        // A pooler that refuses every new database would refuse the rest too.
        if (failed > 100 && failed > latencies.length) return
      }
      if (next % 1000 === 0) progress?.(next)
    }
  }
  await Promise.all(Array.from({ length: o.inFlight }, loop))
  const seconds = (performance.now() - t0) / 1000
  const cpu = t.pids.reduce((sum, p) => sum + cpuSeconds(p), 0) - cpu0
  clearInterval(sampler)
  await sampling
  await sample()
  for (const sock of held.splice(0)) sock.end(TERMINATE, () => sock.destroy())
  await admin.end().catch(() => {})
  await new Promise((r) => setTimeout(r, 500))
  return {
    target: t.id,
    requested: o.count,
    opened: latencies.length,
    failed,
    seconds,
    newPerSecond: latencies.length / seconds,
    cpuMsPerNew: (cpu * 1000) / latencies.length,
    firstAnswerMs: summarize(latencies),
    aliveMax,
    freed: countLines(t.logFile, FREED_LINE),
    rssStartBytes,
    rssPeakBytes: memoryBytes(pid).hwm,
    rssEndBytes: rssBytes(t.pids),
    sharedBytes,
    sharedRssPeakBytes,
    errors: [...errors],
  }
}

const count = (n: number) => Math.round(n).toLocaleString('en-US')
const mb = (b: number | null) =>
  b === null || !Number.isFinite(b) ? '–' : (b / 2 ** 20).toFixed(1)

export function autodbTable(samples: readonly AutodbSample[], labels: Map<string, string>): string {
  const head = [
    'pooler',
    'databases',
    's',
    'new/s',
    'pooler CPU ms/new',
    'first answer p50 ms',
    'p99 ms',
    'alive at most',
    'freed',
    'RSS start/peak/end MB',
    'shared memory MB (committed at most)',
  ]
  const rows = samples.map((s) => [
    labels.get(s.target) ?? s.target,
    `${count(s.opened)}${s.failed > 0 ? ` (${count(s.failed)} failed)` : ''}`,
    s.seconds.toFixed(0),
    s.newPerSecond.toFixed(0),
    s.cpuMsPerNew.toFixed(2),
    s.firstAnswerMs.p50.toFixed(2),
    s.firstAnswerMs.p99.toFixed(2),
    count(s.aliveMax),
    count(s.freed),
    `${mb(s.rssStartBytes)} / ${mb(s.rssPeakBytes)} / ${mb(s.rssEndBytes)}`,
    s.sharedBytes === null ? '–' : `${mb(s.sharedBytes)} (${mb(s.sharedRssPeakBytes)})`,
  ])
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n')
}
