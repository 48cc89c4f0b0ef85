// Child processes for the harness: PostgreSQL refuses to run as root, so as root its programs
// (initdb, pg_ctl, and openssl writing into the data dir) run as the `postgres` OS user.

import { execFileSync, type SpawnOptions, spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { basename } from 'node:path'

export class HarnessError extends Error {
  readonly code: string
  constructor(code: string, message: string) {
    super(message)
    this.name = 'HarnessError'
    this.code = code
  }
}

export interface OsUser {
  uid: number
  gid: number
}

let cachedOsUser: OsUser | null | undefined

/** As root, the uid/gid of the `postgres` OS user; otherwise null (run as ourselves). */
export function serverOsUser(): OsUser | null {
  if (cachedOsUser !== undefined) return cachedOsUser
  if (process.getuid?.() !== 0) return (cachedOsUser = null)
  try {
    const id = (flag: string) =>
      Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim())
    cachedOsUser = { uid: id('-u'), gid: id('-g') }
    return cachedOsUser
  } catch {
    throw new HarnessError(
      'PG_HARNESS_NO_OS_USER',
      'Running as root, but there is no `postgres` OS user to run PostgreSQL as',
    )
  }
}

/** Our environment without PG* variables, which would steer pg_ctl or pgbench elsewhere. */
export function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith('PG')) env[key] = value
  }
  // English server messages, whatever the caller's locale.
  env.LC_ALL = 'C'
  return env
}

export interface RunOptions {
  user?: OsUser | null
  env?: Record<string, string>
  cwd?: string
}

/** Runs a program to completion; rejects with its output when it fails. */
export function run(file: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const spawnOpts: SpawnOptions = {
    cwd: opts.cwd,
    env: opts.env ?? cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  }
  if (opts.user) Object.assign(spawnOpts, opts.user)
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, spawnOpts)
    let output = ''
    child.stdout!.on('data', (chunk) => (output += chunk))
    child.stderr!.on('data', (chunk) => (output += chunk))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(output)
      const how = signal ? `signal ${signal}` : `exit code ${code}`
      const message = `${basename(file)} failed with ${how}: ${output.trim().slice(-2000)}`
      reject(new HarnessError('PG_HARNESS_COMMAND_FAILED', message))
    })
  })
}

/** A port that was free a moment ago; the caller retries if someone takes it meanwhile. */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}
