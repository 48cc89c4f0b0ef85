import { fstatSync } from 'node:fs'
import pino from 'pino'

export type Logger = pino.Logger

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
      // Defence in depth: these keys never reach a log line even if passed by mistake.
      redact: { paths: ['password', '*.password', 'secret', '*.secret'], censor: '[redacted]' },
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
