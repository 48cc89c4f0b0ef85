import { fstatSync } from 'node:fs'
import { createRequire } from 'node:module'
import type Pino from 'pino'

// pino is CommonJS. require() loads it as it is; an import would first have
// Node scan its source for the names it exports (cjs-module-lexer), in every
// thread at start: 5 to 15 ms, and a scan long enough for V8's optimizing
// compiler, whose code then stays in the process's memory.
const pino: typeof Pino = createRequire(import.meta.url)('pino')

export type Logger = Pino.Logger

export interface LoggerOptions {
  level: string
  /** Bound on every line: a worker's number, or 'coordinator'. */
  worker: number | string
  logfile?: string | null
  /** One human line per record instead of JSON (stdout is a terminal). */
  pretty?: boolean
}

/**
 * One logger per thread, bindings fixed up front. JSON lines go straight to the
 * file descriptor (sonic-boom), so a worker thread does not route its logging
 * through the coordinator's stdout.
 */
export function createLogger(opts: LoggerOptions): Logger {
  const console = opts.pretty
    ? prettyDestination()
    : pino.destination({ dest: 1, sync: isRegularFile(1) })
  // Like PgBouncer in the foreground: a logfile gets every line, and so does stdout.
  const destination = opts.logfile
    ? pino.multistream([
        { stream: console, level: 'trace' },
        {
          stream: pino.destination({ dest: opts.logfile, sync: true, mkdir: true }),
          level: 'trace',
        },
      ])
    : console
  return pino(
    {
      level: opts.level,
      base: { worker: opts.worker },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { log: censorSecrets },
    },
    destination,
  )
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
