// Socket reads and writes for the pass-through path, below Node's streams.
//
// A net.Socket costs a lot per message on loopback, where a transaction is two
// reads and two writes of a few dozen bytes: each read allocates a buffer and
// goes through Readable's push/emit, each write through Writable's state
// machine, a WriteWrap and a nextTick. PgBouncer does a recv() and a send().
// Here a socket keeps its net.Socket for its life (connect, errors, end,
// close, addresses) while reads and writes talk to its libuv handle, the way
// net.js itself does:
//
//   reads   handle.useUserBuffer(buf) + handle.onread: the kernel copies into a
//           buffer we own and our callback gets the byte count; the reader
//           gets one Buffer per read, not a stream's chunk and events. End of
//           stream and errors go back to net.js.
//   writes  handle.writeBuffer(req, buf): uv_try_write first, so a write the
//           kernel takes whole (nearly all of them) completes before the call
//           returns, and its request object is reused for the next one. Only
//           a write left queued in libuv keeps its request, and a reference to
//           its bytes, until it completes.
//
// Plain TCP clients go one step further: the listener hands over the accepted
// handle, which a TcpConnection holds without any net.Socket (see there).
//
// TLS sockets take the same path: their handle is Node's TLS layer, itself a
// stream handle. It decrypts into the buffer given to useUserBuffer, and it
// encrypts what writeBuffer/writev hand it before the call returns (writev's
// buffers into one record), so the caller's bytes are free again at once. It
// differs in two ways, handled under "TLS writes" below: it completes every
// write later, on the next turn of the event loop, and it takes one write at
// a time.
//
// The handle API is the one net.js uses (process.binding('stream_wrap')). If a
// Node build withholds it, the same functions fall back to the public stream
// API, with the same behaviour and the old costs.

import { Buffer } from 'node:buffer'
import net from 'node:net'
import { getSystemErrorName } from 'node:util'

/** The side of a connection that writes: told when its queued writes are out. */
export interface WriteOwner {
  /** Writes the kernel did not take at once, still queued. */
  queuedWrites: number
  /** Every queued write is out. */
  onDrained(): void
}

/** The side that reads. */
export interface ReadOwner {
  /**
   * New bytes. With a read buffer of its own (see startReading), `chunk` is a
   * view of it (the same view again when a read has the last one's length),
   * and the reader returns true when a reference into it outlives the call.
   * Otherwise `chunk` is the reader's to keep, and the result is not read.
   */
  onBytes(chunk: Buffer): boolean
}

interface StreamState {
  [index: number]: number
}
interface WriteReq {
  oncomplete: (this: WriteReq, status: number) => void
  owner: WriteOwner | null
  socket: ClientSocket | null
  buffer: Uint8Array | Uint8Array[] | null
  /** A TLS write's socket handle, for its completion. */
  handle: Handle | null
}
interface ShutdownReq {
  oncomplete: (status: number) => void
}
/** A socket's address as getpeername/getsockname give it. */
export interface Address {
  address?: string
  family?: string
  port?: number
}
interface Handle {
  reading: boolean
  onread: (this: Handle) => Buffer | undefined
  useUserBuffer(buf: Buffer): void
  readStart(): number
  readStop(): number
  writeBuffer(req: WriteReq, buf: Uint8Array): number
  writev(req: WriteReq, chunks: Uint8Array[], allBuffers: boolean): number
  shutdown(req: ShutdownReq): number
  close(): void
  setNoDelay(on: boolean): number
  setKeepAlive(on: boolean, delaySeconds: number): number
  getpeername(out: Address): number
  getsockname(out: Address): number
  [kReader]?: ReadOwner
  [kReadBuffer]?: Buffer
  [kReadView]?: Buffer | null
  [kConnection]?: TcpConnection
  [kTls]?: TlsWrites
}
interface StreamWrap {
  WriteWrap: new () => WriteReq
  ShutdownWrap: new () => ShutdownReq
  streamBaseState: StreamState
  kReadBytesOrError: number
  kLastWriteWasAsync: number
}

