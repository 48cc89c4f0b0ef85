/**
 * LISTEN and UNLISTEN through the extended protocol (asyncpg's fetch,
 * pgjdbc): a batch the pooler answers itself when every message of it, up to
 * and including its Sync, is about such a statement: a Parse of one LISTEN
 * or UNLISTEN, a Bind, Describe, Execute or Close of one. A batch that mixes
 * them with anything else, or whose Sync is not in the same read, goes to
 * the server as before.
 */
import { FrontendCode } from '@pgbouncer-cluster/protocol/messages'
import { commandComplete } from '@pgbouncer-cluster/protocol/serializer'
import { type ChannelOp, isCommit, mayBeListen, parseListen } from './statements.ts'

const PARSE_COMPLETE = Buffer.from([0x31, 0, 0, 0, 4]) // 1
const BIND_COMPLETE = Buffer.from([0x32, 0, 0, 0, 4]) // 2
const CLOSE_COMPLETE = Buffer.from([0x33, 0, 0, 0, 4]) // 3
const NO_DATA = Buffer.from([0x6e, 0, 0, 0, 4]) // n
const NO_PARAMETERS = Buffer.from([0x74, 0, 0, 0, 6, 0, 0]) // t
const LISTEN_DONE = commandComplete('LISTEN')
const UNLISTEN_DONE = commandComplete('UNLISTEN')

/** What a batch of the pooler's own comes to. */
export interface ListenBatch {
  /** Where its Sync ends in the read. */
  readonly end: number
  /** The statements executed, in order. */
  readonly ops: ChannelOp[]
  /** The answers up to, not including, the ReadyForQuery. */
  readonly answers: Buffer[]
  /** Ended by Sync (a ReadyForQuery is owed), or by a Flush that ended the read (asyncpg's prepare). */
  readonly sync: boolean
}

function cstring(buf: Buffer, at: number, limit: number): [string, number] | null {
  const nul = buf.indexOf(0, at)
  if (nul < 0 || nul >= limit) return null
  return [buf.toString('utf8', at, nul), nul + 1]
}

/**
 * Whether the extended-protocol message at `start` (whole in the read) may
 * begin a batch of ours: a Parse whose text starts with LISTEN or UNLISTEN,
 * or a message about a statement of ours. Cheap: the name is skipped, the
 * text's first letters compared.
 */
export function mayBeListenBatch(
  buf: Buffer,
  type: number,
  start: number,
  end: number,
  statements: Map<string, ChannelOp> | null,
): boolean {
  if (type === FrontendCode.Parse) {
    const nul = buf.indexOf(0, start + 5)
    return nul > 0 && nul < end && mayBeListen(buf, nul - 4, end - 2)
  }
  return statements !== null && statements.size > 0
}

/** Whether the Parse at `start` (whole in the read) prepares COMMIT or END. */
export function parseIsCommit(buf: Buffer, start: number, end: number): boolean {
  const nul = buf.indexOf(0, start + 5)
  return nul > 0 && nul < end && isCommit(buf, nul - 4, end - 2)
}

/**
 * Reads the batch from the start of the read; null unless every message up
 * to its Sync is ours. `statements` (the client's named statements of ours)
 * is changed only when the batch is ours.
 */
export function listenBatch(buf: Buffer, statements: Map<string, ChannelOp>): ListenBatch | null {
  const parsed = new Map<string, ChannelOp | null>()
  const portals = new Map<string, ChannelOp>()
  const ops: ChannelOp[] = []
  const answers: Buffer[] = []
  const statement = (name: string): ChannelOp | undefined => {
    const p = parsed.get(name)
    if (p === null) return undefined
    return p ?? statements.get(name)
  }
  let at = 0
  while (at + 5 <= buf.length) {
    const type = buf[at]!
    const end = at + 1 + buf.readInt32BE(at + 1)
    if (end > buf.length || end < at + 5) return null
    const body = at + 5
    switch (type) {
      case FrontendCode.Parse: {
        const name = cstring(buf, body, end)
        if (name === null) return null
        const text = cstring(buf, name[1], end)
        if (text === null) return null
        const listen = parseListen(text[0])
        // PostgreSQL prepares one statement at a time.
        if (listen === null || listen.length !== 1) return null
        parsed.set(name[0], listen[0]!)
        answers.push(PARSE_COMPLETE)
        break
      }
      case FrontendCode.Bind: {
        const portal = cstring(buf, body, end)
        if (portal === null) return null
        const name = cstring(buf, portal[1], end)
        const op = name === null ? undefined : statement(name[0])
        if (op === undefined) return null
        portals.set(portal[0], op)
        answers.push(BIND_COMPLETE)
        break
      }
      case FrontendCode.Describe:
      case FrontendCode.Close: {
        const kind = buf[body]
        const name = cstring(buf, body + 1, end)
        if (name === null) return null
        const known = kind === 0x53 ? statement(name[0]) : portals.get(name[0])
        if (known === undefined) return null
        if (type === FrontendCode.Close) {
          if (kind === 0x53) parsed.set(name[0], null)
          else portals.delete(name[0])
          answers.push(CLOSE_COMPLETE)
        } else {
          if (kind === 0x53) answers.push(NO_PARAMETERS)
          answers.push(NO_DATA)
        }
        break
      }
      case FrontendCode.Execute: {
        const portal = cstring(buf, body, end)
        const op = portal === null ? undefined : portals.get(portal[0])
        if (op === undefined) return null
        ops.push(op)
        answers.push(op.listen ? LISTEN_DONE : UNLISTEN_DONE)
        break
      }
      case FrontendCode.Flush:
      case FrontendCode.Sync:
        if (type === FrontendCode.Flush && end < buf.length) break
        // The unnamed statement is not kept: the next unnamed Parse may go to the server.
        for (const [name, op] of parsed) {
          if (op === null) statements.delete(name)
          else if (name !== '') statements.set(name, op)
        }
        return { end, ops, answers, sync: type === FrontendCode.Sync }
      default:
        return null
    }
    at = end
  }
  return null
}
