// A Parse whose header claims 1 GB, then 64 MB of its body streamed: how long until the pooler has
// taken 64 MB, its peak RSS while it does, and its RSS once the client has gone.
// npx node bench/hostile/huge-parse.ts ours|pgbouncer [workers]
import { readFileSync } from 'node:fs'
import { startPostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { RawConnection, startupPacket } from '../../packages/coordinator/test/raw-protocol.ts'
import { startPgBouncer } from '../../packages/coordinator/test/reference-pgbouncer.ts'
import { startPooler, writeIni } from '../../packages/coordinator/test/support.ts'

const target = process.argv[2] ?? 'ours'
const workers = Number(process.argv[3] ?? 2)
const TOTAL = 64 * 1024 * 1024
const CLAIM = 1_000_000_000
const LIMIT_MS = 30_000
const pg = await startPostgres({ databases: ['app'] })
const spec = {
  databases: { app: `host=127.0.0.1 port=${pg.port} dbname=app` },
  pgbouncer: { pool_mode: 'transaction', default_pool_size: 4 },
}
const pooler =
  target === 'ours' ? await startPooler(writeIni(spec), { workers }) : await startPgBouncer(spec)
const pid = pooler.child.pid!
const rssMb = () => {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(s)![1]) / 1024
}
// Warm up: one ordinary client, so the login path is loaded before the baseline.
const warm = pooler.client({ database: 'app' })
await warm.connect()
await warm.query('SELECT 1')
await warm.end()
await new Promise((r) => setTimeout(r, 1000))
const before = rssMb()
let peak = before
const sampler = setInterval(() => {
  peak = Math.max(peak, rssMb())
}, 20)
const c = await RawConnection.connect(pooler.host, pooler.port)
c.send(startupPacket({ user: 'postgres', database: 'app' }))
await c.until('Z', 5000)
const head = Buffer.alloc(5 + 6)
head[0] = 0x50 // P
head.writeInt32BE(CLAIM, 1)
head.write('s1\0SEL', 5, 'latin1') // a named statement, so the pooler must see it whole
const block = Buffer.alloc(64 * 1024, 0x20)
const started = performance.now()
let sent = 0
let closedEarly = false
c.socket.write(head)
sent += head.length
while (sent < TOTAL && performance.now() - started < LIMIT_MS) {
  if (c.closed) {
    closedEarly = true
    break
  }
  const ok = c.socket.write(block)
  sent += block.length
  if (!ok)
    await Promise.race([
      new Promise((r) => c.socket.once('drain', r)),
      new Promise((r) => setTimeout(r, LIMIT_MS)),
    ])
}
// Accepted: written and drained from our side (the kernel's socket buffers hold a few MB at most).
const ms = performance.now() - started
const accepted = sent - c.socket.writableLength
await new Promise((r) => setTimeout(r, 200))
peak = Math.max(peak, rssMb())
c.socket.destroy()
await new Promise((r) => setTimeout(r, 3000))
const after3 = rssMb()
await new Promise((r) => setTimeout(r, 7000))
const after10 = rssMb()
clearInterval(sampler)
console.log(
  JSON.stringify({
    target,
    workers: target === 'ours' ? workers : 1,
    acceptedMb: +(accepted / 1048576).toFixed(1),
    seconds: +(ms / 1000).toFixed(2),
    closedEarly,
    rssBeforeMb: +before.toFixed(1),
    rssPeakMb: +peak.toFixed(1),
    rssAfter3sMb: +after3.toFixed(1),
    rssAfter10sMb: +after10.toFixed(1),
  }),
)
pooler.stop().catch(() => {})
await pg.stop().catch(() => {})
process.exit(0)
