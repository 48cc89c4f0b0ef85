// Framing of the PostgreSQL byte stream.
//
// FrameReader hands out every whole message (startup, auth, admin console).
// FrameScanner is the pass-through path: it only walks message boundaries and
// reports the few message types the pooler must see; the caller forwards the
// chunk itself untouched.
//
// Both hand out `subarray` views of the chunk when a message lies wholly inside
// it. Only a message split across chunks is joined, once, when its last byte
// arrives: parts are collected as views, so a peer that announces a huge
// length and then trickles bytes costs no up-front allocation.

import { Buffer } from 'node:buffer'
import { ProtocolError, typeName } from './errors.ts'
import { DEFAULT_MAX_PACKET_SIZE, MAX_STARTUP_PACKET_SIZE } from './messages.ts'

// Return `true` to stop at this message boundary; anything else continues.
export type MessageHandler = (type: number, msg: Buffer) => unknown
/**
 * `start`: where the message begins in the scanned chunk, or -1 when it began
 * in an earlier one.
 */
export type ScanHandler = (type: number, msg: Buffer | null, end: number, start: number) => boolean

// Interest flags of FrameScanner, indexed by type byte.
export const Interest = { Skip: 0, Notify: 1, Whole: 2 } as const

const EMPTY = Buffer.alloc(0)

