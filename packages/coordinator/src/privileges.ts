// `user =`: started as root, the pooler becomes that user once it listens.
// The switch is process-wide (the worker threads are threads of this
// process), so it happens on the coordinator's thread once every worker has
// bound its sockets and the key files have been read.

import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

export interface RunAs {
  name: string
  uid: number
  gid: number
}

/**
 * The account `user =` names: /etc/passwd, else the system's user database
 * (getent, for users of LDAP and the like). PgBouncer's text when there is none.
 */
export function findUser(name: string): RunAs {
  const entry = passwdEntry(name) ?? getentEntry(name)
  if (entry === null) throw new Error(`could not find user '${name}' to switch to`)
  return entry
}

function passwdEntry(name: string): RunAs | null {
  let text = ''
  try {
    text = readFileSync('/etc/passwd', 'utf8')
  } catch {
    return null
  }
  for (const line of text.split('\n')) {
    const entry = parseEntry(line)
    if (entry?.name === name) return entry
  }
  return null
}

function getentEntry(name: string): RunAs | null {
  try {
    return parseEntry(
      execFileSync('getent', ['passwd', name], { encoding: 'utf8', stdio: 'pipe' }).trim(),
    )
  } catch {
    return null
  }
}

function parseEntry(line: string): RunAs | null {
  const [name, , uid, gid] = line.split(':')
  if (!name || !/^\d+$/.test(uid ?? '') || !/^\d+$/.test(gid ?? '')) return null
  return { name, uid: Number(uid), gid: Number(gid) }
}

/**
 * What start-up does about `user =`: the account to become, or nothing to do.
 * Only root can become another user; one already running as the user named
 * has nothing to do, as with PgBouncer. Throws the reason it cannot start.
 */
export function planRunAs(user: string | null): RunAs | null {
  if (user === null || user === '') return null
  const target = findUser(user)
  const uid = process.getuid?.()
  if (uid === undefined || uid === target.uid) return null
  if (uid !== 0) {
    throw new Error(
      `cannot switch to user '${user}': only root can, and this process runs as uid ${uid}`,
    )
  }
  return target
}

/**
 * Becomes `to`: its group alone (the supplementary groups root had, and any
 * of the user's own, are dropped, as PgBouncer does), then its uid. Linux
 * applies both to every thread of the process.
 */
export function dropPrivileges(to: RunAs): void {
  process.setgroups!([to.gid])
  process.setgid!(to.gid)
  process.setuid!(to.uid)
  if (process.getuid!() !== to.uid || process.geteuid!() !== to.uid) {
    throw new Error(`could not switch to user '${to.name}'`)
  }
}

/** Root without `user =`: PgBouncer refuses to start; this keeps containers working, and says so. */
export function rootWarning(user: string | null): string | null {
  if (process.getuid?.() !== 0 || (user !== null && user !== '')) return null
  return 'running as root: set user = in [pgbouncer] to have the pooler switch to that user once it listens (PgBouncer refuses to run as root)'
}
