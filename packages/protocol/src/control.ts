/**
 * Control messages between the coordinator and worker threads, encoded with
 * msgpackr. Plain objects tagged by `type` (no classes cross threads); every
 * decoded message is checked against FIELDS below before anyone trusts it.
 *
 * Records: each message type's key list is a msgpackr shared structure, known
 * to both sides because both load this module, so a message travels as a
 * one-byte record id plus its values. New shapes (nested objects in `config`
 * or `stats`) are never added to the shared set: they are defined inline in
 * the message that uses them, so the two sides' tables cannot drift apart.
 * Record ids follow FIELDS' order; coordinator and workers always run the
 * same build, so adding a type anywhere is safe. Fields beyond the table are
 * passed through unchecked.
 */

// msgpackr/pack: the encoder and decoder without the package's index, which
// loads an optional native string decoder in every thread (a shared library
// found by probing the filesystem) that messages this small do not use.
import { Packr } from 'msgpackr/pack'

export type ControlMessage =
  /**
   * worker → coordinator: listening, ready for clients; `fd` is the listening
   * socket's descriptor (process-wide), which `user =` hands to that user.
   */
  | { type: 'worker-ready'; worker: number; port: number; fd?: number }
  /** worker → coordinator: first client of a (database, user) on this worker. */
  | { type: 'pool-slot-request'; worker: number; database: string; user: string }
  /** coordinator → worker: the shared-memory slots of that pool. */
  | {
      type: 'pool-slot'
      database: string
      user: string
      pool: number
      databaseSlot: number
      userSlot: number
    }
  /**
   * worker → coordinator: first login to a database, or of a user, on this
   * worker: the slots their client counts live in.
   */
  | {
      type: 'client-slot-request'
      worker: number
      database: string
      user: string
      /** The user the login's pool will be of: its slots come back with the answer. */
      poolUser?: string
    }
  /**
   * coordinator → worker: those slots (-1: not counted), and those of the
   * (database, poolUser) pool when asked for, so a first login needs one
   * round trip, not two.
   */
  | {
      type: 'client-slot'
      database: string
      user: string
      databaseSlot: number
      userSlot: number
      poolUser?: string
      pool?: number
      poolUserSlot?: number
    }
  /**
   * coordinator → worker: no slot for that (database, user), the tables being
   * full of databases in use: the logins waiting for it are refused with this.
   */
  | { type: 'pool-slot-error'; database: string; user: string; sqlstate: string; message: string }
  /**
   * coordinator → workers: automatic databases unused for autodb_idle_timeout
   * (or while the tables are full) are to be freed: let their pools and slots
   * go, unless something of one is still in use here. Answered by
   * 'databases-released'. Many at once: a sweep finds them together.
   */
  | { type: 'release-databases'; databases: string[] }
  /** worker → coordinator: the databases it let go, and those it still uses. */
  | { type: 'databases-released'; worker: number; released: string[]; kept: string[] }
  /** coordinator → worker: the (re)loaded configuration, a plain object. */
  | { type: 'config'; config: unknown }
  /**
   * either way: a CancelRequest for a backend key owned by another worker
   * `from`, the worker its client came to, waits for 'cancel-done' with `ref`:
   * the owner sends it once PostgreSQL has taken the cancel, or it was dropped.
   */
  | { type: 'cancel'; pid: number; secret: number; ref: number; from: number }
  /** either way: the cancel `ref` of worker `worker` is over; its client may be let go. */
  | { type: 'cancel-done'; worker: number; ref: number }
  /**
   * coordinator → workers: stop (PgBouncer 1.23+'s three ways). 'wait-for-clients'
   * (SIGTERM) closes the listeners and ends once every client has left;
   * 'wait-for-servers' (SIGINT) also lets no new transaction start and ends
   * once none is in flight; 'immediate' (SIGQUIT, SHUTDOWN, a second signal)
   * drops everyone now, and cuts a wait short.
   */
  | { type: 'shutdown'; mode: ShutdownMode }
  /**
   * coordinator → workers: PAUSE [db]. Hand out no server, close each one as
   * it comes free; answer 'paused' once none is left (the admin command waits).
   * With `suspend` (1), SUSPEND: hold new connections, stop reading each
   * client, then each server, once all written to it is out, and answer
   * 'paused' with `suspended` (1) when every one is; RESUME ends it.
   */
  | { type: 'pause'; database?: string; suspend?: number }
  /** worker → coordinator: no server of that PAUSE's scope is left here. */
  | { type: 'paused'; worker: number; database?: string; suspended?: number }
  | { type: 'resume'; database?: string }
  | { type: 'reconnect'; database?: string }
  /**
   * coordinator → workers: a console command about one database. KILL drops
   * its clients and servers now (it stays paused); DISABLE refuses its new
   * clients after their login, ENABLE lets them in again.
   */
  | { type: 'database'; database: string; command: 'kill' | 'disable' | 'enable' }
  /** worker → coordinator: feeds the circuit breaker. */
  | {
      type: 'server-login-failed'
      worker: number
      database: string
      user: string
      sqlstate: string
      message: string
      /**
       * What the failure says of the server (worker/src/server-restart.ts):
       * 0 restarting, 1 unreachable, 2 refused. Absent: refused.
       */
      kind?: number
      /** With a host list: which host (index) of how many the login went to. */
      host?: number
      hosts?: number
    }
  /**
   * coordinator → workers: the admin console's SHOW; answered by 'stats' with
   * the same id. Pools always; the per-connection rows only for `view`.
   */
  | { type: 'stats-request'; id: number; view?: 'clients' | 'servers' | 'sockets' }
  | {
      type: 'stats'
      id: number
      worker: number
      clients: unknown[]
      servers: unknown[]
      pools?: PoolStats[]
      /** Admin console sessions on this worker and the queries they ran. */
      admin?: { sessions: number; queries: number }
      /** SHOW PEER_POOLS: this worker's cancel requests on their way to peers. */
      peerPools?: PeerPoolStats[]
    }
  /** worker → coordinator: a command typed into the admin console (permission already checked). */
  | { type: 'admin-request'; worker: number; id: number; command: string; arg?: string }
  /** coordinator → worker: its result; `error` set means an ErrorResponse instead. */
  | {
      type: 'admin-reply'
      id: number
      tag: string
      columns: AdminColumn[]
      rows: (string | null)[][]
      error?: string
      /** The error's SQLSTATE when not PgBouncer's usual 08P01 (RELOAD's F0000). */
      sqlstate?: string
      /** A NOTICE sent before the command's tag (SET of TLS files that do not work yet). */
      notice?: string
    }
  /** coordinator → the owning worker: KILL_CLIENT; answered by 'client-killed' with the same id. */
  | { type: 'kill-client'; id: number; pid: number }
  /** worker → coordinator: whether that client was there (1) or not (0). */
  | { type: 'client-killed'; id: number; worker: number; found: number }
  /** worker → coordinator: shut down cleanly, about to end. */
  | { type: 'worker-stopped'; worker: number }
  /**
   * worker → coordinator: under 'wait-for-servers', no transaction is in
   * flight here any more. Once every worker says so the coordinator ends the
   * wait for all ('immediate'): a worker alone may not drop its console
   * session while another still waits.
   */
  | { type: 'servers-released'; worker: number }
  /**
   * coordinator → workers: the breaker of a database opened (state in shared
   * memory); the error its clients get meanwhile, for error sequence `seq`.
   */
  | { type: 'breaker'; database: string; seq: number; sqlstate: string; message: string }
  /**
   * worker → coordinator: a logged-in server was ended by a shutdown or a
   * crash of PostgreSQL (57P01, 57P02): the database is restarting, and its
   * clients wait rather than get the refusals of the restart's gap.
   */
  | {
      type: 'server-restarting'
      worker: number
      database: string
      user: string
      sqlstate: string
      message: string
    }
  /** worker → coordinator: a server login succeeded while the breaker counted failures. */
  | {
      type: 'server-login-ok'
      worker: number
      database: string
      user: string
      host?: number
      hosts?: number
    }
  /**
   * LISTEN/NOTIFY in transaction and statement mode (worker/src/notify/).
   * worker → coordinator: the first client of this worker listens to
   * `channel` of `database` (`on` 1), or the last one left it (`on` 0); with
   * `ref` > 0 the worker waits for 'notify-ready' with that ref before it
   * answers its client. coordinator → the database's listener worker
   * (`worker`): listen to the channel on the listening server, or unlisten it;
   * with `ref` > 0, answer 'notify-ready'.
   */
  | {
      type: 'notify-listen'
      worker: number
      database: string
      user: string
      channel: string
      on: number
      ref: number
    }
  /** either way: the listening server listens to the channel (or cannot now); `ref` as asked. */
  | { type: 'notify-ready'; database: string; channel: string; ref: number }
  /**
   * listener worker → coordinator → the workers with clients listening to the
   * channel: a NotificationResponse of the listening server, and the
   * notifying backend's pid.
   */
  | { type: 'notification'; database: string; channel: string; payload: string; pid: number }
  /** listener worker → coordinator: its listening server for the database is up (1) or lost (0); gaps so far. */
  | { type: 'notify-listener'; worker: number; database: string; up: number; gaps: number }