const kReader = Symbol('reader')
const kReadBuffer = Symbol('readBuffer')
const kReadView = Symbol('readView')
const kConnection = Symbol('connection')
const kTls = Symbol('tls')

function loadStreamWrap(): StreamWrap | null {
  try {
    const binding = (process as unknown as { binding(name: string): StreamWrap }).binding(
      'stream_wrap',
    )
    return typeof binding.WriteWrap === 'function' && binding.streamBaseState !== undefined
      ? binding
      : null
  } catch {
    return null
  }
}

const wrap = loadStreamWrap()
/** False when this Node build does not expose its stream handles: streams are used instead. */
export const handleIo = wrap !== null

const READ_BUFFER_SIZE = 64 * 1024

/**
 * Incremented by every write the kernel did not take whole. A read callback
 * that forwards subarrays of its buffer compares it before and after: if it
 * moved, some forwarded bytes may still sit queued in that buffer, which must
 * then not be read into again.
 */
export let queuedWriteCount = 0

// One request object serves every write that completes at once.
let spareReq: WriteReq | null = wrap !== null ? newReq() : null

function newReq(): WriteReq {
  const req = new wrap!.WriteWrap()
  req.oncomplete = onQueuedWriteDone
  req.owner = null
  req.socket = null
  req.buffer = null
  req.handle = null
  return req
}

/**
 * The socket, when its bytes go through the stream API: every socket where the
 * handles are withheld.
 */
function viaStream(socket: ClientSocket): net.Socket | null {
  return wrap === null ? (socket as net.Socket) : null
}

function isTls(socket: ClientSocket): boolean {
  return (socket as { encrypted?: boolean }).encrypted === true
}

function handleOf(socket: ClientSocket): Handle | null {
  return (socket as unknown as { _handle: Handle | null })._handle
}

// ---- connections without a net.Socket ----------------------------------------

/** A client's connection: a net.Socket (TLS, the unix socket), or a bare TCP handle. */
export type ClientSocket = net.Socket | TcpConnection

/** What a TcpConnection tells the session it belongs to. */
export interface ConnectionOwner {
  onSocketError(err: Error): void
  /** The client hung up, or an error closed the connection. */
  onSocketClose(): void
}

/** libuv's end of stream. */
const UV_EOF = -4095

/**
 * A client's TCP connection, held by its libuv handle alone. A net.Socket
 * built for each accepted client (a Duplex with its two stream states, its
 * event listeners, the close's ticks) cost more CPU than the rest of a login
 * that connects for one transaction, and memory on every idle client. Reads
 * and writes already go through the handle (above); this class adds the rest
 * of what a session asks of its socket: its addresses, keepalive, a half
 * close, a close, and news of the client's hang-up or an error.
 *
 * TLS needs a net.Socket under it: toNetSocket() builds one on the same handle
 * when a client's SSLRequest is accepted.
 */
export class TcpConnection {
  /** Named as net.Socket's field, so that handleOf() serves both. */
  _handle: Handle | null
  readonly encrypted = false
  owner: ConnectionOwner | null = null
  private ended = false

  constructor(handle: Handle) {
    this._handle = handle
    handle[kConnection] = this
  }

  /** Closed, or handed over to a net.Socket. */
  get destroyed(): boolean {
    return this._handle === null
  }

  /** The peer's address, port and family from one system call (see remoteOf). */
  peer(): Address {
    return this.address(true)
  }

  get remoteAddress(): string | undefined {
    return this.address(true).address
  }

  get remotePort(): number | undefined {
    return this.address(true).port
  }

  get remoteFamily(): string | undefined {
    return this.address(true).family
  }

  get localAddress(): string | undefined {
    return this.address(false).address
  }

  get localPort(): number | undefined {
    return this.address(false).port
  }

  /** Asked of the kernel at each use: an idle client keeps no address object. */
  private address(peer: boolean): Address {
    const out: Address = {}
    const handle = this._handle
    if (handle !== null) {
      if (peer) handle.getpeername(out)
      else handle.getsockname(out)
    }
    return out
  }

