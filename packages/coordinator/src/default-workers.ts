import os from 'node:os'

/**
 * How many worker threads to start when --workers is not given: one per CPU,
 * except on hosts of two CPUs or fewer, where one. Measured on two cores (the
 * figures are in docs/PERFORMANCE.md): a second worker finds no free core,
 * since the clients and often PostgreSQL share the host, and costs more CPU
 * per transaction than one, because each thread sleeps and is woken more
 * often, for no steady gain in throughput.
 */
export function defaultWorkers(cpus: number = os.availableParallelism()): number {
  return cpus <= 2 ? 1 : cpus
}
