// A relay through socket-io.ts for its tests; also run in a child process
// where the stream handles are withheld (see socket-io.test.ts).

import { Buffer } from 'node:buffer'
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import tls from 'node:tls'
import {
  endSocket,
  handleIo,
  pauseReading,
  resumeReading,
  send,
  startReading,
} from '../src/socket-io.ts'

export interface RelayResult {
  handleIo: boolean
  /** The relay read its inbound socket without a 'data' listener (through the handle). */
  viaHandle: boolean
  bytes: number
  intact: boolean
  queuedSome: boolean
  paused: boolean
  closed: boolean
}

/** A certificate and its key, for the relay to run both of its connections over TLS. */
export interface TlsPair {
  key: string
  cert: string
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port))
  })
}

function accept(server: net.Server, secure: boolean): Promise<net.Socket> {
  return new Promise((resolve) => server.once(secure ? 'secureConnection' : 'connection', resolve))
}

function connectTo(port: number, pair: TlsPair | undefined): Promise<net.Socket> {
  return new Promise((resolve) => {
    if (pair === undefined) {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => resolve(socket))
    } else {
      const socket = tls.connect({
        port,
        host: '127.0.0.1',
        ca: pair.cert,
        servername: 'localhost',
      })
      socket.once('secureConnect', () => resolve(socket))
    }
  })
}

/**
 * A → relay → B, the way the pooler forwards: the relay reads A through
 * socket-io and sends every chunk on to B, which reads nothing for the first
 * 200 ms, so writes queue up. B must still get A's bytes exactly. With `tls`
 * both of the relay's connections are TLS (its reads and writes go through
 * Node's TLS layer).
 */
export async function relay(options: {
  ownBuffer: boolean
  backpressure: boolean
  size: number
  tls?: TlsPair
}): Promise<RelayResult> {
  const secure = options.tls !== undefined
  const server = (): net.Server =>
    secure ? tls.createServer({ ...options.tls }) : net.createServer({ pauseOnConnect: true })
  const sinkServer = server()
  const relayServer = server()
  const [sinkPort, relayPort] = await Promise.all([listen(sinkServer), listen(relayServer)])

  const sinkAccepted = accept(sinkServer, secure)
  const out = await connectTo(sinkPort, options.tls)
  const sinkSide = await sinkAccepted
  if (secure) sinkSide.pause()

  const payload = randomBytes(options.size)
  const inboundAccepted = accept(relayServer, secure)
  const a = await connectTo(relayPort, options.tls)
  const inbound = await inboundAccepted

  let queuedSome = false
  let paused = false
  const outOwner = {
    queuedWrites: 0,
    onDrained(): void {
      if (options.backpressure) resumeReading(inbound)
    },
  }
  const closed = new Promise<boolean>((resolve) => inbound.once('close', () => resolve(true)))
  startReading(
    inbound,
    {
      onBytes(chunk: Buffer): boolean {
        // Without a buffer of its own the reader must copy, as ClientSession does.
        const bytes = options.ownBuffer ? chunk : Buffer.from(chunk)
        if (!send(out, outOwner, bytes)) {
          queuedSome = true
          if (options.backpressure) {
            paused = true
            pauseReading(inbound)
          }
        }
        return false
      },
    },
    options.ownBuffer,
  )
  const viaHandle = inbound.listenerCount('data') === 0
  inbound.on('end', () => endSocket(out))

  a.end(payload)
  // B reads nothing for a while: the relay's writes to it queue up meanwhile.
  await new Promise((resolve) => setTimeout(resolve, 200))
  const hash = createHash('sha256')
  let bytes = 0
  sinkSide.on('data', (chunk: Buffer) => {
    hash.update(chunk)
    bytes += chunk.length
  })
  sinkSide.resume()
  await new Promise((resolve) => sinkSide.once('end', resolve))
  const intact = hash.digest('hex') === createHash('sha256').update(payload).digest('hex')
  const result: RelayResult = {
    handleIo,
    viaHandle,
    bytes,
    intact,
    queuedSome,
    paused,
    closed: await closed,
  }
  sinkSide.destroy()
  sinkServer.close()
  relayServer.close()
  return result
}
