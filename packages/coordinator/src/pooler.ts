// The programmatic API: a Node program (or its test suite) runs a pooler in
// its own process. Same configuration checks and errors as the command; no
// signal handlers and no process.exit, which belong to the program.
//
// The types here are written out rather than imported from the worker or
// protocol packages: they are the published declarations, which must stand
// alone.

import { createLogger, type LineSink, LogFile } from '@pgbouncer-cluster/worker/log'
import { Cluster } from './cluster.ts'
import {
  type Config,
  ConfigError,
  type ConfigSections,
  configFromObject,
  defaultConfig,
  loadConfig,
  type Settings,
} from './config/config.ts'
import { splitHostPort } from './config/listen.ts'
import { defaultWorkers } from './default-workers.ts'

export type PoolMode = 'session' | 'transaction' | 'statement'
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

/** pgbouncer.ini's sections as an object; values are written as in the file. */
export interface PoolerConfig {
  /** name → connection string (`host=... port=... dbname=...`) or its parameters as an object. */
  databases?: Record<string, string | Record<string, string | number>>
  /** Setting name (as in the file, e.g. `pool_mode`) → value. */
  pgbouncer?: Record<string, string | number | boolean>
  /** user → `pool_mode=... max_user_connections=...` or those parameters as an object. */
  users?: Record<string, string | Record<string, string | number>>
}

export interface StartPoolerOptions {
  /** Path of a pgbouncer.ini. Give this or `config`; with neither, the command's defaults. */
  configFile?: string
  /** The same sections as an object. */
  config?: PoolerConfig
  /** Worker threads accepting clients; default: the number of CPUs, 1 on up to 2 (`--workers`). */
  workers?: number
  /** `HOST:PORT` or `PORT`, over listen_addr/listen_port (`--listen`); port 0 picks a free one. */
  listen?: string
  /** Over pool_mode (`--pool-mode`). */
  poolMode?: PoolMode
  /**
   * Default 'info' (`--log-level`), or the level of `logger`. Lines go, as the
   * command's do, to stdout (one human line per record on a terminal, JSON
   * lines otherwise) and to the `logfile` setting's file, unless `logger` or
   * `destination` says where instead of stdout.
   */
  logLevel?: LogLevel
  /**
   * A pino logger (or any with the same methods): every record of the pooler
   * and its worker threads goes through a child of it bound to `worker`, with
   * the record's fields and message.
   */
  logger?: PoolerLogger
  /** Where the JSON lines go instead of stdout: `pino.destination(...)`, `process.stderr`, any stream. */
  destination?: { write(line: string): unknown }
}

