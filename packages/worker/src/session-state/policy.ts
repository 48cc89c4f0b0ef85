// session_state_policy (issue 29): what a transaction- or statement-mode pool
// does with a statement whose session state cannot follow its client to the
// next server (classify.ts, CANNOT_FOLLOW). `allow` (the default) lets it run
// as PgBouncer does; `warn` lets it run and logs once per client; `pin` keeps
// the client's server linked until the client leaves (then the server is
// reset); `error` refuses it with SQLSTATE 0A000.
//
// A refusal is PostgreSQL's own error: the statement is replaced by a DO block
// that raises it, so the error comes back in its place, the transaction is
// aborted as any failed statement aborts it, and the rest of a pipeline is
// skipped up to its Sync by PostgreSQL itself. A Parse keeps its name and
// parameter count, so the Bind that follows still fits it; the error comes
// with its Execute.

import { Buffer } from 'node:buffer'
import { FrontendCode } from '@pgbouncer-cluster/protocol/messages'
import type { SessionStatePolicy } from '../config-types.ts'
import { highestParam, refusedName } from './classify.ts'

export type { SessionStatePolicy }
export const SESSION_STATE_POLICIES: readonly SessionStatePolicy[] = [
  'allow',
  'warn',
  'pin',
  'error',
]

/** PostgreSQL's feature_not_supported. */
export const REFUSED_SQLSTATE = '0A000'

/** The refusal's text: the statement, the mode and the setting. */
export function refusalMessage(mask: number, mode: string): string {
  return (
    `${refusedName(mask)} leaves session state that cannot follow the client in ${mode} mode; ` +
    'refused by session_state_policy = error'
  )
}

/** The log line of `warn` and `pin`. */
export function stateNote(mask: number, mode: string, policy: SessionStatePolicy): string {
  return `${refusedName(mask)}: session state that cannot follow the client in ${mode} mode (session_state_policy = ${policy})`
}

function raiseText(mask: number, mode: string): string {
  // The message is ours (no text of the client's), with no quote in it.
  return (
    'DO $pgbouncer_cluster$BEGIN RAISE EXCEPTION USING ERRCODE = ' +
    `'${REFUSED_SQLSTATE}', MESSAGE = '${refusalMessage(mask, mode)}'; END$pgbouncer_cluster$`
  )
}

const queries = new Map<string, Buffer>()

/** The Query sent in place of a refused one (one per statement name and mode, kept). */
export function refusedQuery(mask: number, mode: string): Buffer {
  const key = `${refusedName(mask)}\u0000${mode}`
  let q = queries.get(key)
  if (q === undefined) {
    const text = Buffer.from(raiseText(mask, mode))
    q = Buffer.allocUnsafe(5 + text.length + 1)
    q[0] = FrontendCode.Query
    q.writeInt32BE(4 + text.length + 1, 1)
    text.copy(q, 5)
    q[q.length - 1] = 0
    queries.set(key, q)
  }
  return q
}

/** text, the type every parameter the client left unnamed gets: a Bind of it still fits. */
const TEXT_OID = 25

/**
 * The Parse sent in place of the refused one in chunk[start, end): its name,
 * the DO block, and its parameter types, padded to the highest $n of the
 * refused text.
 */
export function refusedParse(
  chunk: Buffer,
  start: number,
  end: number,
  mask: number,
  mode: string,
): Buffer {
  const nameEnd = chunk.indexOf(0, start + 5)
  const textEnd = chunk.indexOf(0, nameEnd + 1)
  const typesAt = textEnd + 1
  const declared = typesAt + 2 <= end ? chunk.readInt16BE(typesAt) : 0
  const count = Math.max(declared, highestParam(chunk, nameEnd + 1, textEnd))
  const text = Buffer.from(raiseText(mask, mode))
  const nameLen = nameEnd + 1 - (start + 5)
  const out = Buffer.alloc(5 + nameLen + text.length + 1 + 2 + 4 * count)
  out[0] = FrontendCode.Parse
  out.writeInt32BE(out.length - 1, 1)
  let at = 5 + chunk.copy(out, 5, start + 5, nameEnd + 1)
  at += text.copy(out, at)
  out[at++] = 0
  out.writeInt16BE(count, at)
  at += 2
  for (let i = 0; i < count; i++) {
    const oid = i < declared ? chunk.readUInt32BE(typesAt + 2 + 4 * i) : 0
    // An unused parameter of no type is refused at Parse: it becomes text.
    out.writeUInt32BE(oid === 0 ? TEXT_OID : oid, at)
    at += 4
  }
  return out
}