export type ShutdownMode = 'immediate' | 'wait-for-servers' | 'wait-for-clients'

/** A result column of the admin console: name and type OID (25 text, 23 int4, 20 int8, 1700 numeric). */
export type AdminColumn = [name: string, typeOid: number]

/**
 * One pool as one worker sees it, for SHOW POOLS / STATS / DATABASES / LISTS:
 * gauges counted from the worker's own objects when asked, totals of the
 * clients gone plus those still connected. The coordinator sums over workers.
 */
export interface PoolStats {
  database: string
  user: string
  mode: string
  clActive: number
  clWaiting: number
  svActive: number
  svIdle: number
  svUsed: number
  svLogin: number
  svBeingCanceled: number
  /** How long the oldest waiting client has waited, µs (0: none waits). */
  maxWaitUs: number
  xactCount: number
  queryCount: number
  bytesReceived: number
  bytesSent: number
  xactUs: number
  queryUs: number
  waitUs: number
  /** 1.23+: servers linked to clients. */
  serverAssignmentCount: number
  /** 1.24+: named prepared statements (max_prepared_statements). */
  clientParseCount: number
  serverParseCount: number
  bindCount: number
  /** Ours: statements seen per kind of session state (worker/src/session-state/classify.ts, SESSION_KINDS). */
  sessionState?: number[]
  /** Ours: clients whose server session_state_policy = pin keeps linked. */
  pinned?: number
}

