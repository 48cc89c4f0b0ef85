// What start-up leaves in a thread's heap, given back once the thread is ready.
//
// Loading the modules and reading the configuration grow a thread's V8 heap,
// its young generation above all (8 MB in the main thread, whose heap is sized
// before any flag the command sets can apply), and V8 keeps that size while
// the thread waits: a pooler at rest runs no collection that would shrink it.
// One collection that reduces memory, run as the thread becomes ready, gives
// back 3 to 4 MB of RSS per thread.
//
// V8 offers that collection only through gc(), which a context gets when it
// is created with --expose-gc on: the flag is on for one throwaway context.

import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'

type Gc = (options: {
  type: 'major'
  execution: 'sync'
  flavor?: 'regular' | 'last-resort'
}) => void

/** V8's gc() for this thread; undefined on a Node whose flags are frozen. */
export function exposedGc(): Gc | undefined {
  try {
    v8.setFlagsFromString('--expose-gc')
    return runInNewContext('typeof gc === "function" ? gc : undefined') as Gc | undefined
  } catch {
    return undefined
  } finally {
    v8.setFlagsFromString('--no-expose-gc')
  }
}

/** One collection that shrinks this thread's heap to what it uses (tens of ms). */
export function releaseStartupMemory(): void {
  exposedGc()?.({ type: 'major', execution: 'sync', flavor: 'last-resort' })
}
