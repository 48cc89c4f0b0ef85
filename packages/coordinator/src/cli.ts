import { startAllocStats } from '@pgbouncer-cluster/worker/alloc-stats'
import { createLogger, LogFile } from '@pgbouncer-cluster/worker/log'
import { releaseStartupMemory } from '@pgbouncer-cluster/worker/startup-memory'
import type { Options } from 'yargs'
import yargsParser from 'yargs-parser'
import { Cluster } from './cluster.ts'
import type { Settings } from './config/config.ts'
import { type Config, ConfigError, defaultConfig, loadConfig } from './config/config.ts'
import { splitHostPort } from './config/listen.ts'
import { describeConfig } from './config/summary.ts'
import { defaultWorkers } from './default-workers.ts'
import { planRunAs, type RunAs, rootWarning } from './privileges.ts'
import { VERSION_TEXT } from './version.ts'

/** Exit status for configuration and usage errors, as the issue tracker's contract says. */
export const EXIT_USAGE = 2

export interface CliOptions {
  config: string | null
  workers: number
  listen: { host: string; port: number } | null
  poolMode: 'session' | 'transaction' | 'statement' | null
  logLevel: string
  /** --check: validate the configuration, say what it serves, and exit. */
  check: boolean
  /** `--metrics HOST:PORT`: a flag only, as PgBouncer refuses keys it does not know in its ini. */
  metrics: { host: string; port: number } | null
}

/**
 * `pgbouncer-cluster [CONFIG.ini] [--workers N] [--listen HOST:PORT]
 *  [--pool-mode MODE] [--log-level LEVEL]` — returns the exit status.
 */
export async function main(argv: string[]): Promise<number> {
  let options: CliOptions
  let config: Config
  try {
    options = await parseArgs(argv)
    config = readConfig(options)
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError) {
      process.stderr.write(`pgbouncer-cluster: ${err.message}\n`)
      return EXIT_USAGE
    }
    throw err
  }
  if (options === HELP_OR_VERSION) return 0
  if (options.check) {
    process.stdout.write(`${describeConfig(config, options.workers).join('\n')}\n`)
    return 0
  }
  let runAs: RunAs | null
  let logfile: LogFile | null
  try {
    runAs = planRunAs(config.settings.user)
    logfile = config.settings.logfile ? LogFile.open(config.settings.logfile) : null
  } catch (err) {
    process.stderr.write(`pgbouncer-cluster: could not start: ${(err as Error).message}\n`)
    return 1
  }
  // What the terminal is told on stderr, the logfile gets as records too.
  const fileLog =
    logfile === null
      ? null
      : createLogger({ level: options.logLevel, worker: 'coordinator', console: null, logfile })
  for (const warning of config.warnings) {
    process.stderr.write(`pgbouncer-cluster: warning: ${warning}\n`)
    fileLog?.warn(warning)
  }
  startAllocStats(process.env.PGBC_ALLOC_STATS, 'coordinator')
  const logConsole = process.stdout.isTTY ? 'pretty' : 'json'
  const log = createLogger({
    level: options.logLevel,
    worker: 'coordinator',
    console: logConsole,
    logfile,
  })
  let cluster: Cluster
  try {
    cluster = new Cluster({
      config,
      workers: options.workers,
      logLevel: options.logLevel,
      logConsole,
      logfile,
      log,
      metrics: options.metrics,
      runAs,
      // SIGHUP reads the same file with the same flags winning over it.
      load: () => readConfig(options),
    })
  } catch (err) {
    // The shared memory it would make (PGBOUNCER_CLUSTER_SLOTS): one line, no stack.
    fileLog?.fatal({ err: (err as Error).message }, 'could not start')
    process.stderr.write(`pgbouncer-cluster: could not start: ${(err as Error).message}\n`)
    return 1
  }
  try {
    await cluster.start()
  } catch (err) {
    // One line, on stderr; the logfile keeps it as a record.
    fileLog?.fatal({ err: (err as Error).message }, 'could not start')
    process.stderr.write(`pgbouncer-cluster: could not start: ${(err as Error).message}\n`)
    await cluster.stop('immediate')
    return 1
  }
  // Said once it listens, beside the other lines about how it runs.
  const root = rootWarning(config.settings.user)
  if (root !== null) log.warn(root)
  // The command's own thread: the library leaves an embedding process's heap alone.
  releaseStartupMemory()
  return cluster.run()
}

class UsageError extends Error {
  readonly code = 'ERR_USAGE'
}

const HELP_OR_VERSION = {} as CliOptions

/** The flags, for yargs (help, version, errors) and for the quick parse alike. */
const FLAGS = {
  workers: {
    alias: 'w',
    type: 'number',
    describe: 'worker threads accepting clients (default: number of CPUs; 1 on up to 2 CPUs)',
  },
  listen: {
    alias: 'l',
    type: 'string',
    describe: 'HOST:PORT to listen on (overrides listen_addr/listen_port)',
  },
  'pool-mode': {
    type: 'string',
    choices: ['session', 'transaction', 'statement'],
    describe: 'pool mode (overrides pool_mode)',
  },
  check: {
    type: 'boolean',
    describe: 'check the configuration, print what it serves, and exit (0: good, 2: error)',
  },
  metrics: {
    type: 'string',
    describe: 'HOST:PORT to serve Prometheus /metrics, /health and /ready on',
  },
  'log-level': {
    type: 'string',
    default: 'info',
    choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    describe: 'log level',
  },
} as const satisfies Record<string, Options>

