// The startup packets a worker saw last, each parsed once.
//
// An application's clients log in with the same startup packet every time:
// the same user, database, application_name and client_encoding, byte for
// byte. A client pool that reconnects, or `pgbench -C`, sends one packet over
// and over. Parsing it again makes two new strings per parameter, and every
// lookup the login then makes with them (the password, the database, the
// pool, the client limits) hashes them again. A packet seen before comes back
// as it was parsed the first time: the same strings, whose hashes V8 keeps
// with them. The entry also keeps what the last login that sent it worked
// out for its welcome (client.ts), which depends on nothing else the client
// sends.

import { Buffer } from 'node:buffer'
import { parseStartupPacket, type StartupPacket } from '@pgbouncer-cluster/protocol/startup'

type Startup = Extract<StartupPacket, { kind: 'startup' }>

/**
 * A StartupMessage as parsed, shared by every login that sends the same bytes:
 * its params are read, never written.
 */
export interface KnownStartup<Memo> extends Startup {
  /**
   * The params as name, value, name, value...: walking the dictionary that
   * `params` is costs V8 a runtime call and a new key list at every login.
   */
  readonly list: readonly string[]
  /** What the last login with this packet worked out for the next one; null until then. */
  memo: Memo | null
}

/** Packets kept per thread; past this the table starts over. */
const KNOWN_MAX = 64
/** Longer packets are parsed every time (the longest a client sends in practice is a few hundred bytes). */
const KNOWN_MAX_LENGTH = 1024

export class StartupPackets<Memo> {
  private readonly known = new Map<number, { bytes: Buffer; startup: KnownStartup<Memo> }>()

  /**
   * The packet parsed (protocol/startup.ts), throwing as that does. A
   * StartupMessage seen before is the object it was parsed to then; the
   * others (SSLRequest, CancelRequest) are never kept.
   */
  parse(packet: Buffer): Exclude<StartupPacket, Startup> | KnownStartup<Memo> {
    // -1, which no hash is, for a packet too long to keep.
    const hash = packet.length <= KNOWN_MAX_LENGTH ? hashOf(packet) : -1
    const entry = this.known.get(hash)
    if (entry?.bytes.equals(packet)) return entry.startup
    const parsed = parseStartupPacket(packet)
    if (parsed.kind !== 'startup') return parsed
    const list: string[] = []
    for (const name in parsed.params) list.push(name, parsed.params[name]!)
    const startup: KnownStartup<Memo> = { ...parsed, list, memo: null }
    if (hash >= 0) {
      if (this.known.size >= KNOWN_MAX) this.known.clear()
      // A copy: the packet is a view of a read buffer.
      this.known.set(hash, { bytes: Buffer.from(packet), startup })
    }
    return startup
  }
}

/** FNV-1a, cut to a small integer (a Map key V8 keeps unboxed). */
function hashOf(packet: Buffer): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < packet.length; i++) hash = Math.imul(hash ^ packet[i]!, 0x01000193)
  return hash & 0x3fffffff
}
