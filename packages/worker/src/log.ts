import { closeSync, fstatSync, mkdirSync, openSync, writeSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname } from 'node:path'
import type { MessagePort } from 'node:worker_threads'
import type Pino from 'pino'

// pino is CommonJS. require() loads it as it is; an import would first have
// Node scan its source for the names it exports (cjs-module-lexer), in every
// thread at start: 5 to 15 ms, and a scan long enough for V8's optimizing
// compiler, whose code then stays in the process's memory.
const pino: typeof Pino = createRequire(import.meta.url)('pino')

export type Logger = Pino.Logger

/** Anything a JSON line can be written to: a pino destination, a stream, a program's own sink. */
export interface LineSink {
  write(line: string): unknown
}

/**
 * Where a thread's lines go besides the logfile: stdout as JSON, stdout as one
 * human line per record, a sink of the program that embeds the pooler (the
 * coordinator's own thread), the port a worker forwards its lines through to
 * that sink, or nowhere.
 */
export type LogConsole = 'json' | 'pretty' | LineSink | MessagePort | null

export interface LoggerOptions {
  level: string
  /** Bound on every line: a worker's number, or 'coordinator'. */
  worker: number | string
  /** Default 'json'. */
  console?: LogConsole
  logfile?: LogFile | null
  /** More bindings for every line (those of a program's own logger). */
  base?: Record<string, unknown>
}

/**
 * One logger per thread, bindings fixed up front. JSON lines go straight to
 * stdout's descriptor (sonic-boom) and the logfile's, so a worker thread does
 * not route its logging through the coordinator's thread.
 */
export function createLogger(opts: LoggerOptions): Logger {
  const console = consoleSink(opts.console === undefined ? 'json' : opts.console)
  // Like PgBouncer in the foreground: a logfile gets every line, and so does stdout.
  const sinks = [console, opts.logfile ?? null].filter((s): s is LineSink => s !== null)
  const destination =
    sinks.length === 0
      ? { write() {} }
      : sinks.length === 1
        ? sinks[0]!
        : pino.multistream(sinks.map((stream) => ({ stream, level: 'trace' as const })))
  return pino(
    {
      level: opts.level,
      base: { ...opts.base, worker: opts.worker },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { log: censorSecrets },
    },
    destination,
  )
}

function consoleSink(console: LogConsole): LineSink | null {
  if (console === null) return null
  if (console === 'json') return pino.destination({ dest: 1, sync: isRegularFile(1) })
  if (console === 'pretty') return prettyDestination()
  if (isPort(console)) return { write: (line: string) => console.postMessage(line) }
  return console
}

function isPort(console: LineSink | MessagePort): console is MessagePort {
  return typeof (console as MessagePort).postMessage === 'function'
}

/**
 * The logfile: one descriptor for the whole process, opened by the coordinator
 * before it drops privileges (`user =`) and written by every thread (a worker
 * gets its number), so a worker started later, or a file only root may open,
 * changes nothing. Opened for appending, each line is one write, whole.
 */
export class LogFile {
  #fd: number

  constructor(fd: number) {
    this.#fd = fd
  }

  /** Opens (creating it and its directory if need be) the file for appending; throws one line. */
  static open(path: string): LogFile {
    try {
      mkdirSync(dirname(path), { recursive: true })
      return new LogFile(openSync(path, 'a'))
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      throw new Error(`cannot open logfile ${path}: ${e.code ?? e.message}`)
    }
  }

  get fd(): number {
    return this.#fd
  }

  write(line: string): void {
    if (this.#fd < 0) return
    try {
      writeSync(this.#fd, line)
    } catch {
      // A full disk or a file gone bad must not cost a client anything.
    }
  }

  /** Only the opener closes it; lines written afterwards are dropped. */
  close(): void {
    if (this.#fd < 0) return
    closeSync(this.#fd)
    this.#fd = -1
  }
}

// A regular file takes a write at once (into the page cache), so a line is
// written in place, as PgBouncer writes its log: one system call, where an
// asynchronous write costs two thread hand-offs through libuv's pool, a
// tenth of the CPU a short connection costs. A pipe or a terminal can stall
// a writer, so stdout as one of those is written asynchronously.
function isRegularFile(fd: number): boolean {
  try {
    return fstatSync(fd).isFile()
  } catch {
    return false
  }
}

/**
 * Defence in depth: a `password` or `secret` key, on a line's object or one
 * level down, never reaches a log line even if passed by mistake. A scan of
 * the few keys of a line, where pino's `redact` option clones and walks every
 * object it is given: with log_connections on, that was a third of the CPU a
 * short connection costs.
 */
export function censorSecrets(obj: Record<string, unknown>): Record<string, unknown> {
  for (const key in obj) {
    const value = obj[key]
    if (isSecret(key) || (isObject(value) && hasSecret(value))) return censored(obj)
  }
  return obj
}

const SECRET_KEYS = ['password', 'secret']
const CENSOR = '[redacted]'

function isSecret(key: string): boolean {
  return SECRET_KEYS.includes(key)
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null
}

function hasSecret(obj: Record<string, unknown>): boolean {
  for (const key of SECRET_KEYS) if (Object.hasOwn(obj, key)) return true
  return false
}

/** A copy with the secrets replaced; the caller's objects are left as they were. */
function censored(obj: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const key in obj) {
    const value = obj[key]
    if (isSecret(key)) out[key] = CENSOR
    else if (isObject(value) && hasSecret(value)) {
      const inner = { ...value }
      for (const secret of SECRET_KEYS) if (Object.hasOwn(inner, secret)) inner[secret] = CENSOR
      out[key] = inner
    } else out[key] = value
  }
  return out
}

/** Lines to a pipe are buffered asynchronously: a worker thread must flush before it ends. */
export function flushLogger(log: Logger): void {
  try {
    log.flush()
  } catch {
    // the destination may already be closed during shutdown
  }
}

const LEVELS: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
}

/** `2026-01-01T00:00:00.000Z INFO  [1] login {"db":"app"}` for people at a terminal. */
function prettyDestination(): { write(line: string): void } {
  return {
    write(line: string) {
      const { time, level, msg, worker, pid: _pid, hostname: _host, ...rest } = JSON.parse(line)
      const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : ''
      process.stdout.write(
        `${time} ${(LEVELS[level] ?? level).padEnd(5)} [${worker}] ${msg}${extra}\n`,
      )
    },
  }
}
