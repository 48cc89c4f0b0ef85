/**
 * The one SharedArrayBuffer the coordinator creates and hands to every worker.
 * Capacities are fixed at creation and recorded in the header, so attaching
 * needs only the buffer. `W` = maxWorkers, `S` = semaphore stride =
 * 5 + 2W words rounded up to 16 (64 bytes), so no two semaphores share a cache
 * line.
 *
 *  Int32 word                     holds              written by         waited on by
 *  ─────────────────────────────  ─────────────────  ─────────────────  ────────────
 *  0                              magic 'PGBC'       createSharedMemory
 *  1                              layout version     createSharedMemory
 *  2..5                           maxWorkers, maxPools, maxDatabases, maxUsers
 *  6                              paused (PAUSE)     coordinator        (workers may)
 *  7                              shutdown           coordinator        (workers may)
 *  8..15                          spare
 *  ─── breakers, B = 101 words per database ───────────────────────────────────────
 *  16 + Bd + 0                    state 0..3         coordinator; a     (workers may)
 *                                                    worker CASes 2→3
 *                                                    to claim the probe
 *  16 + Bd + 1                    login-error seq    coordinator
 *  16 + Bd + 2                    failures in a row  coordinator
 *  16 + Bd + 3                    error text length  coordinator (0 while rewritten)
 *  16 + Bd + 4..67                error text: SQLSTATE + message, UTF-8, 256 bytes
 *                                                    coordinator, before the state
 *  16 + Bd + 68 + h               state 0..3 of      coordinator; a     (read before
 *                                 host h of the      worker CASes 0→1   each server
 *                                 database's list    on its own failed  login)
 *                                 (h < MAX_HOSTS)    login, 2→3 to
 *                                                    claim the probe
 *  16 + Bd + 84                   clients wait (1)   coordinator; a     (read on a
 *                                 or get the error   worker sets 1 when failed login
 *                                 (0) while logins   it sees PostgreSQL and while the
 *                                 fail               restart            breaker is open)
 *  16 + Bd + 85 + h               role of host h     the worker whose   (read when a
 *                                 (host-role.ts),    server logged in   host is picked
 *                                 0 while unknown    or reported        and a server
 *                                                    in_hot_standby     released, with
 *                                                                       target_session_attrs)
 *  ─── semaphores, S words each (see semaphore.ts) ───────────────────────────────
 *  pools     + S*p + 0            used               workers (lock)     acquire()
 *            + S*p + 1            waiters            workers
 *            + S*p + 2..4         lock + journal     workers; coordinator rolls back a dead holder's
 *            + S*p + 5 + w        ledger of worker w worker w; coordinator on reclaim
 *            + S*p + 5 + W + w    w's parked waiters worker w; coordinator on reclaim
 *  databases + S*d ...            same, limit max_db_connections
 *  users     + S*u ...            same, limit max_user_connections
 *  clients   + 0 ...              same, one semaphore: client connections
 *                                 of the whole cluster, limit max_client_conn
 *  dbClients + S*d ...            same, client connections of database d,
 *                                 limit max_db_client_connections
 *  userClients + S*u ...          same, client connections of user u,
 *                                 limit max_user_client_connections
 *  ─── counters (byte offset, Float64 rows, see counters.ts) ──────────────────────
 *  counters                       row per (worker, pool), written by that worker only
 *  ─── latency (byte offset, Float64, see latency.ts) ─────────────────────────────
 *  histograms                     row per (worker, database): query, transaction and
 *                                 wait-time histograms, written by that worker only
 *  figures                        row per worker: event-loop delay, CPU, heap,
 *                                 written by that worker about once a second
 *
 * A server connection of pool p (database d, user u) holds one permit of each
 * of pool(p), database(d) and user(u) whose limit is set. The permits are
 * ledgered to the worker that opened the connection; when it dies the
 * coordinator calls reclaim(w) on every semaphore and counters.resetWorker(w).
 *
 * Slots are the coordinator's to give (coordinator/src/registry.ts). A slot
 * of a freed database (pool-slots.ts) is zeroed by clearPool, clearDatabase
 * and clearUser only once no worker refers to it, and only if it counts
 * nothing; then it means another pool, database or user.
 */