// Signed big-endian int32 without Buffer's bounds checks; callers check bounds.
function int32(b: Uint8Array, p: number): number {
  return (b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!
}

/**
 * Throws, as the readers do, for a typed message's length field (`length`,
 * which counts itself) below 4, or a message (type byte included, as
 * PgBouncer counts a packet) larger than max_packet_size.
 */
export function checkLength(type: number, length: number, max: number): void {
  if (length < 4)
    throw new ProtocolError(`invalid message length ${length} for type ${typeName(type)}`)
  if (length >= max)
    throw new ProtocolError(`message of ${length + 1} bytes exceeds max_packet_size ${max}`)
}

function checkStartupLength(length: number): void {
  if (length < 8) throw new ProtocolError(`invalid startup packet length ${length}`)
  if (length > MAX_STARTUP_PACKET_SIZE) {
    throw new ProtocolError(
      `startup packet length ${length} exceeds maximum ${MAX_STARTUP_PACKET_SIZE}`,
    )
  }
}

function join(head: Buffer | null, parts: Buffer[], size: number): Buffer {
  const out = Buffer.allocUnsafe(size)
  let off = 0
  if (head !== null) off += head.copy(out, 0)
  for (let i = 0; i < parts.length; i++) off += parts[i]!.copy(out, off)
  return out
}

/**
 * Splits a byte stream into whole messages.
 *
 * Two framings, switched by the public `startup` flag (initially
 * `opts.startup ?? false`):
 * - typed (default): type byte + int32 length (including itself) + body;
 *   length must be 4..maxLength - 1 (the whole message at most maxLength bytes).
 * - startup: untyped int32 length (including itself) + body, as sent by a
 *   client before its StartupMessage is accepted (SSLRequest, GSSENCRequest,
 *   CancelRequest, StartupMessage); length must be 8..MAX_STARTUP_PACKET_SIZE.
 *   The handler receives type 0 for these packets.
 * The flag may be flipped inside the handler: the next message of the same
 * chunk is framed the new way.
 *
 * A handler returning `true` stops delivery at that boundary; the rest of the
 * chunk stays pending (see `pendingBytes`, e.g. to refuse bytes that follow an
 * SSLRequest) until the next `push`/`resume`, or is taken with `takeRemainder`
 * (e.g. to hand the stream to a FrameScanner).
 *
 * After a ProtocolError the stream is unusable: close the connection.
 */
export class FrameReader {
  startup: boolean
  readonly #max: number
  // Unprocessed bytes after a stop; always start at a message boundary.
  #rest: Buffer | null = null
  // A message split across chunks: views of its bytes so far.
  readonly #parts: Buffer[] = []
  #have = 0
  // Total size of the split message; 0 while its header is incomplete.
  #need = 0
  // Header bytes of the split message, copied so its length can be read.
  readonly #hdr = Buffer.alloc(5)

  constructor(opts?: { maxLength?: number; startup?: boolean }) {
    this.#max = opts?.maxLength ?? DEFAULT_MAX_PACKET_SIZE
    this.startup = opts?.startup ?? false
  }

  /** Bytes received but not yet delivered. */
  get pendingBytes(): number {
    return this.#have + (this.#rest === null ? 0 : this.#rest.length)
  }

  push(chunk: Buffer, onMessage: MessageHandler): void {
    const rest = this.#rest
    if (rest !== null) {
      this.#rest = null
      if (this.#run(rest, onMessage)) {
        // Stopped again before reaching the new chunk: keep it in line (rare).
        if (chunk.length > 0) {
          this.#rest = this.#rest === null ? chunk : Buffer.concat([this.#rest, chunk])
        }
        return
      }
    }
    this.#run(chunk, onMessage)
  }

  /** Continues delivery of the bytes left pending by a stop. */
  resume(onMessage: MessageHandler): void {
    this.push(EMPTY, onMessage)
  }

  /** Removes and returns every undelivered byte (boundary-aligned after a stop). */
  takeRemainder(): Buffer {
    let out: Buffer
    if (this.#rest !== null) out = this.#rest
    else if (this.#parts.length === 1) out = this.#parts[0]!
    else if (this.#have > 0) out = join(null, this.#parts, this.#have)
    else out = EMPTY
    this.reset()
    return out
  }

  reset(): void {
    this.#rest = null
    // Writing an array's length is a runtime call in V8, even to 0 from 0.
    if (this.#parts.length !== 0) this.#parts.length = 0
    this.#have = 0
    this.#need = 0
  }

  // Returns true when the handler asked to stop.
  #run(buf: Buffer, cb: MessageHandler): boolean {
    const len = buf.length
    let pos = 0
    if (this.#have > 0) {
      // Finish the message split across the previous chunks.
      if (this.#need === 0) {
        const head = this.startup ? 4 : 5
        const take = Math.min(head - this.#have, len)
        buf.copy(this.#hdr, this.#have, 0, take)
        if (take > 0) this.#parts.push(buf.subarray(0, take))
        this.#have += take
        pos = take
        if (this.#have < head) return false
        this.#need = this.#frameSize(this.#hdr, 0)
      }
      const want = this.#need - this.#have
      if (len - pos < want) {
        if (len > pos) this.#parts.push(buf.subarray(pos))
        this.#have += len - pos
        return false
      }
      if (want > 0) this.#parts.push(buf.subarray(pos, pos + want))
      const msg = join(null, this.#parts, this.#need)
      pos += want
      this.#parts.length = 0
      this.#have = 0
      this.#need = 0
      if (cb(this.startup ? 0 : msg[0]!, msg) === true) return this.#stop(buf, pos)
    }
    for (;;) {
      const startup = this.startup
      const head = startup ? 4 : 5
      if (pos + head > len) break
      const size = this.#frameSize(buf, pos)
      const end = pos + size
      if (end > len) {
        this.#need = size
        break
      }
      if (cb(startup ? 0 : buf[pos]!, buf.subarray(pos, end)) === true) {
        return this.#stop(buf, end)
      }
      pos = end
    }
    if (pos < len) {
      this.#have = len - pos
      this.#parts.push(buf.subarray(pos))
      buf.copy(this.#hdr, 0, pos, Math.min(pos + 5, len))
    }
    return false
  }

  #stop(buf: Buffer, end: number): true {
    if (end < buf.length) this.#rest = buf.subarray(end)
    return true
  }

  // Whole size in bytes of the frame whose header starts at b[p].
  #frameSize(b: Uint8Array, p: number): number {
    if (this.startup) {
      const length = int32(b, p)
      checkStartupLength(length)
      return length
    }
    const length = int32(b, p + 1)
    checkLength(b[p]!, length, this.#max)
    return length + 1
  }
}

/**
 * Walks typed-message boundaries of a pass-through stream without copying.
 *
 * `interesting[type]`: 0 skip, 1 report the type only, 2 report the whole
 * message (a view, or a joined copy when it was split across chunks). Only a
 * message that completes inside the scanned chunk is reported, with `end` =
 * index in that chunk just past it. A handler returning `true` stops the scan:
 * `scan` returns that `end` and a later `scan(chunk, end, ...)` continues from
 * the boundary; otherwise `scan` returns `chunk.length`.
 */
export class FrameScanner {
  readonly #interest: Uint8Array
  readonly #max: number
  // 0 at a boundary, 1 inside a header, 2 skipping a body, 3 collecting a body.
  #mode = 0
  // The header and body views of a message split across reads. Most
  // connections never see one (thousands sit idle), so they are made on demand.
  #hdr: Buffer | null = null
  #hdrLen = 0
  #type = 0
  #flag = 0
  // Mode 2: body bytes still to skip.
  #remaining = 0
  // Mode 3: body views of a flag-2 message; header is in #hdr.
  #parts: Buffer[] | null = null
  #have = 0
  #need = 0
  #partialStart = -1

  constructor(interesting: Uint8Array, maxLength: number = DEFAULT_MAX_PACKET_SIZE) {
    if (interesting.length < 256) throw new RangeError('interesting must have 256 entries')
    this.#interest = interesting
    this.#max = maxLength
  }

  /** True when no partial message is pending. */
  get atBoundary(): boolean {
    return this.#mode === 0
  }

  /**
   * True while views into an earlier chunk are kept (the start of a flag-2
   * message split across chunks): a caller that reuses its read buffer must
   * hand the next read a fresh one.
   */
  get retainsInput(): boolean {
    return this.#mode === 3 && this.#parts !== null && this.#parts.length > 0
  }

  reset(): void {
    this.#mode = 0
    this.#hdrLen = 0
    this.#remaining = 0
    if (this.#parts !== null) this.#parts.length = 0
    this.#have = 0
    this.#need = 0
  }

  /**
   * The unfinished message at the end of the last scan: its type byte and
   * where it began in that chunk (-1: in an earlier chunk). A caller that
   * must see such a message whole can hold those bytes back, `reset()`, and
   * scan them again in front of the next chunk.
   */
  get partial(): { type: number; start: number } | null {
    if (this.#mode === 0) return null
    const type = this.#mode === 1 ? (this.#hdrLen > 0 ? this.#hdr![0]! : -1) : this.#type
    return { type, start: this.#partialStart }
  }

  scan(chunk: Buffer, start: number, onMessage: ScanHandler): number {
    const len = chunk.length
    let pos = start
    this.#partialStart = -1
    if (this.#mode !== 0) {
      if (this.#mode === 1) {
        const hdr = this.#hdr!
        while (this.#hdrLen < 5 && pos < len) hdr[this.#hdrLen++] = chunk[pos++]!
        if (this.#hdrLen < 5) return len
        this.#hdrLen = 0
        const type = hdr[0]!
        const length = int32(hdr, 1)
        checkLength(type, length, this.#max)
        this.#enter(type, length - 4)
      }
      if (this.#mode === 2) {
        const avail = len - pos
        if (avail < this.#remaining) {
          this.#remaining -= avail
          return len
        }
        pos += this.#remaining
        this.#remaining = 0
        this.#mode = 0
        if (this.#flag === 1 && onMessage(this.#type, null, pos, -1) === true) return pos
      } else {
        const want = this.#need - this.#have
        if (len - pos < want) {
          if (len > pos) this.#partsOf().push(chunk.subarray(pos))
          this.#have += len - pos
          return len
        }
        const parts = this.#partsOf()
        if (want > 0) parts.push(chunk.subarray(pos, pos + want))
        const msg = join(this.#hdr, parts, this.#need)
        pos += want
        parts.length = 0
        this.#have = 0
        this.#mode = 0
        if (onMessage(this.#type, msg, pos, -1) === true) return pos
      }
    }
    const interest = this.#interest
    const max = this.#max
    while (pos + 5 <= len) {
      const type = chunk[pos]!
      const length = int32(chunk, pos + 1)
      if (length < 4 || length >= max) checkLength(type, length, max)
      const end = pos + 1 + length
      if (end > len) {
        this.#partialStart = pos
        chunk.copy(this.#header(), 0, pos, pos + 5)
        this.#enter(type, length - 4)
        const body = len - pos - 5
        if (this.#mode === 2) this.#remaining -= body
        else if (body > 0) {
          this.#partsOf().push(chunk.subarray(pos + 5))
          this.#have += body
        }
        return len
      }
      const flag = interest[type]
      if (flag !== 0 && onMessage(type, flag === 2 ? chunk.subarray(pos, end) : null, end, pos)) {
        return end
      }
      pos = end
    }
    if (pos < len) {
      this.#partialStart = pos
      this.#mode = 1
      this.#hdrLen = 0
      const hdr = this.#header()
      while (pos < len) hdr[this.#hdrLen++] = chunk[pos++]!
    }
    return len
  }

  #header(): Buffer {
    if (this.#hdr === null) this.#hdr = Buffer.alloc(5)
    return this.#hdr
  }

  #partsOf(): Buffer[] {
    if (this.#parts === null) this.#parts = []
    return this.#parts
  }

  // Header of a message known (and in #hdr); its body of `body` bytes follows.
  #enter(type: number, body: number): void {
    this.#type = type
    const flag = this.#interest[type]!
    this.#flag = flag
    if (flag === 2) {
      this.#mode = 3
      this.#need = body + 5
      this.#have = 5
    } else {
      this.#mode = 2
      this.#remaining = body
    }
  }
}
