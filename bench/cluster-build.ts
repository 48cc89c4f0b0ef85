// Which pgbouncer-cluster the bench runs: the compiled package, as users
// install it (built from the sources at bench start, `scripts/package-build.ts`),
// or with BENCH_CLUSTER=sources the `.ts` sources the repository runs, whose
// type stripping costs each isolate memory and start-up time.

import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { trackDir } from './cleanup.ts'

export const SOURCES_CLI = fileURLToPath(
  new URL('../packages/coordinator/bin/pgbouncer-cluster.js', import.meta.url),
)
/** Inside the repository, so that the built lib finds pino, yargs and the rest in its node_modules. */
const BUILD_ROOT = fileURLToPath(new URL('../build/', import.meta.url))

export interface ClusterCli {
  /** The bin to run with node. */
  path: string
  /** 'package' or 'sources', for the report. */
  from: 'package' | 'sources'
}

/** Where clusterCli() takes pgbouncer-cluster from. */
export function clusterFrom(): ClusterCli['from'] {
  return process.env.BENCH_CLUSTER === 'sources' ? 'sources' : 'package'
}

let built: Promise<ClusterCli> | undefined

/** The CLI to bench: built once per process, removed at cleanup. */
export function clusterCli(): Promise<ClusterCli> {
  if (clusterFrom() === 'sources') {
    return Promise.resolve({ path: SOURCES_CLI, from: 'sources' })
  }
  built ??= (async () => {
    const { buildPackage } = await import('@pgbouncer-cluster/scripts/package-build')
    const dir = join(BUILD_ROOT, `bench-${process.pid}`)
    // removed by cleanupAll(), after the processes that run from it are stopped
    trackDir(dir)
    const out = await buildPackage(dir)
    return { path: join(out, 'bin', 'pgbouncer-cluster.js'), from: 'package' as const }
  })()
  return built
}