/** One peer as one worker sees it: cancel requests it forwards there (SHOW PEER_POOLS). */
export interface PeerPoolStats {
  peerId: number
  clActiveCancelReq: number
  clWaitingCancelReq: number
  svActiveCancel: number
  svLogin: number
}

/** One client or server connection for SHOW CLIENTS / SERVERS; times in epoch ms. */
export interface ConnectionInfo {
  user: string
  database: string
  /** 1.23's `replication` column: none, logical or physical. */
  replication?: string
  state: string
  addr: string
  port: number
  localAddr: string
  localPort: number
  connectTime: number
  requestTime: number
  waitUs: number
  closeNeeded: boolean
  ptr: string
  link: string
  remotePid: number
  /** protocol/cipher of a TLS connection, '' in plain text. */
  tls: string
  applicationName: string
  /** Named prepared statements of the client, or prepared on the server (1.21+). */
  preparedStatements: number
  /** The `id` column (1.23+): what KILL_CLIENT takes. A client's is its session id (the worker in its top bits). */
  id: number
  /** SHOW SOCKETS: writes to it still queued (SHOW ACTIVE_SOCKETS lists these). */
  busy?: boolean
  /** A client pinned to its server by session_state_policy: the kind of state that pinned it ('' for none). */
  pinned?: string
}

export type ControlType = ControlMessage['type']
export type ControlOf<T extends ControlType> = Extract<ControlMessage, { type: T }>

export class ControlMessageError extends Error {
  readonly code: 'ERR_CONTROL_MESSAGE'