/** What startPooler uses of a pino logger. */
export interface PoolerLogger {
  level: string
  child(bindings: Record<string, unknown>): PoolerLogger
  fatal(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  info(obj: object, msg?: string): void
  debug(obj: object, msg?: string): void
  trace(obj: object, msg?: string): void
}

/** One (database, user) pool, summed over the workers: SHOW POOLS and SHOW STATS in one. */
export interface PoolStats {
  database: string
  user: string
  mode: string
  clActive: number
  clWaiting: number
  svActive: number
  svIdle: number
  svUsed: number
  svLogin: number
  svBeingCanceled: number
  /** How long the oldest waiting client has waited, µs (0: none waits). */
  maxWaitUs: number
  xactCount: number
  queryCount: number
  bytesReceived: number
  bytesSent: number
  xactUs: number
  queryUs: number
  waitUs: number
}

export interface PoolerStats {
  workers: number
  pools: PoolStats[]
}

export interface Pooler {
  /** The address clients connect to. */
  readonly host: string
  readonly port: number
  /**
   * Reads the configuration again (the file, or `config` when given) and hands
   * it to the workers; connected clients stay. A section `config` leaves out
   * keeps its current entries (`reload({ databases })` changes only the
   * databases). Throws ConfigError and keeps the running configuration when
   * it is bad.
   */
  reload(config?: PoolerConfig): void
  /** Asks every worker for its numbers (as SHOW POOLS does) and sums them. */
  stats(): Promise<PoolerStats>
  /**
   * Stops the pooler; afterwards nothing of it keeps the process alive. By
   * default at once, closing every connection (SIGQUIT); 'wait-for-servers'
   * lets transactions in flight finish (SIGINT), 'wait-for-clients' waits for
   * the clients to leave (SIGTERM).
   */
  close(options?: { mode?: 'immediate' | 'wait-for-servers' | 'wait-for-clients' }): Promise<void>
}

/** Starts a pooler; resolves once every worker listens. */
export async function startPooler(options: StartPoolerOptions = {}): Promise<Pooler> {
  const workers = options.workers ?? defaultWorkers()
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) {
    throw new ConfigError(`must be an integer from 1 to 64, got ${options.workers}`, {
      key: 'workers',
    })
  }
  if (options.configFile !== undefined && options.config !== undefined) {
    throw new ConfigError('give configFile or config, not both', { key: 'config' })
  }
  const logLevel = options.logLevel ?? (options.logger?.level as LogLevel | undefined) ?? 'info'
  if (!LOG_LEVELS.has(logLevel)) {
    throw new ConfigError(`must be one of ${[...LOG_LEVELS].join(', ')}`, { key: 'logLevel' })
  }
  if (options.logger !== undefined && options.destination !== undefined) {
    throw new ConfigError('give logger or destination, not both', { key: 'logger' })
  }
  const overrides = commandLineSettings(options)
  let sections = options.config
  const read = (): Config =>
    options.configFile !== undefined
      ? loadConfig(options.configFile, overrides)
      : sections !== undefined
        ? configFromObject(sections as ConfigSections, overrides)
        : defaultConfig(overrides)
  const config = read()
  const logfile = config.settings.logfile ? LogFile.open(config.settings.logfile) : null
  // As the command: human lines on a terminal, JSON lines otherwise.
  const logConsole: LineSink | 'pretty' | 'json' =
    options.logger !== undefined
      ? loggerSink(options.logger)
      : (options.destination ?? (process.stdout.isTTY ? 'pretty' : 'json'))
  const log = createLogger({ level: logLevel, worker: 'coordinator', console: logConsole, logfile })
  for (const warning of config.warnings) log.warn(warning)
  if (config.settings.user) {
    // The process is the program's: its user is the program's business.
    log.warn(
      `user = ${config.settings.user} is not applied by startPooler: the pooler runs inside this program, which keeps its own user`,
    )
  }
  const cluster = new Cluster({
    config,
    workers,
    logLevel,
    logConsole,
    logfile,
    log,
    load: read,
    signals: false,
  })
  try {
    await cluster.start()
  } catch (err) {
    await cluster.stop('immediate')
    logfile?.close()
    throw err
  }
  const { host, port } = cluster
  return {
    host,
    port,
    reload(next?: PoolerConfig) {
      const previous = sections
      if (next !== undefined) {
        if (options.configFile !== undefined) {
          throw new ConfigError('this pooler reads a file: change the file', { key: 'config' })
        }
        sections = { ...sections, ...definedSections(next) }
      }
      try {
        read() // throws the ConfigError the cluster would only log
      } catch (err) {
        sections = previous
        throw err
      }
      if (!cluster.reload()) throw new Error('the pooler is stopping')
    },
    async stats() {
      const { pools } = await cluster.stats()
      return { workers, pools: pools.map((p): PoolStats => ({ ...p })) }
    },
    async close(opts = {}) {
      await cluster.stop(opts.mode ?? 'immediate')
      logfile?.close()
    },
  }
}

/** The sections a reload gives; one left out (or undefined) keeps what runs. */
function definedSections(config: PoolerConfig): PoolerConfig {
  const out: PoolerConfig = {}
  for (const [name, section] of Object.entries(config)) {
    if (section !== undefined) (out as Record<string, unknown>)[name] = section
  }
  return out
}

const LEVEL_NAMES: Record<number, keyof PoolerLogger> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
}

/**
 * A program's logger as a sink of the JSON lines every thread makes: each
 * record goes through a child bound to its worker, with its fields and message.
 */
function loggerSink(logger: PoolerLogger): LineSink {
  const children = new Map<string | number, PoolerLogger>()
  return {
    write(line: string) {
      const { level, time: _time, msg, worker, ...fields } = JSON.parse(line)
      let child = children.get(worker)
      if (child === undefined) children.set(worker, (child = logger.child({ worker })))
      const method = LEVEL_NAMES[level] ?? 'info'
      ;(child[method] as (obj: object, msg?: string) => void).call(child, fields, msg)
    },
  }
}

const LOG_LEVELS = new Set<string>(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
const POOL_MODES = new Set<string>(['session', 'transaction', 'statement'])

// The flags win over the file, as on the command line.
function commandLineSettings(options: StartPoolerOptions): Partial<Settings> {
  const out: Partial<Settings> = {}
  if (options.listen !== undefined) {
    const { host, port } = parseListen(String(options.listen))
    out.listenAddr = host
    out.listenPort = port
  }
  if (options.poolMode !== undefined) {
    if (!POOL_MODES.has(options.poolMode)) {
      throw new ConfigError(`must be one of ${[...POOL_MODES].join(', ')}`, { key: 'poolMode' })
    }
    out.poolMode = options.poolMode
  }
  return out
}

/** `--listen` of the API: a bad value is a ConfigError on the key `listen`. */
export function parseListen(value: string): { host: string; port: number } {
  const listen = splitHostPort(value)
  if (listen === null) throw new ConfigError(`bad port in "${value}"`, { key: 'listen' })
  return listen
}
