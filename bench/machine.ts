// What the numbers were measured on, for the JSON and the report header.

import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { availableParallelism, cpus, release, totalmem } from 'node:os'
import { join } from 'node:path'

export interface MachineInfo {
  cpuModel: string
  cores: number
  memoryGiB: number
  kernel: string
  node: string
  postgres: string
  pgbench: string
  pgbouncer: string
}

function firstLine(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
      .trim()
      .split('\n')[0]!
  } catch {
    return 'not available'
  }
}

export function machineInfo(pgBinDir: string | null, pgbouncerBin: string): MachineInfo {
  const pgBin = (name: string) => (pgBinDir ? join(pgBinDir, name) : name)
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: availableParallelism(),
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: `Linux ${release()}`,
    node: process.version,
    postgres: firstLine(pgBin('postgres'), ['--version']),
    pgbench: firstLine(pgBin('pgbench'), ['--version']),
    pgbouncer: existsSync(pgbouncerBin) ? firstLine(pgbouncerBin, ['--version']) : 'not installed',
  }
}

export function describeMachine(m: MachineInfo): string {
  return `${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.kernel}, Node ${m.node}, ${m.postgres}, ${m.pgbouncer}`
}