  constructor(message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'ControlMessageError'
    this.code = 'ERR_CONTROL_MESSAGE'
  }
}

// uint: non-negative safe integer; int: safe integer; object: plain object;
// a trailing '?' makes the field optional; an array lists the allowed strings.
type FieldKind = 'uint' | 'int' | 'string' | 'object' | 'array'
type FieldSpec = FieldKind | `${FieldKind}?` | readonly string[]
type FieldTable<M> = { readonly [K in Exclude<keyof M, 'type'>]-?: FieldSpec }

// Key order here is the wire order of each record. Each record (two for a
// type with optional fields) takes a msgpack id from 0x40 up, and a foreign
// encoder's positive fixints in that range decode as records: keep them few,
// and let a new message ride on an existing type where its meaning fits.
const FIELDS: { readonly [T in ControlType]: FieldTable<ControlOf<T>> } = {
  'worker-ready': { worker: 'uint', port: 'uint', fd: 'uint?' },
  'pool-slot-request': { worker: 'uint', database: 'string', user: 'string' },
  'pool-slot': {
    database: 'string',
    user: 'string',
    pool: 'uint',
    databaseSlot: 'uint',
    userSlot: 'uint',
  },
  'client-slot-request': {
    worker: 'uint',
    database: 'string',
    user: 'string',
    poolUser: 'string?',
  },
  'client-slot': {
    database: 'string',
    user: 'string',
    databaseSlot: 'int',
    userSlot: 'int',
    poolUser: 'string?',
    pool: 'uint?',
    poolUserSlot: 'uint?',
  },
  'pool-slot-error': { database: 'string', user: 'string', sqlstate: 'string', message: 'string' },
  'release-databases': { databases: 'array' },
  'databases-released': { worker: 'uint', released: 'array', kept: 'array' },
  config: { config: 'object' },
  cancel: { pid: 'int', secret: 'int', ref: 'uint', from: 'uint' },
  'cancel-done': { worker: 'uint', ref: 'uint' },
  shutdown: { mode: ['immediate', 'wait-for-servers', 'wait-for-clients'] },
  pause: { database: 'string?', suspend: 'uint?' },
  paused: { worker: 'uint', database: 'string?', suspended: 'uint?' },
  resume: { database: 'string?' },
  reconnect: { database: 'string?' },
  database: { database: 'string', command: ['kill', 'disable', 'enable'] },
  'server-login-failed': {
    worker: 'uint',
    database: 'string',
    user: 'string',
    sqlstate: 'string',
    message: 'string',
    kind: 'uint?',
    host: 'uint?',
    hosts: 'uint?',
  },
  'stats-request': { id: 'uint', view: 'string?' },
  stats: {
    id: 'uint',
    worker: 'uint',
    clients: 'array',
    servers: 'array',
    pools: 'array?',
    admin: 'object?',
    peerPools: 'array?',
  },
  'admin-request': {
    worker: 'uint',
    id: 'uint',
    command: 'string',
    arg: 'string?',
  },
  'admin-reply': {
    id: 'uint',
    tag: 'string',
    columns: 'array',
    rows: 'array',
    error: 'string?',
    sqlstate: 'string?',
    notice: 'string?',
  },
  'kill-client': { id: 'uint', pid: 'int' },
  'client-killed': { id: 'uint', worker: 'uint', found: 'uint' },
  'worker-stopped': { worker: 'uint' },
  'servers-released': { worker: 'uint' },
  breaker: { database: 'string', seq: 'uint', sqlstate: 'string', message: 'string' },
  'server-restarting': {
    worker: 'uint',
    database: 'string',
    user: 'string',
    sqlstate: 'string',
    message: 'string',
  },
  'server-login-ok': {
    worker: 'uint',
    database: 'string',
    user: 'string',
    host: 'uint?',
    hosts: 'uint?',
  },
  'notify-listen': {
    worker: 'uint',
    database: 'string',
    user: 'string',
    channel: 'string',
    on: 'uint',
    ref: 'uint',
  },
  'notify-ready': { database: 'string', channel: 'string', ref: 'uint' },
  notification: { database: 'string', channel: 'string', payload: 'string', pid: 'int' },
  'notify-listener': { worker: 'uint', database: 'string', up: 'uint', gaps: 'uint' },
}

