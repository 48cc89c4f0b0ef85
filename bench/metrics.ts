// What /metrics costs: the time and CPU of a scrape, whether scraping every
// 100 ms during `pgbench -S` changes tps, and what the latency histograms cost
// per transaction (pgbouncer-cluster with PGBOUNCER_CLUSTER_HISTOGRAMS=off
// against the default, in alternating rounds, plus a micro benchmark of one
// recording). Standalone: node metrics.ts [--seconds N] [--rounds N]

import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Latency } from '@pgbouncer-cluster/protocol/latency'
import { createSharedMemory, SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import { findPgTool, startPostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { cleanupAll } from './cleanup.ts'
import { clusterCli } from './cluster-build.ts'
import { cpuSeconds, parseStatTicks } from './proc-stats.ts'
import { freePort } from './targets.ts'

const run = promisify(execFile)
const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? fallback : Number(process.argv[i + 1])
}
const SECONDS = arg('seconds', 8)
const ROUNDS = arg('rounds', 3)
const CLIENTS = 16
const SCRAPE_EVERY_MS = 100
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const TICK = 100 // clock ticks per second on Linux

/** CPU seconds of the process's main thread (the coordinator, where scrapes run). */
function mainThreadCpu(pid: number): number {
  const { utime, stime } = parseStatTicks(readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8'))
  return (utime + stime) / TICK
}

interface Cluster {
  child: ChildProcess
  port: number
  metrics: string
}

async function startCluster(ini: string, histograms: boolean): Promise<Cluster> {
  const port = await freePort()
  const mport = await freePort()
  const child = spawn(
    process.execPath,
    [
      (await clusterCli()).path,
      ini,
      '--workers',
      '1',
      '--listen',
      `127.0.0.1:${port}`,
      '--metrics',
      `127.0.0.1:${mport}`,
      '--log-level',
      'warn',
    ],
    {
      stdio: 'ignore',
      env: { ...process.env, PGBOUNCER_CLUSTER_HISTOGRAMS: histograms ? 'on' : 'off' },
    },
  )
  const metrics = `http://127.0.0.1:${mport}`
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${metrics}/ready`)).status === 200) return { child, port, metrics }
    } catch {}
    await sleep(100)
  }
  child.kill('SIGKILL')
  throw new Error('pgbouncer-cluster did not start')
}

interface Round {
  tps: number
  xacts: number
  cpuUsPerXact: number
  scrapes: number
  scrapeMs: number[]
  mainCpuS: number
}

async function pgbenchRound(c: Cluster, scrape: boolean): Promise<Round> {
  const pid = c.child.pid!
  const cpu0 = cpuSeconds(pid)
  const main0 = mainThreadCpu(pid)
  const scrapeMs: number[] = []
  let scraping = scrape
  const scraper = (async () => {
    while (scraping) {
      const t = performance.now()
      const res = await fetch(`${c.metrics}/metrics`)
      await res.text()
      scrapeMs.push(performance.now() - t)
      await sleep(SCRAPE_EVERY_MS)
    }
  })()
  const pgbench = findPgTool('pgbench')!
  const { stdout } = await run(pgbench, [
    ...['-n', '-S', '-M', 'simple', '-c', String(CLIENTS), '-j', '2', '-T', String(SECONDS)],
    ...['-h', '127.0.0.1', '-p', String(c.port), '-U', 'postgres', 'postgres'],
  ])
  scraping = false
  await scraper
  const xacts = Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1])
  const tps = Number(/tps = ([\d.]+)/.exec(stdout)?.[1])
  return {
    tps,
    xacts,
    cpuUsPerXact: ((cpuSeconds(pid) - cpu0) * 1e6) / xacts,
    scrapes: scrapeMs.length,
    scrapeMs,
    mainCpuS: mainThreadCpu(pid) - main0,
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}
const spread = (xs: number[]) =>
  `±${(((Math.max(...xs) - Math.min(...xs)) / 2 / mean(xs)) * 100).toFixed(1)}%`

/** One recording as the hot path does it: two clock reads and record(). */
function microRecord(): { withNs: number; withoutNs: number } {
  const shm = new SharedMemory(
    createSharedMemory({ maxWorkers: 2, maxPools: 16, maxDatabases: 16, maxUsers: 16 }),
  )
  const h = shm.histograms
  const N = 5_000_000
  let sink = 0
  const measure = (fn: (i: number) => void) => {
    for (let i = 0; i < N / 10; i++) fn(i)
    const t = performance.now()
    for (let i = 0; i < N; i++) fn(i)
    return ((performance.now() - t) * 1e6) / N
  }
  const withNs = measure((i) => {
    const since = performance.now()
    h.record(i & 7, 1, Latency.xact, (performance.now() - since) * 1000 + (i & 1023))
  })
  const withoutNs = measure((i) => {
    sink += i & 7
  })
  if (sink === -1) console.log(sink)
  return { withNs, withoutNs }
}

async function main(): Promise<void> {
  const micro = microRecord()
  console.log(
    `micro: clock reads + record() = ${(micro.withNs - micro.withoutNs).toFixed(1)} ns per recording (loop ${micro.withoutNs.toFixed(1)} ns)`,
  )
  const pg = await startPostgres({ pgbenchInit: { scale: 1 } })
  const dir = await mkdtemp(join(tmpdir(), 'pgbc-bench-metrics-'))
  const ini = join(dir, 'pgbouncer.ini')
  writeFileSync(
    ini,
    [
      '[databases]',
      `postgres = host=127.0.0.1 port=${pg.port} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      'listen_port = 0',
      'auth_type = trust',
      'pool_mode = transaction',
      'default_pool_size = 20',
      'max_client_conn = 200',
      '',
    ].join('\n'),
  )
  const on = await startCluster(ini, true)
  const off = await startCluster(ini, false)
  try {
    // Idle scrapes: time and coordinator CPU of one scrape alone.
    const idleMs: number[] = []
    const main0 = mainThreadCpu(on.child.pid!)
    for (let i = 0; i < 100; i++) {
      const t = performance.now()
      await (await fetch(`${on.metrics}/metrics`)).text()
      idleMs.push(performance.now() - t)
    }
    const idleCpuMs = ((mainThreadCpu(on.child.pid!) - main0) * 1000) / 100
    const bytes = (await (await fetch(`${on.metrics}/metrics`)).text()).length
    console.log(
      `idle scrape: median ${median(idleMs).toFixed(2)} ms, coordinator CPU ${idleCpuMs.toFixed(2)} ms per scrape, ${bytes} bytes`,
    )
    await pgbenchRound(on, false) // warm-up
    await pgbenchRound(off, false)
    const rows: Record<string, Round[]> = {
      histograms: [],
      'no histograms': [],
      'histograms + scrape/100ms': [],
    }
    for (let r = 0; r < ROUNDS; r++) {
      rows.histograms!.push(await pgbenchRound(on, false))
      rows['no histograms']!.push(await pgbenchRound(off, false))
      rows['histograms + scrape/100ms']!.push(await pgbenchRound(on, true))
    }
    console.log(
      `\npgbench -S -M simple, ${CLIENTS} clients, ${SECONDS} s x ${ROUNDS} alternating rounds, 1 worker, pool 20`,
    )
    console.log(
      'variant                      tps (mean, spread)     pooler CPU µs/xact   scrapes  scrape ms (median)  coordinator CPU ms/scrape',
    )
    const baseMain = mean(rows.histograms!.map((x) => x.mainCpuS))
    for (const [name, rs] of Object.entries(rows)) {
      const tps = rs.map((x) => x.tps)
      const scrapes = rs.reduce((a, x) => a + x.scrapes, 0)
      const ms = rs.flatMap((x) => x.scrapeMs)
      const perScrape =
        scrapes > 0
          ? (((mean(rs.map((x) => x.mainCpuS)) - baseMain) * rs.length) / scrapes) * 1000
          : Number.NaN
      console.log(
        `${name.padEnd(28)} ${mean(tps).toFixed(0).padStart(8)} ${spread(tps).padStart(8)}   ${mean(
          rs.map((x) => x.cpuUsPerXact),
        )
          .toFixed(2)
          .padStart(
            14,
          )}   ${String(scrapes).padStart(7)}  ${(ms.length > 0 ? median(ms).toFixed(2) : '-').padStart(18)}  ${(Number.isNaN(perScrape) ? '-' : perScrape.toFixed(2)).padStart(24)}`,
      )
    }
  } finally {
    on.child.kill('SIGQUIT')
    off.child.kill('SIGQUIT')
    await pg.stop()
    await cleanupAll()
  }
}

await main()
