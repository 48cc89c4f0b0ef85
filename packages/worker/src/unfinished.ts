// A client's message that has begun and not ended.
//
// Most messages arrive whole in one read. One that does not is either held
// back until its last byte (its header is not complete yet; the pooler must
// see it whole, as a Parse it rewrites; or no server is linked and it is small)
// or streamed to the server as its bytes come (a large message on a linked
// server, as PgBouncer forwards every packet). Each held byte is copied once:
// a small message's reads are kept as they came and joined when it is
// complete; a large one is copied as it comes into one buffer of its size,
// allocated once its header is known, which the reads need not outlive. A
// client that announces a huge length and trickles bytes so costs what it
// sent (the buffer's pages are taken as they are written), not a copy of
// everything so far at every read.

import { Buffer } from 'node:buffer'
import { checkLength } from '@pgbouncer-cluster/protocol/frame-reader'

/**
 * The largest message held back while no server is linked: a client stopped
 * in the middle of one holds no server. Larger ones take a server and stream.
 * Above it, a message held whole goes into one buffer of its size. Bytes a
 * client sends while it waits for a server, or for its welcome, are bounded
 * by the same amount before reading stops.
 */
export const HOLD_LIMIT = 64 * 1024

/** Who decides, once a message's header is in, whether it is held back or streamed. */
export interface HoldPolicy {
  holds(type: number, need: number): boolean
}

export class Unfinished {
  /** When its first byte arrived (the worker's clock): query_timeout counts from here. */
  readonly since: number
  /** A small message's reads, from its first byte; null when streamed or copied into `whole`. */
  private parts: Buffer[] | null
  /** A large message, being filled; null otherwise. */
  private whole: Buffer | null = null
  private have: number
  /** Its whole size (type byte, length field, body) once the header is known; 0 before. */
  private need: number
  /** Once add() completed a large message: the bytes of that read that came after it. */
  rest: Buffer | null = null

  constructor(since: number, head: Buffer | null, need: number) {
    this.since = since
    this.parts = head === null ? null : [head]
    this.have = head === null ? 0 : head.length
    this.need = need
    if (head !== null && need > HOLD_LIMIT) this.fill()
  }

  /** Held back, not streamed. */
  get held(): boolean {
    return this.parts !== null || this.whole !== null
  }

  /**
   * The next read of a held message: the message (and, for a small one,
   * whatever followed it: a large one leaves that in `rest`) once its last
   * byte is in; null while it is not. A message held only because its header
   * was incomplete comes back as soon as the header is in, if `policy` would
   * stream it. Throws ProtocolError for a length field max_packet_size refuses,
   * RangeError when a large message's buffer cannot be had.
   */
  add(bytes: Buffer, maxPacketSize: number, policy: HoldPolicy): Buffer | null {
    const whole = this.whole
    if (whole !== null) {
      const take = Math.min(bytes.length, this.need - this.have)
      bytes.copy(whole, this.have, 0, take)
      this.have += take
      if (take < bytes.length) this.rest = bytes.subarray(take)
      else release(bytes)
      if (this.have < this.need) return null
      this.whole = null
      return whole
    }
    const parts = this.parts!
    parts.push(bytes)
    this.have += bytes.length
    if (this.need === 0) {
      if (this.have < 5) return null
      const head = parts.length === 1 ? parts[0]! : Buffer.concat(parts, 5)
      const length = head.readInt32BE(1)
      checkLength(head[0]!, length, maxPacketSize)
      this.need = length + 1
      if (!policy.holds(head[0]!, this.need)) {
        this.parts = null
        return parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.have)
      }
      if (this.need > HOLD_LIMIT) return this.fill()
    }
    if (this.have < this.need) return null
    this.parts = null
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.have)
  }

  /**
   * The client went without finishing it: a large message's buffer is given
   * back now, rather than whenever the collector next runs.
   */
  drop(): void {
    const whole = this.whole
    this.whole = null
    this.parts = null
    // Detaching frees the memory at once; nothing else refers to an unfinished message's buffer.
    if (whole !== null) (whole.buffer as ArrayBuffer).transfer(0)
  }

  /**
   * A large message: its bytes so far go into one buffer of its size (its
   * pages are taken only as they are written). The message, if these reads
   * already complete it.
   */
  private fill(): Buffer | null {
    const parts = this.parts!
    const whole = Buffer.allocUnsafeSlow(this.need)
    this.whole = whole
    this.parts = null
    let have = 0
    // Copied, not given back: the caller may still cut the first part's read.
    // Only the last part can hold the message's end.
    for (const part of parts) {
      const take = Math.min(part.length, this.need - have)
      part.copy(whole, have, 0, take)
      have += take
      if (take < part.length) this.rest = part.subarray(take)
    }
    this.have = have
    if (have < this.need) return null
    this.whole = null
    return whole
  }
}

/**
 * A read copied whole into a large message is given back at once, when it
 * has a memory block of its own (a read of more than 4 kB is one, made for
 * it; smaller ones share Node's pool and are left to the collector): a
 * client streaming a huge message would otherwise leave as much again in
 * reads the collector has not reached.
 */
function release(read: Buffer): void {
  const block = read.buffer as ArrayBuffer
  if (read.byteOffset === 0 && block.byteLength === read.length && read.length > 4096)
    block.transfer(0)
}

/** A held message's size from the header at `start`, or 0 when its 5 bytes are not all there. */
export function sizeAt(chunk: Buffer, start: number): number {
  return chunk.length - start >= 5 ? chunk.readInt32BE(start + 1) + 1 : 0
}
