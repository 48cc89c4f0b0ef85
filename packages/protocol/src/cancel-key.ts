/**
 * Our BackendKeyData: the pid and secret a client gets at login and sends back
 * in a CancelRequest. The key says where its session lives, so that any worker
 * of any peer can route a cancel to it without a lookup table; every other
 * bit is random, from the CSPRNG, so a key cannot be guessed from another.
 *
 *   byte    0            1          2          3           4  5  6  7
 *         ┌──────────┬──────────┬──────────┬──────────┐  ┌──────────────────┐
 *   pid   │0 worker+1│ random or│ random or│ random   │  │ secret (random)  │
 *         │          │ peer lo  │ peer hi  │          │  │                  │
 *         └──────────┴──────────┴──────────┴──────────┘  └─────────────┬────┘
 *                                                     with peer_id, low 2 bits: TTL
 *
 * - The worker (1..127, stored +1) sits in the top byte; the sign bit stays
 *   clear because some clients (old pg_basebackup) choke on a negative pid.
 * - With peer_id set, bytes 1 and 2 carry it (low byte first) and the low two
 *   bits of the secret carry a TTL of 3 forwards: the byte positions are
 *   PgBouncer 1.19+'s, so PgBouncer and pgbouncer-cluster peers read each
 *   other's keys. Each forward to a peer decrements the TTL and a key whose
 *   TTL is spent is dropped, so a cancel cannot circle between peers that
 *   disagree about who owns an id. Random bits: 8 of the pid, 30 of the secret.
 * - Without peer_id, bytes 1..3 and the whole secret are random: 56 bits
 *   (PgBouncer's key is 64 random bits; ours gives 8 to routing).
 *
 * Sessions are found by `lookupKey`, which ignores the TTL bits (a forwarded
 * key arrives with a smaller TTL than the one issued); the issuer draws again
 * in the rare case that a new key's lookup number is taken.
 */

export const CANCEL_TTL_MASK = 0x03

/** The worker id a key names, or -1 when its top byte names none. */
export function keyWorker(pid: number): number {
  return ((pid >>> 24) & 0x7f) - 1
}

/** The peer id a key names (0 when the pooler that issued it has no peer_id). */
export function keyPeer(pid: number): number {
  return ((pid >>> 16) & 0xff) | (((pid >>> 8) & 0xff) << 8)
}

/** A new key for a session of `worker`; `random0` and `random1` are 32 bits each from the CSPRNG. */
export function issueKey(
  worker: number,
  peerId: number,
  random0: number,
  random1: number,
): { pid: number; secret: number } {
  const top = ((worker + 1) & 0x7f) << 24
  if (peerId === 0) return { pid: top | (random0 & 0xffffff), secret: random1 | 0 }
  const pid = top | ((peerId & 0xff) << 16) | (((peerId >>> 8) & 0xff) << 8) | (random0 & 0xff)
  return { pid, secret: random1 | CANCEL_TTL_MASK }
}

/**
 * One number per key for a Map: the pid and the secret's top 22 bits (a
 * 53-bit integer, exact in a double). The TTL bits are left out; callers
 * compare the whole secret with `sameSecret` after the lookup.
 */
export function lookupKey(pid: number, secret: number): number {
  return (pid & 0x7fffffff) * 0x400000 + (secret >>> 10)
}

/** Whether a CancelRequest's secret is the issued one, its TTL bits aside. */
export function sameSecret(issued: number, received: number): boolean {
  return (issued | CANCEL_TTL_MASK) === (received | CANCEL_TTL_MASK)
}

/** The key to send on to a peer, or null when its TTL is spent. */
export function forwardedSecret(secret: number): number | null {
  return (secret & CANCEL_TTL_MASK) === 0 ? null : secret - 1
}