import { PoolCounters } from './counters.ts'
import { LatencyHistograms, WorkerFigures } from './latency.ts'
import { Semaphore } from './semaphore.ts'

export interface SharedLayout {
  maxWorkers: number
  maxPools: number
  maxDatabases: number
  maxUsers: number
}

/**
 * closed: servers are opened freely. open: nobody opens one, clients get the
 * last login error. halfOpen: the cool-down is over, the first worker to
 * claim the probe (halfOpen → probing) opens one server; its outcome, through
 * the coordinator, closes or reopens the breaker.
 */
export const BreakerState = { closed: 0, open: 1, halfOpen: 2, probing: 3 } as const
export type BreakerStateValue = (typeof BreakerState)[keyof typeof BreakerState]

export type SharedFlag = 'paused' | 'shutdown'

export class SharedMemoryError extends Error {
  readonly code: 'ERR_SHARED_MEMORY'

  constructor(message: string) {
    super(message)
    this.name = 'SharedMemoryError'
    this.code = 'ERR_SHARED_MEMORY'
  }
}

/** Circuit-breaker words of one database. The coordinator writes, except claimProbe(). */
export interface BreakerWords {
  state(): number
  setState(s: number): void
  lastErrorSeq(): number
  /** Returns the new sequence number. */
  bumpErrorSeq(): number
  /**
   * The server's last login error, written before the breaker opens so a
   * worker that sees it open already has the text (no message can be late).
   */
  setError(sqlstate: string, message: string): void
  error(): { sqlstate: string; message: string } | null
  /** Login failures in a row; a worker reports a success only while this or the state is set. */
  failures(): number
  setFailures(n: number): void
  /** A worker's claim of the one probe: true for exactly one caller per half-open period. */
  claimProbe(): boolean
  /** Host h of the database's host list: a BreakerState of its own. */
  hostState(h: number): number
  setHostState(h: number, s: number): void
  /**
   * A worker's own failed login to host h: closed → open at once, so no login
   * of any worker picks the host while the coordinator's message is on its way.
   */
  markHostDown(h: number): void
  /** As claimProbe(), for host h. */
  claimHostProbe(h: number): boolean
  /**
   * While logins fail: whether waiting clients keep waiting for a server (the
   * database is restarting) rather than get the error at once.
   */
  clientsWait(): boolean
  setClientsWait(on: boolean): void
  /** Host h's role word (host-role.ts): 0 until a server of any worker logged in to it. */
  hostRole(h: number): number
  setHostRole(h: number, role: number): void
}

/** Hosts per database entry whose state lives in shared memory. */
export const MAX_HOSTS = 16

const MAGIC = 0x50474243 // 'PGBC'
const VERSION = 4
const HEADER_WORDS = 16
const BREAKER_TEXT_WORDS = 64
const BREAKER_WORDS = 4 + BREAKER_TEXT_WORDS + MAX_HOSTS + 1 + MAX_HOSTS
const BREAKER_TEXT_BYTES = BREAKER_TEXT_WORDS * 4
const FLAG_WORD = { paused: 6, shutdown: 7 } as const
export const MAX_WORKERS = 64
const MAX_SLOTS = 1 << 20
const MAX_BYTES = 1 << 30

interface Offsets {
  breakers: number // Int32 word
  pools: number // Int32 word
  databases: number // Int32 word
  users: number // Int32 word
  clients: number // Int32 word
  dbClients: number // Int32 word
  userClients: number // Int32 word
  stride: number // Int32 words per semaphore
  counters: number // byte offset
  histograms: number // byte offset
  figures: number // byte offset
  byteLength: number
}

function offsets(layout: SharedLayout): Offsets {
  const stride = Math.ceil(Semaphore.words(layout.maxWorkers) / 16) * 16
  const breakers = HEADER_WORDS
  const pools = breakers + Math.ceil((layout.maxDatabases * BREAKER_WORDS) / 16) * 16
  const databases = pools + layout.maxPools * stride
  const users = databases + layout.maxDatabases * stride
  const clients = users + layout.maxUsers * stride
  const dbClients = clients + stride
  const userClients = dbClients + layout.maxDatabases * stride
  const counters = (userClients + layout.maxUsers * stride) * 4
  const histograms = counters + PoolCounters.byteLength(layout.maxPools, layout.maxWorkers)
  const figures = histograms + LatencyHistograms.byteLength(layout.maxDatabases, layout.maxWorkers)
  const byteLength = figures + WorkerFigures.byteLength(layout.maxWorkers)
  return {
    breakers,
    pools,
    databases,
    users,
    clients,
    dbClients,
    userClients,
    stride,
    counters,
    histograms,
    figures,
    byteLength,
  }
}

