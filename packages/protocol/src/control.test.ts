import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import {
  type ControlMessage,
  ControlMessageError,
  decodeControl,
  encodeControl,
} from './control.ts'

const EVERY_TYPE: ControlMessage[] = [
  { type: 'worker-ready', worker: 3, port: 6432 },
  { type: 'pool-slot-request', worker: 0, database: 'app', user: 'alice' },
  { type: 'pool-slot', database: 'app', user: 'alice', pool: 7, databaseSlot: 1, userSlot: 2 },
  {
    type: 'pool-slot-error',
    database: 'nope',
    user: 'alice',
    sqlstate: '08P01',
    message: 'no such database: nope',
  },
  {
    type: 'client-slot-request',
    worker: 1,
    database: 'tenant_42',
    user: 'alice',
    poolUser: 'owner',
  },
  {
    type: 'client-slot',
    database: 'tenant_42',
    user: 'alice',
    databaseSlot: 4,
    userSlot: 2,
    poolUser: 'owner',
    pool: 9,
    poolUserSlot: 3,
  },
  { type: 'release-databases', databases: ['tenant_42', 'tenant_43'] },
  { type: 'databases-released', worker: 1, released: ['tenant_42'], kept: ['tenant_43'] },
  {
    type: 'config',
    config: {
      pgbouncer: { listen_port: 6432, pool_mode: 'transaction', ignore_startup_parameters: [] },
      databases: { app: { host: '127.0.0.1', port: 5432, pool_size: null } },
      nested: [{ a: 1 }, { a: 2, b: 'x' }, { a: 3 }],
    },
  },
  { type: 'cancel', pid: 41_234, secret: -1_998_123_456, ref: 7, from: 2 },
  { type: 'cancel-done', worker: 2, ref: 7 },
  { type: 'shutdown', mode: 'wait-for-clients' },
  { type: 'shutdown', mode: 'wait-for-servers' },
  { type: 'shutdown', mode: 'immediate' },
  { type: 'kill-client', id: 3, pid: 33_554_433 },
  { type: 'client-killed', id: 3, worker: 1, found: 1 },
  { type: 'servers-released', worker: 1 },
  { type: 'pause' },
  { type: 'pause', database: 'app' },
  { type: 'paused', worker: 1 },
  { type: 'paused', worker: 0, database: 'app' },
  { type: 'pause', suspend: 1 },
  { type: 'paused', worker: 1, suspended: 1 },
  { type: 'resume' },
  { type: 'resume', database: 'app' },
  { type: 'reconnect' },
  { type: 'reconnect', database: 'app' },
  { type: 'database', database: 'app', command: 'kill' },
  { type: 'database', database: 'app', command: 'disable' },
  {
    type: 'server-login-failed',
    worker: 1,
    database: 'app',
    user: 'alice',
    sqlstate: '28P01',
    message: 'password authentication failed for user "alice"',
  },
  {
    type: 'server-login-failed',
    worker: 0,
    database: 'app',
    user: 'alice',
    sqlstate: '57P03',
    message: 'the database system is starting up',
    kind: 0,
  },
  {
    type: 'server-restarting',
    worker: 1,
    database: 'app',
    user: 'alice',
    sqlstate: '57P01',
    message: 'terminating connection due to administrator command',
  },
  { type: 'stats-request', id: 99 },
  { type: 'stats-request', id: 100, view: 'clients' },
  {
    type: 'stats',
    id: 99,
    worker: 2,
    clients: [{ user: 'alice', database: 'app', state: 'active', port: 50_001 }],
    servers: [],
  },
  {
    type: 'stats',
    id: 100,
    worker: 0,
    clients: [],
    servers: [],
    pools: [
      {
        database: 'app',
        user: 'alice',
        mode: 'transaction',
        clActive: 3,
        clWaiting: 1,
        svActive: 3,
        svIdle: 0,
        svUsed: 0,
        svLogin: 0,
        svBeingCanceled: 0,
        maxWaitUs: 1_500_000,
        xactCount: 2 ** 40,
        queryCount: 12,
        bytesReceived: 3_000,
        bytesSent: 70_000,
        xactUs: 1_234.5,
        queryUs: 0,
        waitUs: 17,
        serverAssignmentCount: 5,
        clientParseCount: 2,
        serverParseCount: 3,
        bindCount: 9,
      },
    ],
    admin: { sessions: 1, queries: 4 },
  },
  { type: 'admin-request', worker: 1, id: 7, command: 'SHOW', arg: 'POOLS' },
  { type: 'admin-request', worker: 0, id: 8, command: 'RELOAD' },
  {
    type: 'admin-reply',
    id: 7,
    tag: 'SHOW',
    columns: [
      ['database', 25],
      ['cl_active', 23],
    ],
    rows: [
      ['app', '3'],
      ['pgbouncer', null],
    ],
  },
  { type: 'admin-reply', id: 8, tag: '', columns: [], rows: [], error: 'no such database: x' },
  { type: 'worker-stopped', worker: 1 },
  {
    type: 'breaker',
    database: 'app',
    seq: 4,
    sqlstate: '08006',
    message: 'pgbouncer cannot connect to server at 127.0.0.1:5432: connection refused',
  },
  { type: 'server-login-ok', worker: 1, database: 'app', user: 'alice' },
]