  setKeepAlive(enable: boolean, initialDelayMs: number): void {
    this._handle?.setKeepAlive(enable, Math.floor(initialDelayMs / 1000))
  }

  /**
   * Half-closes once the queued writes are out (libuv's shutdown waits for
   * them); the client's own end of stream, read as usual, then closes.
   */
  end(): void {
    const handle = this._handle
    if (handle === null || this.ended) return
    this.ended = true
    const req = new wrap!.ShutdownWrap()
    req.oncomplete = afterShutdown
    if (handle.shutdown(req) !== 0) this.destroy()
  }

  /**
   * Closes now; queued writes are dropped. The owner hears of it only with
   * `err` (a failed write): without, the owner is the one closing.
   */
  destroy(err?: Error): void {
    const handle = this._handle
    if (handle === null) return
    this._handle = null
    handle[kReader] = undefined
    handle.close()
    if (err !== undefined) process.nextTick(reportFailure, this.owner, err)
  }

  /** End of stream or a read error, from the read callbacks. */
  readEnded(status: number): void {
    const owner = this.owner
    this.destroy()
    if (owner === null) return
    if (status !== UV_EOF) owner.onSocketError(systemError(status, 'read'))
    owner.onSocketClose()
  }

  /**
   * The same connection as a paused net.Socket, for what needs one: TLS,
   * which reads the handle itself, and a refusal written before a close. The
   * handle still reads into a buffer of ours, so the net.Socket itself must
   * not be read from. This object is done with.
   */
  toNetSocket(): net.Socket {
    const handle = this._handle!
    this._handle = null
    handle[kConnection] = undefined
    handle[kReader] = undefined
    if (handle.reading) {
      handle.reading = false
      handle.readStop()
    }
    // `handle` and `pauseOnCreate` are the options net.Server's own accept passes.
    return new net.Socket({
      handle,
      readable: true,
      writable: true,
      pauseOnCreate: true,
    } as unknown as net.SocketConstructorOpts)
  }
}

/**
 * The client's address, port and family together: one getpeername on a
 * TcpConnection, where each of its getters asks the kernel again; a
 * net.Socket's cached fields otherwise.
 */
export function remoteOf(socket: ClientSocket): Address {
  if (socket instanceof TcpConnection) return socket.peer()
  return { address: socket.remoteAddress, port: socket.remotePort, family: socket.remoteFamily }
}

function afterShutdown(): void {
  // Nothing to do: the close comes with the client's end of stream.
}

function reportFailure(owner: ConnectionOwner | null, err: Error): void {
  if (owner === null) return
  owner.onSocketError(err)
  owner.onSocketClose()
}

/**
 * Makes `server` hand each accepted TCP connection to `accept` as a
 * TcpConnection (TCP_NODELAY set) rather than as a net.Socket. Call it once
 * the server listens. False where the handles are withheld: the server's
 * 'connection' event goes on serving.
 */
export function acceptConnections(
  server: net.Server,
  accept: (connection: TcpConnection) => void,
): boolean {
  const listening = (server as unknown as { _handle: ListenHandle | null })._handle
  if (wrap === null || listening === null) return false
  listening.onconnection = (status: number, handle?: Handle) => {
    if (status !== 0 || handle === undefined) {
      server.emit('error', systemError(status, 'accept'))
      return
    }
    handle.setNoDelay(true)
    accept(new TcpConnection(handle))
  }
  return true
}

interface ListenHandle {
  onconnection: (status: number, handle?: Handle) => void
}

function systemError(status: number, syscall: string): Error {
  const code = getSystemErrorName(status)
  return Object.assign(new Error(`${syscall} ${code}`), { code, errno: status, syscall })
}

function onQueuedWriteDone(this: WriteReq, status: number): void {
  const owner = this.owner!
  const socket = this.socket!
  this.owner = null
  this.socket = null
  this.buffer = null
  owner.queuedWrites--
  if (status < 0) {
    socket.destroy(systemError(status, 'write'))
    return
  }
  if (owner.queuedWrites === 0) owner.onDrained()
}

