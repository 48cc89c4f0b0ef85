// npm run bench [-- --quick] — micro benchmarks, then pgbouncer-cluster against
// PgBouncer and direct PostgreSQL, round-robin, medians, ratios, JSON + SVG.

import { mkdir, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from './args.ts'
import { cleanupAll, installSignalHandlers, isStopping, onCleanup, trackPid } from './cleanup.ts'
import { clusterFrom } from './cluster-build.ts'
import { describeMachine, machineInfo } from './machine.ts'
import { measure, planRuns, type RunSample, warmUp } from './measure.ts'
import {
  type MemorySample,
  memoryScenario,
  memoryTable,
  type RestSample,
  restRss,
  restTable,
} from './memory.ts'
import { type MicroResult, microTable, runMicro } from './micro.ts'
import { fmtDuration, Progress } from './progress.ts'
import { aggregate, markdownTable, TABLE_LEGEND } from './report.ts'
import { renderSvg } from './svg.ts'
import { allTargetIds, MAX_CLIENT_CONN, PGBOUNCER_BIN, POOL_SIZE, startTargets } from './targets.ts'
import { estimateSeconds, selectWorkloads } from './workloads.ts'

const PG_MAX_CONNECTIONS = 200
const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url))

const log = (line: string) => process.stderr.write(`bench: ${line}\n`)

function timestamp(d: Date): string {
  return d
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replaceAll(':', '-')
}