function rejects(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => decodeControl(bytes),
    (err) =>
      err instanceof ControlMessageError &&
      err.code === 'ERR_CONTROL_MESSAGE' &&
      pattern.test(err.message),
  )
}

// Hand-built msgpack map, so the tests do not depend on our own encoder.
function msgpackMap(entries: [string, number | string | null][]): Uint8Array {
  const bytes: number[] = [0x80 | entries.length]
  const str = (s: string) => bytes.push(0xa0 | s.length, ...Buffer.from(s))
  for (const [k, v] of entries) {
    str(k)
    if (v === null) bytes.push(0xc0)
    else if (typeof v === 'string') str(v)
    else if (Number.isInteger(v) && v >= 0 && v < 128) bytes.push(v)
    else bytes.push(0xcb, ...Buffer.from(new Float64Array([v]).buffer).reverse())
  }
  return Uint8Array.from(bytes)
}

describe('control codec', () => {
  it('round-trips every message type', () => {
    for (const msg of EVERY_TYPE) assert.deepEqual(decodeControl(encodeControl(msg)), msg)
  })

  it('sends a known message type as a compact record', () => {
    const bytes = encodeControl({ type: 'pause' })
    assert.ok(bytes.length <= 8, `pause takes ${bytes.length} bytes`)
    assert.ok(bytes[0]! >= 0x40 && bytes[0]! < 0x80, 'starts with a shared record id')
  })

  it('decodes what another instance of the module encoded (as another thread would)', async () => {
    const other = (await import(
      `./control.ts?instance=${Date.now()}`
    )) as typeof import('./control.ts')
    assert.notEqual(other.encodeControl, encodeControl)
    // Warm this side up with unrelated shapes first: the tables must not drift.
    for (let i = 0; i < 100; i++)
      encodeControl({ type: 'config', config: { [`k${i}`]: { [`x${i}`]: i } } })
    for (const msg of EVERY_TYPE) {
      assert.deepEqual(other.decodeControl(encodeControl(msg)), msg)
      assert.deepEqual(decodeControl(other.encodeControl(msg)), msg)
    }
  })

  it('returns an independent copy that can be transferred', () => {
    const first = encodeControl({ type: 'worker-ready', worker: 1, port: 6432 })
    const snapshot = Array.from(first)
    const second = encodeControl({ type: 'worker-ready', worker: 2, port: 6433 })
    second.fill(0xff)
    for (let i = 0; i < 50; i++) encodeControl({ type: 'stats-request', id: i })
    assert.deepEqual(Array.from(first), snapshot)
    assert.equal(first.byteOffset, 0)
    assert.equal(first.buffer.byteLength, first.byteLength, 'owns its whole buffer')
    const { port1, port2 } = new MessageChannel()
    port1.postMessage(first, [first.buffer as ArrayBuffer])
    assert.equal(first.byteLength, 0, 'detached by the transfer')
    port1.close()
    port2.close()
  })

  it('drops an undefined optional field instead of sending it', () => {
    const decoded = decodeControl(encodeControl({ type: 'reconnect', database: undefined }))
    assert.deepEqual(decoded, { type: 'reconnect' })
    assert.equal(Object.hasOwn(decoded, 'database'), false)
  })

  it('rejects unknown types and non-objects', () => {
    rejects(msgpackMap([['type', 'log']]), /unknown control message type 'log'/)
    rejects(msgpackMap([['type', 7]]), /unknown control message type number/)
    rejects(msgpackMap([['worker', 1]]), /unknown control message type undefined/)
    rejects(Uint8Array.of(0x93, 1, 2, 3), /not an object/)
    rejects(Uint8Array.of(0xc0), /not an object/)
    rejects(Uint8Array.of(0xc1), /not an object/)
  })

  it('rejects missing fields and fields of the wrong type', () => {
    rejects(
      msgpackMap([
        ['type', 'worker-ready'],
        ['worker', 1],
      ]),
      /field port is missing/,
    )
    rejects(
      msgpackMap([
        ['type', 'worker-ready'],
        ['worker', 1],
        ['port', '6432'],
      ]),
      /port is not/,
    )
    rejects(
      msgpackMap([
        ['type', 'worker-ready'],
        ['worker', 1.5],
        ['port', 1],
      ]),
      /worker is not/,
    )
    rejects(
      msgpackMap([
        ['type', 'worker-ready'],
        ['worker', -1],
        ['port', 1],
      ]),
      /worker is not/,
    )
    rejects(
      msgpackMap([
        ['type', 'cancel'],
        ['pid', 1],
        ['secret', null],
      ]),
      /secret is missing|not/,
    )
    rejects(
      msgpackMap([
        ['type', 'shutdown'],
        ['mode', 'smart'],
      ]),
      /mode is not one of immediate, wait-for-servers, wait-for-clients/,
    )
    rejects(
      msgpackMap([
        ['type', 'config'],
        ['config', 'x'],
      ]),
      /config is not a plain object/,
    )
    rejects(
      msgpackMap([
        ['type', 'reconnect'],
        ['database', 5],
      ]),
      /database is not a string/,
    )
    rejects(
      msgpackMap([
        ['type', 'stats'],
        ['id', 1],
        ['worker', 1],
        ['clients', 1],
        ['servers', 2],
      ]),
      /clients is not an array/,
    )
    // The field table is checked on the sending side too.
    assert.throws(
      () => encodeControl({ type: 'cancel', pid: 1, secret: '2' } as unknown as ControlMessage),
      ControlMessageError,
    )
    assert.throws(() => encodeControl({ type: 'nope' } as unknown as ControlMessage), {
      code: 'ERR_CONTROL_MESSAGE',
    })
  })

  it('accepts a valid message built by another msgpack encoder', () => {
    // Its integers below 64: msgpackr reads a positive fixint 64..127 as the id
    // of a shared record once there are that many (one or two per type).
    const msg = decodeControl(
      msgpackMap([
        ['type', 'worker-ready'],
        ['worker', 1],
        ['port', 10],
      ]),
    )
    assert.deepEqual(msg, { type: 'worker-ready', worker: 1, port: 10 })
  })

  it('a hostile inline record definition cannot corrupt the shared records', () => {
    // fixext1 'r' redefining shared record 0x40 as ["z", "y"], then its values.
    const evil = Uint8Array.of(0xd4, 0x72, 0x40, 0x92, 0xa1, 0x7a, 0xa1, 0x79, 1, 2)
    assert.throws(() => decodeControl(evil), ControlMessageError)
    for (const msg of EVERY_TYPE) assert.deepEqual(decodeControl(encodeControl(msg)), msg)
  })

  it('random bytes only ever produce a valid message or ControlMessageError', () => {
    const valid = fc.constantFrom(...EVERY_TYPE.map((m) => encodeControl(m)))
    const mutated = fc
      .tuple(valid, fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean())
      .map(([bytes, at, byte, truncate]) => {
        const copy = bytes.slice()
        const i = at % copy.length
        if (truncate) return copy.subarray(0, i)
        copy[i] = byte
        return copy
      })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), mutated), (bytes) => {
        try {
          const msg = decodeControl(bytes)
          assert.equal(typeof msg.type, 'string')
        } catch (err) {
          if (!(err instanceof ControlMessageError)) throw err
        }
      }),
      { numRuns: 3_000 },
    )
    for (const msg of EVERY_TYPE) assert.deepEqual(decodeControl(encodeControl(msg)), msg)
  })

  it('round-trips generated configs and stats rows', () => {
    // msgpackr renames a '__proto__' key (a guard against prototype pollution).
    const key = fc.string({ maxLength: 12 }).filter((k) => k !== '__proto__')
    const json = fc
      .jsonValue({ maxDepth: 3 })
      .filter((v) => !JSON.stringify(v).includes('"__proto__"'))
    fc.assert(
      fc.property(
        fc.dictionary(key, json, { maxKeys: 8, noNullPrototype: true }),
        fc.array(fc.dictionary(key, json, { maxKeys: 4, noNullPrototype: true }), { maxLength: 5 }),
        (config, rows) => {
          for (const msg of [
            { type: 'config', config },
            { type: 'stats', id: 1, worker: 0, clients: rows, servers: rows.slice(1) },
          ] as ControlMessage[]) {
            // Through JSON because -0 travels as the integer 0, as in JSON.
            assert.deepEqual(decodeControl(encodeControl(msg)), JSON.parse(JSON.stringify(msg)))
          }
        },
      ),
      { numRuns: 300 },
    )
  })
})