type Field = {
  readonly name: string
  readonly kind: FieldKind | readonly string[]
  readonly optional: boolean
}

const SCHEMA = new Map<string, readonly Field[]>(
  Object.entries(FIELDS).map(([type, table]) => [
    type,
    Object.entries(table as Record<string, FieldSpec>).map(([name, spec]) =>
      typeof spec === 'string' && spec.endsWith('?')
        ? { name, kind: spec.slice(0, -1) as FieldKind, optional: true }
        : { name, kind: spec as FieldKind | readonly string[], optional: false },
    ),
  ]),
)

// One record per type with all its fields, and one without its optional ones.
function sharedStructures(): string[][] {
  const out: string[][] = []
  for (const fields of SCHEMA.values()) {
    out.push(['type', ...fields.map((f) => f.name)])
    if (fields.some((f) => f.optional)) {
      out.push(['type', ...fields.filter((f) => !f.optional).map((f) => f.name)])
    }
  }
  return out
}
const SHARED_STRUCTURE_COUNT = sharedStructures().length

// getStructures (not `structures`) makes msgpackr mark them shared, so an
// inline record definition in a hostile message cannot overwrite them for
// the messages after it.
const packr = new Packr({
  getStructures: sharedStructures,
  maxSharedStructures: SHARED_STRUCTURE_COUNT,
  shouldShareStructure: () => false,
  mapsAsObjects: true,
  bundleStrings: false,
  moreTypes: false,
})

/** Encode to a fresh, independent buffer: safe to keep or to transfer. */
export function encodeControl(msg: ControlMessage): Uint8Array {
  const fields = check(msg)
  // Rebuild in table order so the keys match the shared record exactly.
  const wire: Record<string, unknown> = { type: msg.type }
  const source = msg as unknown as Record<string, unknown>
  for (const f of fields) if (source[f.name] !== undefined) wire[f.name] = source[f.name]
  const packed = packr.pack(wire) // a view into msgpackr's reusable buffer
  return new Uint8Array(packed) // copy: own ArrayBuffer, nothing shared
}

/** Decode and validate; anything else throws ControlMessageError. */
export function decodeControl(data: Uint8Array): ControlMessage {
  let value: unknown
  try {
    value = packr.unpack(data)
  } catch (cause) {
    throw new ControlMessageError('control message is not valid msgpack', { cause })
  }
  check(value)
  return value as ControlMessage
}

function check(value: unknown): readonly Field[] {
  if (!isPlainObject(value)) throw new ControlMessageError('control message is not an object')
  const type = value.type
  const fields = typeof type === 'string' ? SCHEMA.get(type) : undefined
  if (fields === undefined) {
    throw new ControlMessageError(`unknown control message type ${describe(type)}`)
  }
  for (const f of fields) {
    const v = Object.hasOwn(value, f.name) ? value[f.name] : undefined
    if (v === undefined ? !f.optional : !fits(v, f.kind)) {
      throw new ControlMessageError(
        `control message '${type}': field ${f.name} ${v === undefined ? 'is missing' : `is not ${describeKind(f.kind)}`}`,
      )
    }
  }
  return fields
}

function fits(v: unknown, kind: FieldKind | readonly string[]): boolean {
  switch (kind) {
    case 'uint':
      return Number.isSafeInteger(v) && (v as number) >= 0
    case 'int':
      return Number.isSafeInteger(v)
    case 'string':
      return typeof v === 'string'
    case 'object':
      return isPlainObject(v)
    case 'array':
      return Array.isArray(v)
    default:
      return typeof v === 'string' && kind.includes(v)
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

function describe(v: unknown): string {
  return typeof v === 'string' ? `'${v.slice(0, 40)}'` : typeof v
}

function describeKind(kind: FieldKind | readonly string[]): string {
  if (typeof kind !== 'string') return `one of ${kind.join(', ')}`
  return {
    uint: 'a non-negative integer',
    int: 'an integer',
    string: 'a string',
    object: 'a plain object',
    array: 'an array',
  }[kind]
}
