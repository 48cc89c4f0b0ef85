// The tools some tests use beside Node.js and PostgreSQL's server: each is
// optional, and a test that needs one it cannot find skips with a message
// naming the tool and how to install it. `npm test` on a machine with Node.js
// and PostgreSQL alone passes, with those tests skipped.
//
// PGBC_TEST_WITHOUT=pgbouncer,promtool,haproxy,psql,pgbench,pg_basebackup hides the tools it
// names from these lookups, to see what such a machine runs (the system's
// packages stay installed for everyone else).

import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'

export type OptionalTool =
  | 'pgbouncer'
  | 'haproxy'
  | 'promtool'
  | 'psql'
  | 'pgbench'
  | 'pg_basebackup'
  | 'runuser'

/** Where each is looked for beside PATH (sbin directories are often not on a user's PATH), and its Debian package. */
const TOOLS: Record<OptionalTool, { dirs: string[]; install: string }> = {
  pgbouncer: {
    dirs: ['/usr/sbin', '/usr/bin', '/usr/local/bin', '/usr/local/sbin'],
    install: 'apt-get install -y pgbouncer',
  },
  haproxy: {
    dirs: ['/usr/sbin', '/usr/bin', '/usr/local/sbin', '/usr/local/bin'],
    install: 'apt-get install -y haproxy',
  },
  promtool: { dirs: ['/usr/bin', '/usr/local/bin'], install: 'apt-get install -y prometheus' },
  psql: { dirs: [], install: 'apt-get install -y postgresql-client' },
  pgbench: { dirs: [], install: 'apt-get install -y postgresql-client' },
  pg_basebackup: { dirs: [], install: 'apt-get install -y postgresql-client' },
  runuser: { dirs: ['/usr/sbin', '/sbin', '/usr/bin'], install: 'apt-get install -y util-linux' },
}

/** The tools PGBC_TEST_WITHOUT hides. */
export function hiddenTools(): Set<string> {
  return new Set(
    (process.env.PGBC_TEST_WITHOUT ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  )
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * The tool's path: PATH first, then the directories it is usually installed in.
 * psql, pgbench and pg_basebackup are found as the test harness finds PostgreSQL's tools
 * (pg-bin.ts's findPgTool, which honours PGBC_TEST_WITHOUT too).
 */
export function findTool(
  name: Exclude<OptionalTool, 'psql' | 'pgbench' | 'pg_basebackup'>,
): string | null {
  if (hiddenTools().has(name)) return null
  const path = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '')
  for (const dir of [...path, ...TOOLS[name].dirs]) {
    const candidate = join(dir, name)
    if (isExecutable(candidate)) return candidate
  }
  return null
}

/** A test's `skip`: false when the tool is there, else why the test does not run. */
export function skipWithout(name: OptionalTool, found: string | null | undefined): false | string {
  return found ? false : `${name} not installed (${TOOLS[name].install})`
}