function afterWrite(
  socket: ClientSocket,
  owner: WriteOwner,
  err: number,
  buffer: Uint8Array | Uint8Array[],
): boolean {
  if (err !== 0) {
    socket.destroy(systemError(err, 'write'))
    return true
  }
  if (wrap!.streamBaseState[wrap!.kLastWriteWasAsync] === 0) return true
  // Queued in libuv: the request now belongs to that write.
  const req = spareReq!
  req.owner = owner
  req.socket = socket
  req.buffer = buffer
  spareReq = newReq()
  owner.queuedWrites++
  queuedWriteCount++
  return false
}

/**
 * Writes `buf` to the socket. True when the kernel took all of it; false when
 * the rest is queued (stop feeding this socket until `owner.onDrained()`).
 * A destroyed socket swallows the bytes.
 */
export function send(socket: ClientSocket, owner: WriteOwner, buf: Uint8Array): boolean {
  const stream = viaStream(socket)
  if (stream !== null) return streamWrite(stream, owner, buf)
  const handle = handleOf(socket)
  if (handle === null || socket.destroyed) return true
  if (isTls(socket)) return tlsWrite(socket, handle, owner, buf)
  return afterWrite(socket, owner, handle.writeBuffer(spareReq!, buf), buf)
}

/** Several buffers in one system call (over TLS, in one record). */
export function sendAll(socket: ClientSocket, owner: WriteOwner, chunks: Uint8Array[]): boolean {
  const stream = viaStream(socket)
  if (stream !== null) {
    let all = true
    for (const chunk of chunks) all = streamWrite(stream, owner, chunk)
    return all
  }
  const handle = handleOf(socket)
  if (handle === null || socket.destroyed) return true
  if (isTls(socket)) return tlsWrite(socket, handle, owner, chunks)
  return afterWrite(socket, owner, handle.writev(spareReq!, chunks, true), chunks)
}

/** Writes what is left to say, then half-closes once every queued write is out. */
export function endWith(socket: ClientSocket, owner: WriteOwner, buf: Uint8Array): void {
  send(socket, owner, buf)
  endSocket(socket)
}

/**
 * Half-closes once every queued write is out: a TLS socket's writes still
 * waiting here (see tlsWrite) go first, then its close_notify.
 */
export function endSocket(socket: ClientSocket): void {
  const tls = isTls(socket) ? handleOf(socket)?.[kTls] : undefined
  if (tls?.busy) tls.ending = true
  else socket.end()
}

// ---- TLS writes ---------------------------------------------------------------
//
// Node's TLS layer holds a write's request until the next turn of the event
// loop, even when the kernel took its bytes at once, and it refuses a second
// write meanwhile (net.js's Writable never asks it to). So a TLS socket has one
// write in flight at most; what comes while it is, usually nothing, waits here
// as a copy (the caller may write into its buffer again) and leaves as one
// record when the write completes. Requests come from a free list, so a write
// allocates nothing. The writer is told to stop (false) only when more than
// TLS_BACKLOG bytes wait, as a Writable's highWaterMark would.

const TLS_BACKLOG = 16 * 1024

interface TlsWrites {
  /** A write is in flight. */
  busy: boolean
  /** Copies of what came while it was. */
  backlog: Uint8Array[]
  backlogBytes: number
  /** A writer told to stop, to be told once everything is out. */
  stopped: WriteOwner | null
  /** endSocket() came while busy: half-close once everything is out. */
  ending: boolean
}

// A request comes back to the list only once its completion callback has
// returned: Node lets go of it just after, and until then it cannot carry
// another write.
const tlsReqs: WriteReq[] = []

function tlsReq(socket: ClientSocket, handle: Handle): WriteReq {
  let req = tlsReqs.pop()
  if (req === undefined) {
    req = new wrap!.WriteWrap() as WriteReq
    req.oncomplete = onTlsWriteDone
    req.owner = null
    req.buffer = null
  }
  req.handle = handle
  req.socket = socket
  return req
}

