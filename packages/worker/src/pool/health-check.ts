import { query } from '@pgbouncer-cluster/protocol/serializer'
import type { WorkerSettings } from '../config-types.ts'

/**
 * server_check_query: a server idle longer than server_check_delay (or any
 * server, with a delay of 0) runs it before it serves a client, unless it
 * has just done so or just logged in (`checked`).
 */
export function needsCheck(
  settings: WorkerSettings,
  server: { readonly checked: boolean; readonly lastUsed: number },
  now: number,
): boolean {
  if (settings.serverCheckQuery === '' || server.checked) return false
  const delay = settings.serverCheckDelay * 1000
  return delay === 0 || now - server.lastUsed > delay
}

let checkText = ''
let checkQuery: Buffer | null = null
/** The Query message of server_check_query, built once per text; `<empty>` is the empty query. */
export function checkStatement(text: string): Buffer {
  if (checkQuery === null || text !== checkText) {
    checkText = text
    checkQuery = query(text === '<empty>' ? '' : text)
  }
  return checkQuery
}
