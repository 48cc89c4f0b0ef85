import net from 'node:net'
import type { PeerPoolStats } from '@pgbouncer-cluster/protocol/control'
import { cancelRequest } from '@pgbouncer-cluster/protocol/serializer'
import { serverAddress } from './address.ts'
import type { PeerConfig } from './config-types.ts'
import type { Logger } from './log.ts'

/** What the forwarder reads of its worker, live (a reload changes [peers]). */
export interface PeerHost {
  readonly log: Logger
  peers(): Record<string, PeerConfig>
  defaultPoolSize(): number
  /** server_connect_timeout, seconds: a peer that does not answer is given up on. */
  connectTimeout(): number
}

interface PeerPool {
  /** Keys waiting for a connection slot (pool_size connections at most). */
  readonly waiting: { pid: number; secret: number }[]
  /** Connections being opened. */
  login: number
  /** Connections that carried their key and wait for the peer to close them. */
  active: number
}

/**
 * PgBouncer's peer pools: a CancelRequest whose key another peer issued is
 * sent on to that peer over a short connection of its own, as a client would
 * send it. The peer carries it out (or sends it on, while the key's TTL lasts).
 * A peer that is down costs the request only: nothing waits on the answer.
 */
export class PeerForwarder {
  private readonly host: PeerHost
  private readonly pools = new Map<number, PeerPool>()

  constructor(host: PeerHost) {
    this.host = host
  }

  /** Sends a key on to its peer; false when [peers] has no such id (the request is dropped). */
  forward(peerId: number, pid: number, secret: number): boolean {
    const peer = this.host.peers()[peerId]
    if (peer === undefined) return false
    let pool = this.pools.get(peerId)
    if (pool === undefined) {
      pool = { waiting: [], login: 0, active: 0 }
      this.pools.set(peerId, pool)
    }
    pool.waiting.push({ pid, secret })
    this.launch(peerId, pool)
    return true
  }

  stats(): PeerPoolStats[] {
    const out: PeerPoolStats[] = []
    for (const [peerId, pool] of this.pools) {
      out.push({
        peerId,
        clActiveCancelReq: pool.active,
        clWaitingCancelReq: pool.waiting.length + pool.login,
        svActiveCancel: pool.active,
        svLogin: pool.login,
      })
    }
    return out
  }

  private launch(peerId: number, pool: PeerPool): void {
    const peer = this.host.peers()[peerId]
    if (peer === undefined) {
      // Removed from [peers] by a reload: what still waits for it is dropped.
      pool.waiting.length = 0
      return
    }
    const size = peer.poolSize ?? this.host.defaultPoolSize()
    while (pool.waiting.length > 0 && pool.login + pool.active < Math.max(1, size)) {
      const key = pool.waiting.shift()!
      this.send(peerId, peer, pool, key.pid, key.secret)
    }
  }

  private send(
    peerId: number,
    peer: PeerConfig,
    pool: PeerPool,
    pid: number,
    secret: number,
  ): void {
    pool.login++
    let state: 'login' | 'active' | 'closed' = 'login'
    // A peer's host is never empty ([peers] requires one): the address is never null.
    const address = serverAddress(peer.host, peer.port, '')!
    const socket =
      address.path !== undefined
        ? net.connect({ path: address.path })
        : net.connect({ host: address.host, port: address.port })
    // Bounds the whole exchange: a peer that takes the key but never hangs up frees its slot too.
    const timeoutMs = this.host.connectTimeout() * 1000
    if (timeoutMs > 0) socket.setTimeout(timeoutMs)
    socket.on('timeout', () => socket.destroy(new Error('timed out')))
    socket.on('connect', () => {
      pool.login--
      pool.active++
      state = 'active'
      socket.end(cancelRequest(pid, secret))
    })
    socket.on('error', (err: Error) => {
      this.host.log.warn({ peer: peerId, err: err.message }, 'cancel request to peer failed')
    })
    socket.on('close', () => {
      if (state === 'login') pool.login--
      else if (state === 'active') pool.active--
      state = 'closed'
      this.launch(peerId, pool)
    })
  }
}
