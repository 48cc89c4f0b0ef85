// Opens many logged-in but idle client connections with raw sockets: a pg
// Client per connection would cost the load generator more than the pooler.

import { connect, type Socket } from 'node:net'
import type { Endpoint } from './endpoint.ts'

const PROTOCOL_3_0 = 196608

export function startupMessage(user: string, database: string): Buffer {
  const body = Buffer.from(`user\0${user}\0database\0${database}\0\0`, 'utf8')
  const msg = Buffer.alloc(8 + body.length)
  msg.writeInt32BE(msg.length, 0)
  msg.writeInt32BE(PROTOCOL_3_0, 4)
  body.copy(msg, 8)
  return msg
}

/** Resolves once ReadyForQuery arrives; rejects on ErrorResponse or anything else going wrong. */
function login(ep: Endpoint, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: ep.host, port: ep.port })
    let buf: Buffer = Buffer.alloc(0)
    const fail = (err: Error) => {
      clearTimeout(timer)
      sock.destroy()
      reject(err)
    }
    const timer = setTimeout(() => fail(new Error('login timed out')), timeoutMs)
    sock.once('error', fail)
    sock.once('close', () => fail(new Error('closed during login')))
    sock.once('connect', () => sock.write(startupMessage(ep.user, ep.database)))
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      while (buf.length >= 5) {
        const len = buf.readInt32BE(1)
        if (buf.length < 1 + len) return
        const type = buf[0]
        if (type === 0x45 /* E */) {
          const text = buf.subarray(5, 1 + len).toString('utf8')
          const m = /M([^\0]*)/.exec(text)
          return fail(new Error(m ? m[1] : 'ErrorResponse'))
        }
        if (type === 0x5a /* Z */) {
          clearTimeout(timer)
          sock.off('data', onData)
          sock.removeAllListeners('close')
          sock.removeAllListeners('error')
          sock.on('error', () => {})
          sock.pause()
          return resolve(sock)
        }
        buf = buf.subarray(1 + len)
      }
    }
    sock.on('data', onData)
  })
}

export interface HoldResult {
  opened: number
  failed: number
  ms: number
  errors: string[]
}

const held: Socket[] = []

/** Opens `count` idle connections, `batch` logins in flight at once, bounded by `deadlineMs`. */
export async function holdIdle(
  ep: Endpoint,
  count: number,
  batch: number,
  deadlineMs: number,
): Promise<HoldResult> {
  const t0 = performance.now()
  const errors = new Set<string>()
  let failed = 0
  let next = 0
  const worker = async () => {
    while (next < count && performance.now() - t0 < deadlineMs) {
      next++
      try {
        held.push(await login(ep, 10_000))
      } catch (err) {
        failed++
        if (errors.size < 5) errors.add((err as Error).message)
        // a pooler that refuses more clients will refuse the rest too
        if (failed > 50 && failed > held.length) return
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(batch, count) }, worker))
  return { opened: held.length, failed, ms: performance.now() - t0, errors: [...errors] }
}

const TERMINATE = Buffer.from([0x58 /* X */, 0, 0, 0, 4])

export async function releaseIdle(): Promise<number> {
  const n = held.length
  for (const s of held.splice(0)) s.end(TERMINATE, () => s.destroy())
  await new Promise((r) => setTimeout(r, 200))
  return n
}
