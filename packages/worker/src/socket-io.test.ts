import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { type RelayResult, relay, type TlsPair } from '../test/socket-io-relay.ts'
import { acceptConnections, handleIo, send, startReading, type TcpConnection } from './socket-io.ts'

/** A listener whose clients come as TcpConnections, and a client connected to it. */
async function connected(): Promise<{
  server: net.Server
  client: net.Socket
  connection: TcpConnection
  events: string[]
}> {
  const server = net.createServer({ pauseOnConnect: true })
  server.on('connection', () => assert.fail('a net.Socket was made for the client'))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const accepted = new Promise<TcpConnection>((resolve) => {
    assert.equal(acceptConnections(server, resolve), true)
  })
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  const connection = await accepted
  await once(client, 'connect')
  const events: string[] = []
  connection.owner = {
    onSocketError: (err) => events.push(`error ${(err as NodeJS.ErrnoException).code}`),
    onSocketClose: () => events.push('close'),
  }
  return { server, client, connection, events }
}

function readAll(client: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = []
  client.on('data', (chunk: Buffer) => chunks.push(chunk))
  return new Promise((resolve) => client.once('end', () => resolve(Buffer.concat(chunks))))
}

const SIZE = 24 * 1024 * 1024

/** A self-signed certificate for localhost, made with openssl. */
async function selfSigned(): Promise<TlsPair> {
  const dir = mkdtempSync(join(tmpdir(), 'socket-io-tls-'))
  try {
    const key = join(dir, 'key.pem')
    const cert = join(dir, 'cert.pem')
    await promisify(execFile)('openssl', [
      ...['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
      ...['-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost'],
    ])
    return { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe('socket-io', () => {
  it('uses the stream handles on this Node', () => {
    assert.equal(handleIo, true)
  })

  for (const ownBuffer of [true, false]) {
    for (const backpressure of [false, true]) {
      it(`relays 24 MB intact through queued writes (${ownBuffer ? 'own' : 'shared'} read buffer, ${backpressure ? 'pausing the reader' : 'reading on'})`, async () => {
        const r = await relay({ ownBuffer, backpressure, size: SIZE })
        assert.equal(r.bytes, SIZE)
        assert.ok(r.intact, 'the bytes B got differ from what A sent')
        assert.ok(r.queuedSome, 'no write was ever queued: the test proves nothing')
        assert.equal(r.paused, backpressure)
        assert.ok(r.closed, 'end of stream from A did not close the socket')
      })
    }
  }

  describe('over TLS', () => {
    let pair: TlsPair
    before(async () => {
      pair = await selfSigned()
    })
    for (const ownBuffer of [true, false]) {
      for (const backpressure of [false, true]) {
        it(`relays 24 MB intact through the TLS layer's handle (${ownBuffer ? 'own' : 'shared'} read buffer, ${backpressure ? 'pausing the reader' : 'reading on'})`, async () => {
          const r = await relay({ ownBuffer, backpressure, size: SIZE, tls: pair })
          assert.equal(r.viaHandle, true, 'the TLS socket was read through its stream')
          assert.equal(r.bytes, SIZE)
          assert.ok(r.intact, 'the bytes B got differ from what A sent')
          assert.ok(r.queuedSome, 'no write ever waited: the test proves nothing')
          assert.equal(r.paused, backpressure)
          assert.ok(r.closed, 'end of stream from A did not close the socket')
        })
      }
    }
  })

  it('falls back to the stream API where the handles are withheld, with the same result', async () => {
    // The permission model withholds process.binding().
    const script = `
      const { relay } = await import(${JSON.stringify(new URL('../test/socket-io-relay.ts', import.meta.url).href)})
      const results = []
      for (const ownBuffer of [true, false]) {
        results.push(await relay({ ownBuffer, backpressure: true, size: ${SIZE} }))
      }
      process.stdout.write(JSON.stringify(results))
    `
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        '--permission',
        `--allow-fs-read=${fileURLToPath(new URL('../../../', import.meta.url))}*`,
        '--input-type=module',
        '-e',
        script,
      ],
      { maxBuffer: 1 << 20 },
    )
    const results = JSON.parse(stdout) as RelayResult[]
    for (const r of results) {
      assert.equal(r.handleIo, false)
      assert.equal(r.bytes, SIZE)
      assert.ok(r.intact)
      assert.ok(r.queuedSome)
      assert.ok(r.closed)
    }
  })

  it('serves an accepted client without a net.Socket: its addresses, its bytes both ways, its hang-up', async () => {
    const { server, client, connection, events } = await connected()
    assert.equal(connection.remoteAddress, '127.0.0.1')
    assert.equal(connection.remoteFamily, 'IPv4')
    assert.equal(connection.remotePort, client.localPort)
    assert.equal(connection.localPort, (server.address() as net.AddressInfo).port)
    const owner = { queuedWrites: 0, onDrained(): void {} }
    startReading(
      connection,
      {
        onBytes(chunk: Buffer): boolean {
          send(connection, owner, Buffer.from(chunk.toString().toUpperCase()))
          return false
        },
      },
      false,
    )
    client.write('hello')
    const [echo] = (await once(client, 'data')) as [Buffer]
    assert.equal(echo.toString(), 'HELLO')
    client.end()
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.deepEqual(events, ['close'], 'the hang-up reached the owner once, without an error')
    assert.equal(connection.destroyed, true)
    assert.equal(connection.remoteAddress, undefined)
    server.close()
  })

  it('half-closes only once its queued writes are out', async () => {
    const { server, client, connection, events } = await connected()
    const payload = randomBytes(16 * 1024 * 1024)
    const owner = { queuedWrites: 0, onDrained(): void {} }
    startReading(connection, { onBytes: () => false }, false)
    const received = readAll(client)
    client.pause()
    assert.equal(send(connection, owner, payload), false, 'nothing queued: the test proves nothing')
    connection.end()
    setTimeout(() => client.resume(), 200)
    assert.ok((await received).equals(payload))
    assert.deepEqual(events, [], 'closed before the client hung up')
    client.end()
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.deepEqual(events, ['close'])
    server.close()
  })

  it('becomes a net.Socket on the same connection, for TLS to take over', async () => {
    const { server, client, connection } = await connected()
    const first = new Promise<string>((resolve) => {
      startReading(
        connection,
        {
          onBytes(chunk: Buffer): boolean {
            resolve(chunk.toString())
            return false
          },
        },
        false,
      )
    })
    client.write('a')
    assert.equal(await first, 'a')
    const socket = connection.toNetSocket()
    assert.equal(connection.destroyed, true)
    assert.equal(socket.remotePort, client.localPort)
    socket.write('b')
    const [answer] = (await once(client, 'data')) as [Buffer]
    assert.equal(answer.toString(), 'b')
    client.destroy()
    socket.destroy()
    server.close()
  })
})