function tlsWrite(
  socket: ClientSocket,
  handle: Handle,
  owner: WriteOwner,
  bytes: Uint8Array | Uint8Array[],
): boolean {
  let state = handle[kTls]
  if (state === undefined) {
    state = { busy: false, backlog: [], backlogBytes: 0, stopped: null, ending: false }
    handle[kTls] = state
  }
  if (state.busy) {
    for (const chunk of Array.isArray(bytes) ? bytes : [bytes]) {
      state.backlog.push(Buffer.from(chunk))
      state.backlogBytes += chunk.length
    }
    if (state.backlogBytes <= TLS_BACKLOG) return true
    if (state.stopped === null) {
      state.stopped = owner
      owner.queuedWrites++
    }
    return false
  }
  const req = tlsReq(socket, handle)
  const err = Array.isArray(bytes)
    ? handle.writev(req, bytes, true)
    : handle.writeBuffer(req, bytes)
  if (err !== 0) {
    releaseWriteReq(req)
    socket.destroy(systemError(err, 'write'))
    return true
  }
  state.busy = true
  return true
}

function releaseWriteReq(req: WriteReq): void {
  req.handle = null
  req.socket = null
  tlsReqs.push(req)
}

function onTlsWriteDone(this: WriteReq, status: number): void {
  const handle = this.handle!
  const socket = this.socket!
  try {
    tlsWriteDone(socket, handle, status)
  } finally {
    releaseWriteReq(this)
  }
}

function tlsWriteDone(socket: ClientSocket, handle: Handle, status: number): void {
  const state = handle[kTls]!
  state.busy = false
  if (status < 0) {
    socket.destroy(systemError(status, 'write'))
    return
  }
  if (state.backlog.length > 0) {
    const chunks = state.backlog
    state.backlog = []
    state.backlogBytes = 0
    const req = tlsReq(socket, handle)
    const err = handle.writev(req, chunks, true)
    if (err !== 0) {
      releaseWriteReq(req)
      socket.destroy(systemError(err, 'write'))
      return
    }
    state.busy = true
    return
  }
  const owner = state.stopped
  if (owner !== null) {
    state.stopped = null
    if (--owner.queuedWrites === 0) owner.onDrained()
  }
  if (state.ending) {
    state.ending = false
    socket.end()
  }
}

function streamWrite(socket: net.Socket, owner: WriteOwner, buf: Uint8Array): boolean {
  if (socket.destroyed) return true
  if (socket.write(buf)) return true
  if (owner.queuedWrites++ === 0) {
    socket.once('drain', () => {
      owner.queuedWrites = 0
      owner.onDrained()
    })
  }
  queuedWriteCount++
  return false
}

// ---- reads ------------------------------------------------------------------

// Every client socket of this thread reads into this one buffer, and each read
// is copied out of it at once: thousands of idle clients need no buffer each.
const sharedReadBuffer = wrap !== null ? Buffer.allocUnsafeSlow(READ_BUFFER_SIZE) : null

// net.js's own read callback, for what is not data: end of stream and errors.
let netOnRead: Handle['onread'] | null = null

function onSharedRead(this: Handle): undefined {
  const nread = wrap!.streamBaseState[wrap!.kReadBytesOrError]
  if (nread > 0) {
    // A buffer of the reader's own, which it may write as it is (a write the
    // kernel does not take whole keeps pointing at it): one allocation per
    // read, where a view of the shared buffer and a copy of it would be two.
    const chunk = Buffer.allocUnsafe(nread)
    sharedReadBuffer!.copy(chunk, 0, 0, nread)
    this[kReader]!.onBytes(chunk)
    return undefined
  }
  if (nread < 0) readEnded(this, nread)
  return undefined
}

