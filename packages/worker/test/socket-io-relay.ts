// A relay through socket-io.ts for its tests; also run in a child process
// where the stream handles are withheld (see socket-io.test.ts).

import { Buffer } from 'node:buffer'
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { handleIo, pauseReading, resumeReading, send, startReading } from '../src/socket-io.ts'

export interface RelayResult {
  handleIo: boolean
  bytes: number
  intact: boolean
  queuedSome: boolean
  paused: boolean
  closed: boolean
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port))
  })
}

function accept(server: net.Server): Promise<net.Socket> {
  return new Promise((resolve) => server.once('connection', resolve))
}

/**
 * A → relay → B, the way the pooler forwards: the relay reads A through
 * socket-io and sends every chunk on to B, which reads nothing for the first
 * 200 ms, so writes queue up. B must still get A's bytes exactly.
 */
export async function relay(options: {
  ownBuffer: boolean
  backpressure: boolean
  size: number
}): Promise<RelayResult> {
  const sinkServer = net.createServer({ pauseOnConnect: true })
  const relayServer = net.createServer({ pauseOnConnect: true })
  const [sinkPort, relayPort] = await Promise.all([listen(sinkServer), listen(relayServer)])

  const out = net.connect(sinkPort, '127.0.0.1')
  const sinkSide = await accept(sinkServer)
  await new Promise((resolve) => out.once('connect', resolve))

  const payload = randomBytes(options.size)
  const a = net.connect(relayPort, '127.0.0.1')
  const inbound = await accept(relayServer)

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
  inbound.on('end', () => out.end())

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
