import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { type RelayResult, relay } from '../test/socket-io-relay.ts'
import { handleIo } from './socket-io.ts'

const SIZE = 24 * 1024 * 1024

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
})
