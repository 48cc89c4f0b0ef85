// Command-line flags of run.ts, parsed with yargs.

export interface BenchArgs {
  quick: boolean
  /** Workload names, plus the pseudo-workloads 'micro' and 'memory'. */
  only: string[] | undefined
  targets: string[] | undefined
  rounds: number
  durationS: number | undefined
  memoryConnections: number | undefined
  /** The autodb scenario (only with `--only autodb`): distinct databases, and its time bound. */
  autodbCount: number
  autodbSeconds: number
  /** The notify scenario: listening clients. */
  notifyListeners: number
}

// yargs ships no types for its main entry; this is the little of it used here.
interface Argv {
  scriptName(name: string): Argv
  usage(text: string): Argv
  option(name: string, opts: Record<string, unknown>): Argv
  strict(): Argv
  help(): Argv
  parseSync(): Record<string, unknown>
}

const list = (v: unknown): string[] | undefined => {
  if (v === undefined) return undefined
  const items = (Array.isArray(v) ? v : [v]).flatMap((x) => String(x).split(','))
  const out = items.map((s) => s.trim()).filter(Boolean)
  return out.length > 0 ? out : undefined
}

export async function parseArgs(argv = process.argv.slice(2)): Promise<BenchArgs> {
  const spec = 'yargs'
  const yargs = ((await import(spec)) as { default: (args: string[]) => Argv }).default
  const a = yargs(argv)
    .scriptName('npm run bench --')
    .usage('$0 [--quick] [--only w1,w2] [--targets t1,t2] [--rounds N] [--duration S]')
    .option('quick', {
      type: 'boolean',
      default: false,
      describe: 'about 2 minutes: fewer workloads, shorter runs',
    })
    .option('only', {
      type: 'string',
      describe: 'comma-separated workloads to run (also: micro, memory, autodb, notify)',
    })
    .option('targets', {
      type: 'string',
      describe:
        'comma-separated targets: direct, pgbouncer, cluster-1, cluster-<cpus>, node-relay, baseline-<n> (BENCH_BASELINE_CLI)',
    })
    .option('rounds', {
      type: 'number',
      default: 5,
      describe: 'round-robin rounds over the targets',
    })
    .option('duration', { type: 'number', describe: 'seconds per time-bound run' })
    .option('autodb-count', {
      type: 'number',
      default: 100_000,
      describe: 'distinct databases through * in the autodb scenario (--only autodb)',
    })
    .option('autodb-seconds', {
      type: 'number',
      default: 900,
      describe: 'bound on the autodb scenario, per pooler, in seconds',
    })
    .option('notify-listeners', {
      type: 'number',
      default: 1000,
      describe: 'listening clients in the LISTEN/NOTIFY scenario',
    })
    .option('memory-connections', {
      type: 'number',
      describe: 'idle client connections held open in the memory scenario',
    })
    .strict()
    .help()
    .parseSync()
  const rounds = Number(a.rounds)
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) {
    throw Object.assign(new Error(`--rounds must be 1..20, got ${a.rounds}`), {
      code: 'BENCH_BAD_ARGS',
    })
  }
  const duration = a.duration === undefined ? undefined : Number(a.duration)
  if (duration !== undefined && !(duration >= 1 && duration <= 120)) {
    throw Object.assign(new Error(`--duration must be 1..120 seconds, got ${a.duration}`), {
      code: 'BENCH_BAD_ARGS',
    })
  }
  const mem = a['memory-connections'] === undefined ? undefined : Number(a['memory-connections'])
  if (mem !== undefined && !(Number.isInteger(mem) && mem >= 1 && mem <= 20000)) {
    throw Object.assign(new Error(`--memory-connections must be 1..20000, got ${mem}`), {
      code: 'BENCH_BAD_ARGS',
    })
  }
  const autodbCount = Number(a['autodb-count'])
  const autodbSeconds = Number(a['autodb-seconds'])
  if (!(Number.isInteger(autodbCount) && autodbCount >= 10 && autodbCount <= 1_000_000)) {
    throw Object.assign(new Error(`--autodb-count must be 10..1000000, got ${autodbCount}`), {
      code: 'BENCH_BAD_ARGS',
    })
  }
  if (!(autodbSeconds >= 10 && autodbSeconds <= 7200)) {
    throw Object.assign(new Error(`--autodb-seconds must be 10..7200, got ${autodbSeconds}`), {
      code: 'BENCH_BAD_ARGS',
    })
  }
  const notifyListeners = Number(a['notify-listeners'])
  if (!(Number.isInteger(notifyListeners) && notifyListeners >= 1 && notifyListeners <= 10_000)) {
    throw Object.assign(
      new Error(`--notify-listeners must be 1..10000, got ${a['notify-listeners']}`),
      { code: 'BENCH_BAD_ARGS' },
    )
  }
  return {
    autodbCount,
    autodbSeconds,
    notifyListeners,
    quick: a.quick === true,
    only: list(a.only),
    targets: list(a.targets),
    rounds,
    durationS: duration,
    memoryConnections: mem,
  }
}
