// `npm run bench -- --only notify [--notify-listeners N]`: one NOTIFY fanned
// out to N listening clients (1,000 by default), through pgbouncer-cluster
// with two workers in transaction mode against the same clients connected
// straight to PostgreSQL, which costs a backend each. Delivery latency is
// from just before the notifier's pg_notify() to each listener's receipt;
// the pooler's memory per listening client is its RSS grown over the
// listeners' logins and LISTENs, divided by their number.

import { mkdir, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import type { BenchArgs } from './args.ts'
import { isStopping, onCleanup } from './cleanup.ts'
import { describeMachine, machineInfo } from './machine.ts'
import { rssBytes } from './proc-stats.ts'
import { percentileSorted } from './stats.ts'
import { PGBOUNCER_BIN, startTargets, type Target } from './targets.ts'

const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url))
const ROUNDS = 30
const CHANNEL = 'bench_notify'
const BATCH = 50

export interface NotifySample {
  target: string
  listeners: number
  rounds: number
  p50Ms: number
  p99Ms: number
  maxMs: number
  /** Deliveries that never came within the round's wait. */
  missing: number
  /** The pooler's RSS grown per listening client; null for PostgreSQL itself. */
  bytesPerListener: number | null
}

async function scenario(t: Target, count: number): Promise<NotifySample> {
  const e = t.endpoint
  const config = { host: e.host, port: e.port, user: e.user, database: e.database }
  const rss0 = t.pids.length > 0 ? rssBytes(t.pids) : 0
  const arrivals: Map<string, number>[] = []
  const clients: pg.Client[] = []
  for (let i = 0; i < count; i += BATCH) {
    await Promise.all(
      Array.from({ length: Math.min(BATCH, count - i) }, async () => {
        const c = new pg.Client(config)
        const seen = new Map<string, number>()
        c.on('notification', (n) => seen.set(n.payload ?? '', performance.now()))
        c.on('error', () => {})
        await c.connect()
        await c.query(`LISTEN ${CHANNEL}`)
        clients.push(c)
        arrivals.push(seen)
      }),
    )
  }
  await new Promise((r) => setTimeout(r, 500))
  const bytesPerListener = t.pids.length > 0 ? (rssBytes(t.pids) - rss0) / count : null
  const sender = new pg.Client(config)
  await sender.connect()
  const latencies: number[] = []
  let missing = 0
  try {
    for (let round = -1; round < ROUNDS && !isStopping(); round++) {
      const payload = `r${round}`
      const sent = performance.now()
      await sender.query('SELECT pg_notify($1, $2)', [CHANNEL, payload])
      const deadline = Date.now() + 10_000
      while (arrivals.some((a) => !a.has(payload)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 2))
      }
      // Round -1 warms the path up and is not counted.
      if (round < 0) continue
      for (const a of arrivals) {
        const at = a.get(payload)
        if (at === undefined) missing++
        else latencies.push(at - sent)
        a.delete(payload)
      }
    }
  } finally {
    await sender.end().catch(() => {})
    await Promise.all(clients.map((c) => c.end().catch(() => {})))
  }
  latencies.sort((a, b) => a - b)
  return {
    target: t.id,
    listeners: count,
    rounds: ROUNDS,
    p50Ms: percentileSorted(latencies, 50),
    p99Ms: percentileSorted(latencies, 99),
    maxMs: latencies.at(-1) ?? Number.NaN,
    missing,
    bytesPerListener,
  }
}

export async function runNotify(
  args: BenchArgs,
  startedAt: Date,
  log: (line: string) => void,
): Promise<NotifySample[]> {
  const count = args.notifyListeners
  const { startPostgres } = await import('@pgbouncer-cluster/scripts/pg-harness')
  log(`notify: starting a PostgreSQL of its own (max_connections ${count + 100})...`)
  const pgServer = await startPostgres({
    maxConnections: count + 100,
    settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
  })
  const stopPg = onCleanup(() => pgServer.stop())
  const machine = machineInfo(pgServer.binDir, PGBOUNCER_BIN)
  const url = new URL(pgServer.url())
  const set = await startTargets({
    ids: ['direct', 'cluster-2'],
    pg: {
      host: pgServer.host,
      port: pgServer.port,
      user: decodeURIComponent(url.username),
      database: decodeURIComponent(url.pathname.slice(1)),
    },
    log,
  })
  const stopTargets = onCleanup(() => set.stopAll())
  const samples: NotifySample[] = []
  try {
    for (const t of set.targets) {
      if (t.status !== 'ready' || isStopping()) continue
      log(`notify: ${count} listeners on ${t.label}...`)
      const s = await scenario(t, count)
      samples.push(s)
      log(
        `notify: ${t.label}: p50 ${s.p50Ms.toFixed(2)} ms, p99 ${s.p99Ms.toFixed(2)} ms, ${s.missing} missing`,
      )
    }
  } finally {
    await set.stopAll()
    stopTargets()
    await pgServer.stop()
    stopPg()
  }
  const labels = new Map(set.targets.map((t) => [t.id, t.label]))
  const lines = [
    `## LISTEN/NOTIFY: one NOTIFY to ${count.toLocaleString('en-US')} listening clients`,
    '',
    `Machine: ${describeMachine(machine)}.`,
    '',
    `Each of ${count.toLocaleString('en-US')} node-postgres clients LISTENs to one channel; a client connected straight to PostgreSQL runs pg_notify() ${ROUNDS} times, each once every listener got the one before. Latency: from just before pg_notify() to each listener's receipt. pgbouncer-cluster: two workers, transaction mode, one listening server; PostgreSQL direct: a backend per listener. Memory: the pooler's RSS grown over the listeners' logins and LISTENs, per listener.`,
    '',
    '| target | p50 ms | p99 ms | max ms | missing | bytes per listener |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...samples.map(
      (s) =>
        `| ${labels.get(s.target)} | ${s.p50Ms.toFixed(2)} | ${s.p99Ms.toFixed(2)} | ${s.maxMs.toFixed(2)} | ${s.missing} | ${s.bytesPerListener === null ? '— (a backend each)' : Math.round(s.bytesPerListener).toLocaleString('en-US')} |`,
    ),
    '',
  ]
  for (const t of set.targets) {
    if (t.status !== 'ready') lines.push(`- ${t.label}: ${t.status}: ${t.reason?.split('\n')[0]}`)
  }
  process.stdout.write(`${lines.join('\n')}\n`)
  await mkdir(RESULTS_DIR, { recursive: true })
  const file = `${RESULTS_DIR}${startedAt
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replaceAll(':', '-')}-notify.json`
  await writeFile(
    file,
    `${JSON.stringify({ startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), machine, samples }, (_k, v) => (Number.isNaN(v) ? null : v), 2)}\n`,
  )
  log(`wrote ${file}`)
  return samples
}