type Flag = Options & { type: 'number' | 'string' | 'boolean' }

/** What the parse gives the options: the flags' values and the positional arguments. */
interface ParsedArgs {
  _: (string | number)[]
  workers?: number
  listen?: string
  'pool-mode'?: string
  check?: boolean
  metrics?: string
  'log-level': string
}

/**
 * The command line as yargs reads it. A good one is read by yargs-parser, the
 * parser yargs itself runs, with the same flags; yargs is loaded only for
 * --help, --version and a line that is not good, to print what it prints. The
 * pooler runs for days, and yargs with its help layout (cliui, string-width and
 * its Unicode segmenter, y18n) held about 8 MB of every process's memory.
 */
export async function parseArgs(argv: string[]): Promise<CliOptions> {
  const args = parseQuickly(argv) ?? (await parseWithYargs(argv))
  return args === null ? HELP_OR_VERSION : toOptions(args)
}

/** For the tests: the same line read by yargs alone. */
export async function parseArgsWithYargs(argv: string[]): Promise<CliOptions> {
  const args = await parseWithYargs(argv)
  return args === null ? HELP_OR_VERSION : toOptions(args)
}

/** The parsed line, or null where yargs must decide: an unknown flag, a bad value, help. */
function parseQuickly(argv: string[]): ParsedArgs | null {
  const byKey = new Map<string, Flag>()
  const opts = {
    alias: {} as Record<string, string>,
    number: [] as string[],
    string: [] as string[],
    boolean: [] as string[],
    default: {} as Record<string, unknown>,
    configuration: { 'camel-case-expansion': false, 'dot-notation': false },
  }
  for (const [name, flag] of Object.entries(FLAGS as Record<string, Flag>)) {
    byKey.set(name, flag)
    opts[flag.type].push(name)
    if (typeof flag.alias === 'string') {
      byKey.set(flag.alias, flag)
      opts.alias[name] = flag.alias
    }
    if (flag.default !== undefined) opts.default[name] = flag.default
  }
  const parsed = yargsParser.detailed(argv, opts)
  if (parsed.error !== null) return null
  for (const [key, value] of Object.entries(parsed.argv)) {
    if (key === '_') continue
    const flag = byKey.get(key)
    if (flag === undefined || typeof value !== flag.type) return null
    if (flag.choices !== undefined && !(flag.choices as unknown[]).includes(value)) return null
  }
  return parsed.argv as ParsedArgs
}

/** yargs' reading of the line: its values, null after it printed help or the version. */
async function parseWithYargs(argv: string[]): Promise<ParsedArgs | null> {
  const { default: yargs } = await import('yargs')
  const parser = yargs(argv)
    .scriptName('pgbouncer-cluster')
    .usage(
      '$0 [CONFIG.ini] [options]\n\nA PgBouncer-compatible PostgreSQL connection pooler on every core, behind one port.',
    )
    .options(FLAGS)
    .version(VERSION_TEXT)
    .help()
    .strictOptions()
    .exitProcess(false)
    .fail((msg, err) => {
      throw new UsageError(msg ?? err?.message ?? 'invalid arguments')
    })
  parser.showHelpOnFail(false)
  const args = parser.parseSync()
  if (args.help || args.version) return null
  return args as ParsedArgs
}

function toOptions(args: ParsedArgs): CliOptions {
  const positional = args._.map(String)
  if (positional.length > 1)
    throw new UsageError(`expected at most one config file, got: ${positional.join(' ')}`)
  const workers = args.workers ?? defaultWorkers()
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) {
    throw new UsageError(`--workers must be an integer from 1 to 64, got ${args.workers}`)
  }
  return {
    config: positional[0] ?? null,
    workers,
    listen: args.listen === undefined ? null : parseListen(args.listen),
    poolMode: (args['pool-mode'] as CliOptions['poolMode']) ?? null,
    logLevel: args['log-level'],
    check: args.check === true,
    metrics: args.metrics === undefined ? null : parseListen(args.metrics, '--metrics'),
  }
}

function parseListen(value: string, flag = '--listen'): { host: string; port: number } {
  const listen = splitHostPort(value)
  if (listen === null) throw new UsageError(`${flag}: bad port in "${value}"`)
  return listen
}

function readConfig(options: CliOptions): Config {
  if (options === HELP_OR_VERSION) return defaultConfig()
  const overrides: Partial<Settings> = {}
  if (options.listen !== null) {
    overrides.listenAddr = options.listen.host
    overrides.listenPort = options.listen.port
  }
  if (options.poolMode !== null) overrides.poolMode = options.poolMode
  return options.config === null ? defaultConfig(overrides) : loadConfig(options.config, overrides)
}
