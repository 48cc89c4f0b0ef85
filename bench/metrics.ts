// What /metrics costs: the time and CPU of a scrape, whether scraping every
// 100 ms during `pgbench -S` changes tps, and what the latency histograms cost
// per transaction (pgbouncer-cluster with PGBOUNCER_CLUSTER_HISTOGRAMS=off
// against the default, in alternating rounds, plus a micro benchmark of one
// recording). Standalone: node metrics.ts [--seconds N] [--rounds N] [--workers N]

import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Latency } from '@pgbouncer-cluster/protocol/latency'
import { createSharedMemory, SharedMemory } from '@pgbouncer-cluster/protocol/shared-memory'
import { findPgTool, startPostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { cleanupAll, trackPid } from './cleanup.ts'
import { clusterCli } from './cluster-build.ts'
import { freePort } from './targets.ts'

const run = promisify(execFile)
const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? fallback : Number(process.argv[i + 1])
}
const SECONDS = arg('seconds', 8)
const ROUNDS = arg('rounds', 5)
const WORKERS = arg('workers', 1)
const CLIENTS = 16
const SCRAPE_EVERY_MS = 100
/** Idle scrapes: ROUNDS batches of this many. */
const IDLE_BATCH = 50
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// CPU from /proc/.../schedstat: nanoseconds on CPU, where /proc/PID/stat
// counts 10 ms ticks (too coarse for one scrape).
const schedNs = (path: string) => Number(readFileSync(path, 'utf8').split(' ')[0])
/** CPU ns of the process's main thread (the coordinator, where scrapes run). */
const mainThreadNs = (pid: number) => schedNs(`/proc/${pid}/task/${pid}/schedstat`)
/** CPU ns of every live thread of the process (coordinator and workers). */
function processNs(pid: number): number {
  let ns = 0
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += schedNs(`/proc/${pid}/task/${tid}/schedstat`)
    } catch {} // a thread that just ended
  }
  return ns
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
      String(WORKERS),
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
  trackPid(child.pid!)
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
  /** Whole-process CPU (all threads) per transaction. */
  cpuUsPerXact: number
  processNs: number
  mainNs: number
  scrapeMs: number[]
}

async function pgbenchRound(c: Cluster, scrape: boolean): Promise<Round> {
  const pid = c.child.pid!
  const cpu0 = processNs(pid)
  const main0 = mainThreadNs(pid)
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
  const processUsed = processNs(pid) - cpu0
  return {
    tps,
    xacts,
    cpuUsPerXact: processUsed / 1e3 / xacts,
    processNs: processUsed,
    mainNs: mainThreadNs(pid) - main0,
    scrapeMs,
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}
const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!
}
/** median [min .. max] */
const summary = (xs: number[], digits: number) =>
  `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)} .. ${Math.max(...xs).toFixed(digits)}]`

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
    await pgbenchRound(on, false) // warm-up: servers open, code optimized
    await pgbenchRound(off, false)

    // Idle scrapes, one after another: wall time, and the CPU of the
    // coordinator and of the whole process (the workers answer the console's
    // stats request) per scrape.
    const idle = { ms: [] as number[], mainMs: [] as number[], processMs: [] as number[] }
    for (let b = 0; b < ROUNDS; b++) {
      const pid = on.child.pid!
      const main0 = mainThreadNs(pid)
      const proc0 = processNs(pid)
      const ms: number[] = []
      for (let i = 0; i < IDLE_BATCH; i++) {
        const t = performance.now()
        await (await fetch(`${on.metrics}/metrics`)).text()
        ms.push(performance.now() - t)
      }
      idle.ms.push(median(ms))
      idle.mainMs.push((mainThreadNs(pid) - main0) / 1e6 / IDLE_BATCH)
      idle.processMs.push((processNs(pid) - proc0) / 1e6 / IDLE_BATCH)
      await sleep(200)
    }
    const body = await (await fetch(`${on.metrics}/metrics`)).text()
    console.log(
      `\nidle scrape, ${WORKERS} worker(s), ${body.length} bytes, ${body.split('\n').filter((l) => l && !l.startsWith('#')).length} samples; ${ROUNDS} batches of ${IDLE_BATCH}, median [min .. max] of the batches:`,
    )
    console.log(`  wall time               ${summary(idle.ms, 2)} ms`)
    console.log(`  coordinator CPU         ${summary(idle.mainMs, 2)} ms per scrape`)
    console.log(`  whole process CPU       ${summary(idle.processMs, 2)} ms per scrape`)

    // pgbench rounds; each round runs the three variants in a rotated order.
    const variants = [
      ['histograms', on, false],
      ['no histograms', off, false],
      ['histograms + scrape/100ms', on, true],
    ] as const
    const rows = new Map<string, Round[]>(variants.map(([name]) => [name, []]))
    for (let r = 0; r < ROUNDS; r++) {
      for (let k = 0; k < variants.length; k++) {
        const [name, c, scrape] = variants[(r + k) % variants.length]!
        rows.get(name)!.push(await pgbenchRound(c, scrape))
      }
    }
    console.log(
      `\npgbench -S -M simple, ${CLIENTS} clients, ${SECONDS} s x ${ROUNDS} rounds (variants alternating), ${WORKERS} worker(s), pool 20; median [min .. max] of the rounds`,
    )
    for (const [name, rs] of rows) {
      console.log(
        `  ${name.padEnd(26)} tps ${summary(
          rs.map((x) => x.tps),
          0,
        )}   pooler CPU µs/tx ${summary(
          rs.map((x) => x.cpuUsPerXact),
          2,
        )}`,
      )
    }
    // Per round, each variant against the plain one of the same round.
    const h = rows.get('histograms')!
    const n = rows.get('no histograms')!
    const sc = rows.get('histograms + scrape/100ms')!
    console.log('\nhistograms, per round against no histograms of the same round:')
    console.log(
      `  tps ratio (with / without)     ${summary(
        h.map((x, i) => x.tps / n[i]!.tps),
        3,
      )}`,
    )
    console.log(
      `  CPU µs per tx (with − without) ${summary(
        h.map((x, i) => x.cpuUsPerXact - n[i]!.cpuUsPerXact),
        2,
      )}`,
    )
    console.log(
      '\nscraping every 100 ms under load, per round against histograms without scraping:',
    )
    console.log(
      `  tps ratio (scraped / not)      ${summary(
        sc.map((x, i) => x.tps / h[i]!.tps),
        3,
      )}`,
    )
    const ms = sc.flatMap((x) => x.scrapeMs)
    console.log(
      `  scrape wall time               median ${median(ms).toFixed(2)} ms, p95 ${quantile(ms, 0.95).toFixed(2)} ms, max ${Math.max(...ms).toFixed(2)} ms (${ms.length} scrapes)`,
    )
    console.log(
      `  coordinator CPU per scrape     ${summary(
        sc.map((x, i) => (x.mainNs - h[i]!.mainNs) / 1e6 / x.scrapeMs.length),
        2,
      )} ms`,
    )
  } finally {
    on.child.kill('SIGQUIT')
    off.child.kill('SIGQUIT')
    await pg.stop()
    await cleanupAll()
  }
}

await main()