async function main(): Promise<number> {
  const args = await parseArgs()
  installSignalHandlers()
  const startedAt = new Date()
  const wants = (name: string) => !args.only || args.only.includes(name)
  const workloads = selectWorkloads(
    { quick: args.quick, durationS: args.durationS },
    args.only?.filter((n) => n !== 'micro' && n !== 'memory' && n !== 'autodb' && n !== 'notify'),
  ).filter((w) => wants(w.name))
  const targetIds = args.targets ?? allTargetIds()
  const memoryCount = args.memoryConnections ?? (args.quick ? 5000 : 10_000)

  let micro: MicroResult[] = []
  if (wants('micro')) {
    log('micro benchmarks (tinybench)...')
    micro = await runMicro({ quick: args.quick })
    process.stdout.write(`\n## Micro benchmarks\n\n${microTable(micro)}\n\n`)
  }

  // Long, and a PostgreSQL of its own: only when asked for by name.
  if (args.only?.includes('autodb')) {
    const { runAutodb } = await import('./autodb-run.ts')
    await runAutodb(args, startedAt, log)
  }

  // LISTEN/NOTIFY fan-out, with a PostgreSQL of its own (a backend per direct listener): the full run, or named.
  if (args.only?.includes('notify') || (!args.only && !args.quick)) {
    const { runNotify } = await import('./notify.ts')
    await runNotify(args, startedAt, log)
  }

  const runsE2E = workloads.length > 0 || wants('memory')
  if (!runsE2E) return 0

  // The harness and the load generator are imported here so that a broken
  // harness costs the end-to-end part only, never the micro benchmarks.
  const { startPostgres, findPgTool } = await import('@pgbouncer-cluster/scripts/pg-harness')
  const pgbenchBin = findPgTool('pgbench')
  if (!pgbenchBin) throw Object.assign(new Error('pgbench not found'), { code: 'BENCH_NO_PGBENCH' })
  log('starting PostgreSQL with pgbench tables (scale 10)...')
  const pg = await startPostgres({
    maxConnections: PG_MAX_CONNECTIONS,
    pgbenchInit: { scale: 10 },
    // a read-only benchmark: durability settings only slow the init down
    settings: {
      shared_buffers: '256MB',
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
    },
  })
  onCleanup(() => pg.stop())
  const machine = machineInfo(pg.binDir, PGBOUNCER_BIN)
  log(describeMachine(machine))

  const { LoadGenerator } = await import('./loadgen.ts')
  const loadgen = await LoadGenerator.start()

  const url = new URL(pg.url())
  const set = await startTargets({
    ids: targetIds,
    pg: {
      host: pg.host,
      port: pg.port,
      user: decodeURIComponent(url.username),
      database: decodeURIComponent(url.pathname.slice(1)),
    },
    log,
  })
  onCleanup(() => set.stopAll())
  const ready = set.targets.filter((t) => t.status === 'ready')

  const { plan, skips } = planRuns(workloads, set.targets, args.rounds, PG_MAX_CONNECTIONS)
  const memoryTargets = wants('memory')
    ? ready.filter((t) => t.pids.length > 0 && t.kind !== 'relay')
    : []
  const memoryEstimate = memoryTargets.length * (4 + memoryCount / 2000)
  const totalEstimate = plan.reduce((s, p) => s + estimateSeconds(p.w), 0) + memoryEstimate
  log(`${plan.length} runs, about ${fmtDuration(totalEstimate)}`)
  const progress = new Progress(totalEstimate, plan.length + memoryTargets.length)

  // What each pooler costs just to run, before any client has touched it
  let rest: RestSample[] = []
  if (!isStopping()) {
    await new Promise((r) => setTimeout(r, 1000))
    rest = await restRss(ready.filter((t) => t.kind !== 'relay'))
  }

  // Memory first, while the poolers are fresh: a Node pooler's RSS after the
  // load runs is mostly garbage awaiting collection, which swamps the signal.
  let memory: MemorySample[] = []
  if (memoryTargets.length > 0 && !isStopping()) {
    memory = await memoryScenario(
      memoryTargets,
      loadgen,
      { count: memoryCount, batch: 200, deadlineMs: args.quick ? 20_000 : 60_000 },
      (t) => progress.start(`memory · ${memoryCount} idle clients · ${t.label}`),
    )
    progress.finish(memoryEstimate)
  }

  if (plan.length > 0) {
    for (const t of ready) {
      const r = await warmUp(t, pgbenchBin, trackPid)
      log(
        `warm-up ${t.label}: ${Math.round(r.tps)} tps${r.errors.length ? `, ${r.errors[0]}` : ''}`,
      )
    }
  }

  const samples: RunSample[] = []
  const exits = new Map<string, string>()
  for (const { w, round, t } of plan) {
    if (isStopping()) break
    const exited = t.exitNote()
    if (exited) {
      // a pooler that died is reported once, and nothing more is asked of it
      if (!exits.has(t.id)) log(`${t.label} ${exited.split('\n')[0]}`)
      exits.set(t.id, exited)
      if (!skips.some((k) => k.workload === w.name && k.target === t.id)) {
        skips.push({ workload: w.name, target: t.id, reason: exited.split('\n')[0]! })
      }
      progress.finish(estimateSeconds(w))
      continue
    }
    progress.start(`${w.name} · ${t.label} · round ${round}/${args.rounds}`)
    let untrack = () => {}
    try {
      const s = await measure(w, t, round, {
        pgbenchBin,
        loadgen,
        onSpawn: (pid) => {
          untrack = trackPid(pid)
        },
      })
      if (!isStopping()) samples.push(s)
    } catch (err) {
      if (!isStopping()) log(`${w.name} on ${t.label} failed: ${(err as Error).message}`)
    } finally {
      untrack()
    }
    progress.finish(estimateSeconds(w))
  }

  progress.end()
  // Ctrl-C: the signal handler is stopping everything; a partial table would mislead
  if (isStopping()) return 130

  const rows = aggregate(samples)
  const labels = new Map(set.targets.map((t) => [t.id, t.label]))
  const targetsOut = set.targets.map((t) => ({ id: t.id, label: t.label }))
  const title = `pgbouncer-cluster vs PgBouncer vs PostgreSQL${args.quick ? ' (--quick)' : ''}`
  const out: string[] = []
  out.push(`## ${title}`, '', `Machine: ${describeMachine(machine)}.`, '')
  out.push(
    `Pool: transaction mode, default_pool_size ${POOL_SIZE}, one generated pgbouncer.ini; ${args.rounds} rounds, targets alternating.`,
    '',
    clusterFrom() === 'package'
      ? 'pgbouncer-cluster: the compiled package, as installed (built at bench start).'
      : 'pgbouncer-cluster: the `.ts` sources (BENCH_CLUSTER=sources), not the compiled package.',
    '',
  )
  if (workloads.length > 0) {
    out.push(markdownTable({ rows, skips, workloads, targets: targetsOut }), '', TABLE_LEGEND, '')
  }
  for (const t of set.targets) {
    if (t.status !== 'ready')
      out.push(`- ${t.label}: ${t.status}: ${t.reason?.split('\n').join(' / ')}`)
  }
  for (const t of set.targets) {
    const note = exits.get(t.id) ?? t.exitNote()
    if (note) out.push(`- ${t.label}: ${note.split('\n').slice(0, 6).join(' / ').slice(0, 800)}`)
  }
  const errorNotes = rows.filter((r) => r.errors.length > 0)
  for (const r of errorNotes) out.push(`- ${r.workload} on ${labels.get(r.target)}: ${r.errors[0]}`)
  if (rest.length > 0)
    out.push('', '### RSS at rest (started, no client yet)', '', restTable(rest, labels))
  if (memory.length > 0) {
    out.push(
      '',
      `### Memory: ${memoryCount} idle client connections`,
      '',
      memoryTable(memory, labels),
    )
  }
  process.stdout.write(`${out.join('\n')}\n`)

  await mkdir(RESULTS_DIR, { recursive: true })
  const base = `${RESULTS_DIR}${timestamp(startedAt)}${args.quick ? '-quick' : ''}`
  const json = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    argv: process.argv.slice(2),
    options: {
      ...args,
      cpus: availableParallelism(),
      clusterFrom: clusterFrom(),
      poolSize: POOL_SIZE,
      maxClientConn: MAX_CLIENT_CONN,
    },
    machine,
    poolerIni: set.ini,
    targets: set.targets.map((t) => ({
      exited: exits.get(t.id) ?? t.exitNote(),
      id: t.id,
      label: t.label,
      status: t.status,
      reason: t.reason,
      port: t.endpoint.port,
    })),
    workloads,
    micro,
    samples,
    skips,
    summary: rows,
    memory,
    rest,
  }
  await writeFile(
    `${base}.json`,
    `${JSON.stringify(json, (_k, v) => (Number.isNaN(v) ? null : v), 2)}\n`,
  )
  if (workloads.length > 0) {
    await writeFile(
      `${base}.svg`,
      renderSvg({
        title,
        subtitle: describeMachine(machine),
        rows,
        workloads,
        targets: targetsOut,
      }),
    )
  }
  log(`wrote ${base}.json${workloads.length > 0 ? ` and ${base}.svg` : ''}`)
  return 0
}

let code = 1
try {
  code = await main()
} catch (err) {
  const e = err as Error & { code?: string }
  process.stderr.write(`bench: ${e.code ? `${e.code}: ` : ''}${e.stack ?? e.message}\n`)
  code = 1
} finally {
  await cleanupAll()
}
process.exit(code)
