// `npm run bench -- --only autodb [--autodb-count N] [--autodb-seconds S]`:
// the automatic-database scenario (autodb.ts) against each pooler in turn,
// with a PostgreSQL of its own (one that takes the servers of hundreds of new
// databases a second), then its table on stdout and its JSON in results/.

import { mkdir, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import type { BenchArgs } from './args.ts'
import { AUTODB_SETTINGS, type AutodbSample, autodbScenario, autodbTable } from './autodb.ts'
import { isStopping, onCleanup } from './cleanup.ts'
import { describeMachine, machineInfo } from './machine.ts'
import { PGBOUNCER_BIN, startTargets } from './targets.ts'

const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url))
/** The load generator holds this many clients, each of its own database, at most. */
const ALIVE = 10_000
const IN_FLIGHT = 32

export async function runAutodb(
  args: BenchArgs,
  startedAt: Date,
  log: (line: string) => void,
): Promise<AutodbSample[]> {
  const { startPostgres } = await import('@pgbouncer-cluster/scripts/pg-harness')
  log('autodb: starting a PostgreSQL of its own (max_connections 1000)...')
  const pg = await startPostgres({
    maxConnections: 1000,
    settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
  })
  const stopPg = onCleanup(() => pg.stop())
  const machine = machineInfo(pg.binDir, PGBOUNCER_BIN)
  const url = new URL(pg.url())
  const user = decodeURIComponent(url.username)
  const ids = (args.targets ?? ['pgbouncer', 'cluster-1']).filter(
    (id) => id === 'pgbouncer' || /^(cluster|baseline)-\d+$/.test(id),
  )
  const set = await startTargets({
    ids,
    pg: { host: pg.host, port: pg.port, user, database: decodeURIComponent(url.pathname.slice(1)) },
    log,
    config: {
      // Every name reaches the one real database; the console for SHOW LISTS.
      fallback: `dbname=${decodeURIComponent(url.pathname.slice(1))}`,
      settings: { ...AUTODB_SETTINGS, admin_users: user },
    },
  })
  const stopTargets = onCleanup(() => set.stopAll())
  const alive = Math.min(ALIVE, Math.max(1, Math.floor(args.autodbCount / 10)))
  const samples: AutodbSample[] = []
  try {
    for (const t of set.targets) {
      if (t.status !== 'ready' || isStopping()) continue
      log(`autodb: ${args.autodbCount} databases through * against ${t.label}, ${alive} alive...`)
      const sample = await autodbScenario(
        t,
        {
          count: args.autodbCount,
          alive,
          inFlight: IN_FLIGHT,
          deadlineMs: args.autodbSeconds * 1000,
        },
        (done) => {
          if (done % 10_000 === 0) log(`autodb: ${t.label}: ${done} databases`)
        },
      )
      samples.push(sample)
      log(
        `autodb: ${t.label}: ${sample.opened} in ${sample.seconds.toFixed(0)} s, ${sample.failed} failed${sample.errors.length > 0 ? ` (${sample.errors[0]})` : ''}`,
      )
    }
  } finally {
    await set.stopAll()
    stopTargets()
    await pg.stop()
    stopPg()
  }
  const labels = new Map(set.targets.map((t) => [t.id, t.label]))
  const lines = [
    `## Automatic databases: ${args.autodbCount.toLocaleString('en-US')} distinct names through *`,
    '',
    `Machine: ${describeMachine(machine)}.`,
    '',
    `Each client logs in to a new name (\`* = ... dbname=${decodeURIComponent(url.pathname.slice(1))}\`), runs SELECT 1 and stays; the newest ${alive.toLocaleString('en-US')} stay connected, ${IN_FLIGHT} logins in flight; autodb_idle_timeout ${AUTODB_SETTINGS.autodb_idle_timeout} s, server_idle_timeout ${AUTODB_SETTINGS.server_idle_timeout} s. "first answer": connect to SELECT 1's answer for a name never used before (a new pool, its server login included). "alive at most": SHOW LISTS' databases. Shared memory: pgbouncer-cluster's SharedArrayBuffer, fixed at start, and the most of it committed (RSS of its mapping).`,
    '',
    autodbTable(samples, labels),
    '',
  ]
  for (const t of set.targets) {
    if (t.status !== 'ready') lines.push(`- ${t.label}: ${t.status}: ${t.reason?.split('\n')[0]}`)
  }
  for (const s of samples) {
    if (s.errors.length > 0)
      lines.push(`- ${labels.get(s.target)}: ${s.failed} failed: ${s.errors.join('; ')}`)
  }
  process.stdout.write(`${lines.join('\n')}\n`)
  await mkdir(RESULTS_DIR, { recursive: true })
  const file = `${RESULTS_DIR}${startedAt
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replaceAll(':', '-')}-autodb.json`
  await writeFile(
    file,
    `${JSON.stringify(
      {
        startedAt: startedAt.toISOString(),
        finishedAt: new Date().toISOString(),
        argv: process.argv.slice(2),
        machine,
        options: { count: args.autodbCount, alive, inFlight: IN_FLIGHT, ...AUTODB_SETTINGS },
        samples,
      },
      (_k, v) => (Number.isNaN(v) ? null : v),
      2,
    )}\n`,
  )
  log(`wrote ${file}`)
  return samples
}