function checkLayout(layout: SharedLayout): void {
  const { maxWorkers, maxPools, maxDatabases, maxUsers } = layout
  if (!Number.isInteger(maxWorkers) || maxWorkers < 1 || maxWorkers > MAX_WORKERS) {
    throw new SharedMemoryError(
      `maxWorkers must be an integer 1..${MAX_WORKERS}, got ${maxWorkers}`,
    )
  }
  for (const [name, n] of [
    ['maxPools', maxPools],
    ['maxDatabases', maxDatabases],
    ['maxUsers', maxUsers],
  ] as const) {
    if (!Number.isInteger(n) || n < 1 || n > MAX_SLOTS) {
      throw new SharedMemoryError(`${name} must be an integer 1..${MAX_SLOTS}, got ${n}`)
    }
  }
}

/** Bytes createSharedMemory(layout) allocates. */
export function sharedMemoryByteLength(layout: SharedLayout): number {
  checkLayout(layout)
  return offsets(layout).byteLength
}

export function createSharedMemory(layout: SharedLayout): SharedArrayBuffer {
  const byteLength = sharedMemoryByteLength(layout)
  if (byteLength > MAX_BYTES) {
    throw new SharedMemoryError(`shared memory of ${byteLength} bytes exceeds ${MAX_BYTES}`)
  }
  const sab = new SharedArrayBuffer(byteLength)
  const i32 = new Int32Array(sab, 0, HEADER_WORDS)
  i32[2] = layout.maxWorkers
  i32[3] = layout.maxPools
  i32[4] = layout.maxDatabases
  i32[5] = layout.maxUsers
  i32[1] = VERSION
  Atomics.store(i32, 0, MAGIC) // last: publishes the header
  return sab
}

export class SharedMemory {
  readonly sab: SharedArrayBuffer
  readonly layout: Readonly<SharedLayout>
  readonly counters: PoolCounters
  readonly histograms: LatencyHistograms
  readonly figures: WorkerFigures
  readonly #i32: Int32Array
  readonly #offsets: Offsets
  // Views made on first use, per slot: a thread uses few of the many slots.
  readonly #pools = new Map<number, Semaphore>()
  readonly #databases = new Map<number, Semaphore>()
  readonly #users = new Map<number, Semaphore>()
  readonly #dbClients = new Map<number, Semaphore>()
  readonly #userClients = new Map<number, Semaphore>()
  readonly #breakers = new Map<number, BreakerWords>()
  #clients: Semaphore | undefined

  constructor(sab: SharedArrayBuffer) {
    if (!(sab instanceof SharedArrayBuffer) || sab.byteLength < HEADER_WORDS * 4) {
      throw new SharedMemoryError('not a pgbouncer-cluster shared memory buffer')
    }
    const i32 = new Int32Array(sab)
    if (Atomics.load(i32, 0) !== MAGIC) {
      throw new SharedMemoryError('not a pgbouncer-cluster shared memory buffer (bad magic)')
    }
    if (i32[1] !== VERSION) {
      throw new SharedMemoryError(`shared memory layout version ${i32[1]}, expected ${VERSION}`)
    }
    const layout = Object.freeze({
      maxWorkers: i32[2]!,
      maxPools: i32[3]!,
      maxDatabases: i32[4]!,
      maxUsers: i32[5]!,
    })
    checkLayout(layout)
    const o = offsets(layout)
    if (o.byteLength !== sab.byteLength) {
      throw new SharedMemoryError(
        `shared memory is ${sab.byteLength} bytes, layout needs ${o.byteLength}`,
      )
    }
    this.sab = sab
    this.layout = layout
    this.#i32 = i32
    this.#offsets = o
    this.counters = new PoolCounters(sab, o.counters, layout.maxPools, layout.maxWorkers)
    this.histograms = new LatencyHistograms(
      sab,
      o.histograms,
      layout.maxDatabases,
      layout.maxWorkers,
    )
    this.figures = new WorkerFigures(sab, o.figures, layout.maxWorkers)
  }