function onOwnRead(this: Handle): Buffer | undefined {
  const nread = wrap!.streamBaseState[wrap!.kReadBytesOrError]
  if (nread > 0) {
    const buf = this[kReadBuffer]!
    // A server's answers to a repeated query are the same size each time: the
    // view of the last read serves again, rather than a new one per read.
    let view = this[kReadView]!
    if (view === null || view.length !== nread) view = this[kReadView] = buf.subarray(0, nread)
    const before = queuedWriteCount
    const kept = this[kReader]!.onBytes(view)
    if (!kept && queuedWriteCount === before) return undefined
    // Some of these bytes are still needed, or wait in a write queue: the
    // next read goes to a new buffer.
    const next = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE)
    this[kReadBuffer] = next
    this[kReadView] = null
    return next
  }
  if (nread < 0) readEnded(this, nread)
  return undefined
}

/** End of stream or an error: a TcpConnection's own, else net.js's. */
function readEnded(handle: Handle, status: number): void {
  const connection = handle[kConnection]
  if (connection !== undefined) connection.readEnded(status)
  else netOnRead!.call(handle)
}

function takeOver(
  handle: Handle,
  reader: ReadOwner,
  buffer: Buffer,
  onread: Handle['onread'],
): void {
  if (handle[kConnection] === undefined) netOnRead ??= handle.onread
  handle[kReader] = reader
  handle.useUserBuffer(buffer)
  handle.onread = onread
  handle.reading = true
  handle.readStart()
}

/**
 * Starts delivering a connected socket's bytes to `reader`. With `ownBuffer`
 * the socket reads into a buffer of its own, so `onBytes` may forward
 * subarrays of it to writes that get queued; without, it shares the thread's
 * buffer, and `onBytes` gets each read in a new Buffer. The socket must not
 * be in flowing mode (accepted with pauseOnConnect, or called from 'connect').
 */
export function startReading(socket: ClientSocket, reader: ReadOwner, ownBuffer: boolean): void {
  const stream = viaStream(socket)
  if (stream !== null) {
    stream.on('data', (chunk: Buffer) => reader.onBytes(chunk))
    stream.resume()
    return
  }
  const handle = handleOf(socket)
  if (handle === null) return
  // What a TLS socket decrypted before it was handed over (the bytes that
  // came with the end of the handshake) waits in its stream: it goes first.
  const tls = isTls(socket) ? (socket as net.Socket) : null
  const early: Buffer | null = tls !== null && tls.readableLength > 0 ? tls.read() : null
  if (ownBuffer) {
    const buffer = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE)
    handle[kReadBuffer] = buffer
    handle[kReadView] = null
    takeOver(handle, reader, buffer, onOwnRead)
  } else {
    takeOver(handle, reader, sharedReadBuffer!, onSharedRead)
  }
  if (early !== null) reader.onBytes(early)
}

/** Stops reading (the peer is not draining). */
export function pauseReading(socket: ClientSocket): void {
  const stream = viaStream(socket)
  if (stream !== null) {
    stream.pause()
    return
  }
  const handle = handleOf(socket)
  if (handle === null || !handle.reading) return
  handle.reading = false
  handle.readStop()
}

export function resumeReading(socket: ClientSocket): void {
  if ((socket as Suspendable)[kSuspended] === true) return
  const stream = viaStream(socket)
  if (stream !== null) {
    stream.resume()
    return
  }
  const handle = handleOf(socket)
  if (handle === null || handle.reading || socket.destroyed) return
  handle.reading = true
  handle.readStart()
}

// ---- SUSPEND ----------------------------------------------------------------

const kSuspended = Symbol('suspended')
type Suspendable = ClientSocket & { [kSuspended]?: boolean }

/**
 * SUSPEND: stops reading, and keeps the socket stopped whatever else would
 * resume it (a peer that drains), until unsuspendReading.
 */
export function suspendReading(socket: ClientSocket): void {
  pauseReading(socket)
  ;(socket as Suspendable)[kSuspended] = true
}

export function isSuspended(socket: ClientSocket): boolean {
  return (socket as Suspendable)[kSuspended] === true
}

/** RESUME: reads again (a peer still slow pauses it again at its next write). */
export function unsuspendReading(socket: ClientSocket): void {
  if ((socket as Suspendable)[kSuspended] !== true) return
  ;(socket as Suspendable)[kSuspended] = false
  resumeReading(socket)
}
