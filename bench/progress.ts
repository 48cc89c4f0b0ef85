// One progress line on stderr: which workload, which target, how much is left.
// On a terminal it redraws in place; under turbo or CI it prints a line per run.

export function fmtDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?'
  const m = Math.floor(s / 60)
  const sec = Math.round(s % 60)
  return m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`
}

export function bar(fraction: number, width = 20): string {
  const f = Math.min(1, Math.max(0, fraction))
  const full = Math.round(f * width)
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`
}

export class Progress {
  #total: number
  #done = 0
  #estimatedDone = 0
  #startedAt = performance.now()
  #steps: number
  #step = 0
  #tty: boolean

  constructor(totalEstimatedS: number, steps: number, tty = process.stderr.isTTY === true) {
    this.#total = totalEstimatedS
    this.#steps = steps
    this.#tty = tty
  }

  /** Seconds left, scaled by how far reality has run from the estimate so far. */
  secondsLeft(): number {
    const elapsed = (performance.now() - this.#startedAt) / 1000
    const pace = this.#estimatedDone > 0 ? elapsed / this.#estimatedDone : 1
    return (this.#total - this.#estimatedDone) * pace
  }

  start(what: string): void {
    this.#step++
    const line = `${bar(this.#done / this.#total)} ${this.#step}/${this.#steps} ${what} · ~${fmtDuration(this.secondsLeft())} left`
    if (this.#tty) process.stderr.write(`\r\x1b[2K${line}`)
    else process.stderr.write(`${line}\n`)
  }

  finish(estimatedS: number): void {
    this.#done += estimatedS
    this.#estimatedDone += estimatedS
  }

  end(): void {
    if (this.#tty) process.stderr.write('\r\x1b[2K')
  }
}