  /** Server connections of one (database, user) pool: pool_size (+ reserve_pool_size). */
  pool(slot: number): Semaphore {
    return this.#view(this.#pools, this.#offsets.pools, slot, this.layout.maxPools, 'pool')
  }

  /** Server connections of one database over all its pools: max_db_connections. */
  database(slot: number): Semaphore {
    const max = this.layout.maxDatabases
    return this.#view(this.#databases, this.#offsets.databases, slot, max, 'database')
  }

  /** Server connections of one user over all its pools: max_user_connections. */
  user(slot: number): Semaphore {
    return this.#view(this.#users, this.#offsets.users, slot, this.layout.maxUsers, 'user')
  }

  /** Client connections of the whole cluster: max_client_conn. */
  clients(): Semaphore {
    return (this.#clients ??= this.#semaphore(this.#offsets.clients, 0))
  }

  /** Client connections of one database, over the cluster: max_db_client_connections. */
  databaseClients(slot: number): Semaphore {
    const max = this.layout.maxDatabases
    return this.#view(this.#dbClients, this.#offsets.dbClients, slot, max, 'database')
  }

  /** Client connections of one user, over the cluster: max_user_client_connections. */
  userClients(slot: number): Semaphore {
    const max = this.layout.maxUsers
    return this.#view(this.#userClients, this.#offsets.userClients, slot, max, 'user')
  }

  breaker(dbSlot: number): BreakerWords {
    const slot = this.#slot(dbSlot, this.layout.maxDatabases, 'database')
    let words = this.#breakers.get(slot)
    if (words === undefined) {
      const i32 = this.#i32
      const state = this.#offsets.breakers + slot * BREAKER_WORDS
      const seq = state + 1
      const failures = state + 2
      const textLength = state + 3
      const text = new Uint8Array(i32.buffer, (state + 4) * 4, BREAKER_TEXT_BYTES)
      const hosts = state + 4 + BREAKER_TEXT_WORDS
      const wait = hosts + MAX_HOSTS
      const roles = wait + 1
      const host = (h: number) => {
        if (!Number.isInteger(h) || h < 0 || h >= MAX_HOSTS) {
          throw new SharedMemoryError(`host index ${h} out of range 0..${MAX_HOSTS - 1}`)
        }
        return hosts + h
      }
      words = {
        hostState: (h: number) => Atomics.load(i32, host(h)),
        setHostState: (h: number, s: number) => {
          Atomics.store(i32, host(h), s)
        },
        markHostDown: (h: number) => {
          Atomics.compareExchange(i32, host(h), BreakerState.closed, BreakerState.open)
        },
        claimHostProbe: (h: number) =>
          Atomics.compareExchange(i32, host(h), BreakerState.halfOpen, BreakerState.probing) ===
          BreakerState.halfOpen,
        hostRole: (h: number) => Atomics.load(i32, roles + host(h) - hosts),
        setHostRole: (h: number, role: number) => {
          Atomics.store(i32, roles + host(h) - hosts, role)
        },
        clientsWait: () => Atomics.load(i32, wait) === 1,
        setClientsWait: (on: boolean) => {
          Atomics.store(i32, wait, on ? 1 : 0)
        },
        state: () => Atomics.load(i32, state),
        setState: (s: number) => {
          Atomics.store(i32, state, s)
          Atomics.notify(i32, state)
        },
        lastErrorSeq: () => Atomics.load(i32, seq),
        bumpErrorSeq: () => Atomics.add(i32, seq, 1) + 1,
        failures: () => Atomics.load(i32, failures),
        setFailures: (n: number) => {
          Atomics.store(i32, failures, n)
        },
        claimProbe: () =>
          Atomics.compareExchange(i32, state, BreakerState.halfOpen, BreakerState.probing) ===
          BreakerState.halfOpen,
        setError: (sqlstate: string, message: string) => {
          Atomics.store(i32, textLength, 0)
          const bytes = Buffer.from(`${sqlstate.padEnd(5).slice(0, 5)}${message}`)
          let n = Math.min(bytes.length, BREAKER_TEXT_BYTES)
          // Never cut a UTF-8 sequence in half.
          while (n < bytes.length && n > 5 && (bytes[n]! & 0xc0) === 0x80) n--
          text.set(bytes.subarray(0, n))
          Atomics.store(i32, textLength, n)
        },
        error: () => {
          for (;;) {
            const before = Atomics.load(i32, seq)
            const n = Atomics.load(i32, textLength)
            if (n < 5) return null
            const decoded = Buffer.from(text.buffer, text.byteOffset, n).toString()
            if (Atomics.load(i32, seq) === before && Atomics.load(i32, textLength) === n) {
              return { sqlstate: decoded.slice(0, 5).trimEnd(), message: decoded.slice(5) }
            }
          }
        },
      }
      this.#breakers.set(slot, words)
    }
    return words
  }

  /**
   * Coordinator only, once no worker refers to pool slot `p` (every worker
   * let its pool go): its semaphore and counter rows zeroed, for the next
   * (database, user) it is given to. False, and nothing changed, while a
   * permit or a waiter is still counted there.
   */
  clearPool(p: number): boolean {
    if (!this.pool(p).clear()) return false
    this.counters.resetPool(p)
    return true
  }

  /** As clearPool(), for database slot `d`: both its semaphores, breaker words and histograms. */
  clearDatabase(d: number): boolean {
    if (!this.database(d).clear() || !this.databaseClients(d).clear()) return false
    const base = this.#offsets.breakers + d * BREAKER_WORDS
    const i32 = this.#i32
    for (let i = base; i < base + BREAKER_WORDS; i++) {
      if (Atomics.load(i32, i) !== 0) Atomics.store(i32, i, 0)
    }
    this.histograms.resetDatabase(d)
    return true
  }

  /** As clearPool(), for user slot `u`: both its semaphores. */
  clearUser(u: number): boolean {
    return this.user(u).clear() && this.userClients(u).clear()
  }

  flag(name: SharedFlag): number {
    return Atomics.load(this.#i32, FLAG_WORD[name])
  }

  setFlag(name: SharedFlag, v: number): void {
    Atomics.store(this.#i32, FLAG_WORD[name], v)
    Atomics.notify(this.#i32, FLAG_WORD[name])
  }

  /** Coordinator only, once worker `w` is dead: every permit back, its gauges zeroed. */
  reclaimWorker(worker: number): number {
    const { maxPools, maxDatabases, maxUsers } = this.layout
    const o = this.#offsets
    let n = 0
    // Every slot, through a passing view: caching a view per slot would keep thousands.
    const sweep = (cache: Map<number, Semaphore>, region: number, count: number) => {
      for (let slot = 0; slot < count; slot++)
        n += (cache.get(slot) ?? this.#semaphore(region, slot)).reclaim(worker)
    }
    sweep(this.#pools, o.pools, maxPools)
    sweep(this.#databases, o.databases, maxDatabases)
    sweep(this.#users, o.users, maxUsers)
    n += this.clients().reclaim(worker)
    sweep(this.#dbClients, o.dbClients, maxDatabases)
    sweep(this.#userClients, o.userClients, maxUsers)
    this.counters.resetWorker(worker)
    return n
  }

  #view(
    cache: Map<number, Semaphore>,
    region: number,
    slot: number,
    max: number,
    what: string,
  ): Semaphore {
    let sem = cache.get(slot)
    if (sem === undefined) {
      sem = this.#semaphore(region, this.#slot(slot, max, what))
      cache.set(slot, sem)
    }
    return sem
  }

  #semaphore(region: number, slot: number): Semaphore {
    return new Semaphore(this.#i32, region + slot * this.#offsets.stride, this.layout.maxWorkers)
  }

  #slot(slot: number, max: number, what: string): number {
    if (!(slot >= 0 && slot < max) || !Number.isInteger(slot)) {
      throw new SharedMemoryError(`${what} slot ${slot} out of range 0..${max - 1}`)
    }
    return slot
  }
}
