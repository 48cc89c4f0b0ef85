import { Buffer } from 'node:buffer'
import {
  authenticationOk,
  parameterStatus,
  welcomeTemplate,
} from '@pgbouncer-cluster/protocol/serializer'
import { reportedName, trackedName, trackedNames, type Vars } from '../params.ts'
import type { Pool } from '../pool/pool.ts'

/**
 * What a login worked out for its welcome: the same for the next login that
 * sends the same startup packet to the same pool, while the pool's server
 * parameters stay the ones it was built from.
 */
export interface WelcomeMemo {
  readonly pool: Pool
  readonly params: Map<string, string>
  /** The client's vars as shared (shareVars), and their key. */
  readonly vars: Vars
  readonly varsKey: string
  readonly template: Buffer
  /**
   * The last welcome sent, reused by the next login with only its key
   * rewritten; null when the kernel did not take it whole, and a queued write
   * still points at it.
   */
  welcome: Buffer | null
}

/** The client's vars filled in from the server's parameters: the client's own wishes show in the welcome. */
export function withServerValues(vars: Vars, params: Map<string, string>): Vars {
  // The server is brought in line with the client's wishes on link.
  for (const name of trackedNames()) {
    if (vars[name] === undefined) {
      const value = params.get(reportedName(name))
      if (value !== undefined) vars[name] = value
    }
  }
  return vars
}

/**
 * AuthenticationOk + ParameterStatus depend only on the pool and the
 * client's vars: built once per combination, not per login, with the end
 * of the welcome after them, where each client's key is written.
 */
export function welcomeStart(
  pool: Pool,
  params: Map<string, string>,
  vars: Vars,
  key: string,
): Buffer {
  let template = pool.welcomeTemplates.get(key)
  if (template === undefined) {
    const parts: Buffer[] = [authenticationOk()]
    for (const [name, value] of params) {
      const tracked = trackedName(name)
      parts.push(parameterStatus(name, tracked !== null ? (vars[tracked] ?? value) : value))
    }
    template = welcomeTemplate(Buffer.concat(parts))
    if (pool.welcomeTemplates.size >= 64) pool.welcomeTemplates.clear()
    pool.welcomeTemplates.set(key, template)
  }
  return template
}
