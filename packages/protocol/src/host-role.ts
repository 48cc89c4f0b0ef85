/**
 * What a PostgreSQL host is, as libpq's target_session_attrs sees it: in hot
 * standby or not, and whether its sessions start read-only
 * (default_transaction_read_only). A worker learns it at each server login
 * (PostgreSQL 14+ reports both as ParameterStatus) and writes it to the
 * host's role word in shared memory (shared-memory.ts), which every worker,
 * the console (SHOW HOSTS) and /metrics read.
 *
 * A role word: 0 while unknown, else KNOWN with the STANDBY and READ_ONLY bits.
 */
export const HostRole = {
  unknown: 0,
  known: 1,
  standby: 2,
  readOnly: 4,
} as const

/** libpq's target_session_attrs, as numbers a pool compares with a role word. */
export const SessionAttrs = {
  any: 0,
  readWrite: 1,
  readOnly: 2,
  primary: 3,
  standby: 4,
  preferStandby: 5,
} as const

export type TargetSessionAttrs =
  | 'any'
  | 'read-write'
  | 'read-only'
  | 'primary'
  | 'standby'
  | 'prefer-standby'

export const TARGET_SESSION_ATTRS: readonly TargetSessionAttrs[] = [
  'any',
  'read-write',
  'read-only',
  'primary',
  'standby',
  'prefer-standby',
]

const ATTRS_CODE: Record<TargetSessionAttrs, number> = {
  any: SessionAttrs.any,
  'read-write': SessionAttrs.readWrite,
  'read-only': SessionAttrs.readOnly,
  primary: SessionAttrs.primary,
  standby: SessionAttrs.standby,
  'prefer-standby': SessionAttrs.preferStandby,
}

/** An entry's target_session_attrs (unset: any) as a SessionAttrs code. */
export function sessionAttrsCode(attrs: TargetSessionAttrs | undefined): number {
  return attrs === undefined ? SessionAttrs.any : ATTRS_CODE[attrs]
}

/** The role word of a server that reported these values ('on'/'off'). */
export function roleOf(inHotStandby: string, defaultReadOnly: string | undefined): number {
  let role: number = HostRole.known
  if (inHotStandby === 'on') role |= HostRole.standby
  if (defaultReadOnly === 'on') role |= HostRole.readOnly
  return role
}

/**
 * Whether a known role is what `attrs` asks for, as libpq decides it.
 * prefer-standby asks for a standby first: a primary fits it only when no
 * standby does (the pool's fallback, not this test).
 */
export function roleFits(attrs: number, role: number): boolean {
  const standby = (role & HostRole.standby) !== 0
  switch (attrs) {
    case SessionAttrs.readWrite:
      return !standby && (role & HostRole.readOnly) === 0
    case SessionAttrs.readOnly:
      return standby || (role & HostRole.readOnly) !== 0
    case SessionAttrs.primary:
      return !standby
    case SessionAttrs.standby:
    case SessionAttrs.preferStandby:
      return standby
    default:
      return true
  }
}

/** For SHOW HOSTS and /metrics: unknown, primary, standby, or read-only primary. */
export function roleName(role: number): string {
  if ((role & HostRole.known) === 0) return 'unknown'
  if ((role & HostRole.standby) !== 0) return 'standby'
  return (role & HostRole.readOnly) !== 0 ? 'read-only primary' : 'primary'
}

/**
 * libpq's words for a server that does not fit (fe-connect.c), for the error
 * clients get when no host of the list fits before query_wait_timeout.
 */
export function mismatchText(attrs: number): string {
  switch (attrs) {
    case SessionAttrs.readWrite:
      return 'session is read-only'
    case SessionAttrs.readOnly:
      return 'session is not read-only'
    case SessionAttrs.primary:
      return 'server is in hot standby mode'
    case SessionAttrs.standby:
      return 'server is not in hot standby mode'
    default:
      return ''
  }
}
