import os from 'node:os'

/**
 * How many worker threads to start when --workers is not given: one per CPU,
 * except on hosts of two CPUs or fewer, where one. Measured on two cores
 * (README, Performance): a second worker finds no free core, since the clients
 * and often PostgreSQL share the host, and costs 1.0–1.4× the CPU per
 * transaction of one, because each thread sleeps and is woken more often, for
 * 0.86–1.22× the throughput depending on the workload and the run.
 */
export function defaultWorkers(cpus: number = os.availableParallelism()): number {
  return cpus <= 2 ? 1 : cpus
}
