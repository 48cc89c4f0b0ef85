// The worker's clock: milliseconds since the thread started.
//
// Every time a client keeps (connected, last request, transaction start, idle
// in transaction) is read on this clock rather than in epoch milliseconds.
// These values are small integers, which V8 stores inside the object. Epoch
// milliseconds are too large for that: V8 boxes each such field, and every
// idle client then pays for the boxes even while the fields hold 0. They stay
// small integers for 24 days of uptime; past that V8 boxes them again, and
// nothing but the memory changes.

// The module's binding, not the global: globalThis.performance is a getter,
// run on each use, and preciseClock() runs a few times per transaction.
import { performance } from 'node:perf_hooks'

/**
 * Just before the thread started, in epoch milliseconds: a whole number, so
 * clockNow() is one too, and the clock never reads 0, which the fields use
 * for "not set".
 */
const EPOCH = Math.floor(performance.timeOrigin) - 1
/** performance.now() on the worker's clock. */
const PRECISE_OFFSET = performance.timeOrigin - EPOCH

/** Milliseconds on the worker's clock: whole, from Date.now() as the janitor reads it. */
export function clockNow(): number {
  // Math.floor returns a small integer where it can; a subtraction's result
  // would stay a boxed double though its value is whole.
  return Math.floor(Date.now() - EPOCH)
}

/**
 * The worker's clock with a fraction, from the monotonic clock: for SHOW
 * STATS' wait time and /metrics' histograms, which read below a millisecond.
 * Fractions go in the pool's and the servers' fields, never a client's.
 */
export function preciseClock(): number {
  return PRECISE_OFFSET + performance.now()
}

/** A time on the worker's clock in epoch milliseconds: SHOW's dates, what other threads read. */
export function epochMs(clock: number): number {
  return EPOCH + clock
}

/** An epoch time from another thread on this worker's clock. */
export function fromEpochMs(epoch: number): number {
  return epoch - EPOCH
}
