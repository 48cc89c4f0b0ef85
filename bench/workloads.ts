// What the end-to-end runner measures, and how the --quick plan trims it.

export type QueryMode = 'simple' | 'extended' | 'prepared'

export interface PgbenchWorkload {
  kind: 'pgbench'
  name: string
  title: string
  clients: number
  threads: number
  mode: QueryMode
  /** pgbench -C: a new connection for every transaction. */
  reconnect: boolean
  /** Over client TLS (pgbench sslmode=require); otherwise sslmode=disable. */
  tls: boolean
  durationS: number
}

export interface ChurnWorkload {
  kind: 'pg-churn'
  name: string
  title: string
  /** connect, SELECT 1, close — this many times in all. */
  iterations: number
  concurrency: number
}

export interface DynamicWorkload {
  kind: 'pg-dynamic'
  name: string
  title: string
  durationS: number
  minConcurrency: number
  maxConcurrency: number
  /** Full up-and-down ramps over the run. */
  periods: number
}

export type Workload = PgbenchWorkload | ChurnWorkload | DynamicWorkload

export interface PlanOptions {
  quick: boolean
  /** Overrides the per-run duration of time-bound workloads. */
  durationS?: number
}

export function allWorkloads(opts: PlanOptions): Workload[] {
  const d = opts.durationS ?? (opts.quick ? 2 : 8)
  const pgbench = (
    name: string,
    title: string,
    clients: number,
    mode: QueryMode,
    reconnect = false,
    tls = false,
  ): PgbenchWorkload => ({
    kind: 'pgbench',
    name,
    title,
    clients,
    threads: clients === 1 ? 1 : 2,
    mode,
    reconnect,
    tls,
    durationS: d,
  })
  return [
    pgbench('select-simple', 'pgbench -S -M simple, 32 clients', 32, 'simple'),
    pgbench('select-extended', 'pgbench -S -M extended, 32 clients', 32, 'extended'),
    pgbench('select-prepared', 'pgbench -S -M prepared, 32 clients', 32, 'prepared'),
    pgbench(
      'select-connect',
      'pgbench -S -C (connect per transaction), 32 clients',
      32,
      'simple',
      true,
    ),
    pgbench(
      'select-tls',
      'pgbench -S -M simple over client TLS, 32 clients',
      32,
      'simple',
      false,
      true,
    ),
    pgbench(
      'select-connect-tls',
      'pgbench -S -C over client TLS (a TLS handshake per transaction), 32 clients',
      32,
      'simple',
      true,
      true,
    ),
    pgbench('single-client', 'pgbench -S, 1 client (latency)', 1, 'simple'),
    pgbench('clients-1000', 'pgbench -S, 1000 clients on pool 20', 1000, 'simple'),
    {
      kind: 'pg-churn',
      name: 'pg-churn',
      title: 'pg: connect, SELECT 1, close ×1000 at concurrency 50',
      iterations: 1000,
      concurrency: 50,
    },
    {
      kind: 'pg-dynamic',
      name: 'pg-dynamic',
      title: 'pg: connect/SELECT 1/close, concurrency ramping 5→100→5',
      durationS: Math.max(d, opts.quick ? 3 : 8),
      minConcurrency: 5,
      maxConcurrency: 100,
      periods: 1,
    },
  ]
}

/** The subset --quick runs unless --only names workloads explicitly. */
export const QUICK_WORKLOADS = ['select-simple', 'select-connect', 'pg-churn']

export function selectWorkloads(
  opts: PlanOptions,
  only: readonly string[] | undefined,
): Workload[] {
  const all = allWorkloads(opts)
  if (only && only.length > 0) {
    const unknown = only.filter((n) => !all.some((w) => w.name === n))
    if (unknown.length > 0) {
      throw Object.assign(
        new Error(
          `unknown workload(s): ${unknown.join(', ')}; known: ${all.map((w) => w.name).join(', ')}`,
        ),
        { code: 'BENCH_UNKNOWN_WORKLOAD' },
      )
    }
    return all.filter((w) => only.includes(w.name))
  }
  return opts.quick ? all.filter((w) => QUICK_WORKLOADS.includes(w.name)) : all
}

/** Rough wall time of one run, used for the "time left" estimate. */
export function estimateSeconds(w: Workload): number {
  switch (w.kind) {
    case 'pgbench':
      return w.durationS + (w.clients >= 500 ? 2 : 0.5)
    case 'pg-churn':
      return 1.5
    case 'pg-dynamic':
      return w.durationS + 0.5
  }
}
