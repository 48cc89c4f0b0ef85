// Everything the runner starts is registered here so that Ctrl-C, a crash or
// a normal exit stops it: no PostgreSQL, pooler or pgbench is left behind.

import { rmSync } from 'node:fs'

type Stopper = () => Promise<void> | void

const stoppers: Stopper[] = []
const pids = new Set<number>()
const dirs = new Set<string>()
let cleaning: Promise<void> | undefined

/** Registers an async stop; stops run in reverse order of registration. */
export function onCleanup(stop: Stopper): () => void {
  stoppers.push(stop)
  return () => {
    const i = stoppers.indexOf(stop)
    if (i !== -1) stoppers.splice(i, 1)
  }
}

/** A child process to SIGKILL if nothing stopped it more gently first. */
export function trackPid(pid: number): () => void {
  pids.add(pid)
  return () => pids.delete(pid)
}

/** A temp dir to remove even if the process ends before its owner removes it. */
export function trackDir(dir: string): () => void {
  dirs.add(dir)
  return () => dirs.delete(dir)
}

/** True once a signal or the end of main() started the cleanup: start nothing new. */
export function isStopping(): boolean {
  return cleaning !== undefined
}

export function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    for (const stop of stoppers.splice(0).reverse()) {
      try {
        await stop()
      } catch (err) {
        process.stderr.write(`bench: cleanup step failed: ${(err as Error).message}\n`)
      }
    }
    killTracked()
  })()
  return cleaning
}

function killTracked(): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
  pids.clear()
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  dirs.clear()
}

export function installSignalHandlers(): void {
  let interruptedAt = 0
  const onSignal = (signal: NodeJS.Signals) => {
    if (interruptedAt > 0) {
      // the harness re-raises the signal it saw right away: only a later one means "hurry"
      if (Date.now() - interruptedAt < 1000) return
      killTracked()
      process.exit(130)
    }
    interruptedAt = Date.now()
    process.stderr.write(`\nbench: ${signal}, stopping everything it started...\n`)
    void cleanupAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)
  // Last resort when the event loop is already gone: synchronous kills only
  process.on('exit', killTracked)
}
