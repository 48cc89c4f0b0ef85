// `pg_ctl restart -m fast` under 32 looping clients: which clients saw an error, and how long
// until every client is served again (from PostgreSQL's "received fast shutdown request").
// Each client runs SELECT 1 in a loop on one connection; after an error it reconnects 20 ms
// later. A client is served again with its first success that began after the shutdown request.
// npx node bench/hostile/restart.ts ours|pgbouncer [workers] [runs]
import { startPostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { startPgBouncer } from '../../packages/coordinator/test/reference-pgbouncer.ts'
import { startPooler, writeIni } from '../../packages/coordinator/test/support.ts'

const target = process.argv[2] ?? 'ours'
const workers = Number(process.argv[3] ?? 2)
const runs = Number(process.argv[4] ?? 1)
const CLIENTS = 32
const db = await startPostgres({ databases: ['app'] })
const spec = {
  databases: { app: `host=127.0.0.1 port=${db.port} dbname=app` },
  pgbouncer: { pool_mode: 'transaction', max_client_conn: 200 },
}
const pooler =
  target === 'ours' ? await startPooler(writeIni(spec), { workers }) : await startPgBouncer(spec)

/** The PostgreSQL log's timestamp of the last line matching `re`, as epoch ms. */
function logTime(re: RegExp, after: number): number {
  let found = 0
  for (const line of db.readLog().split('\n')) {
    if (!re.test(line)) continue
    const m = /^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC/.exec(line)
    if (!m) continue
    const t = Date.parse(`${m[1]!.replace(' ', 'T')}Z`)
    if (t >= after - 1000) found = t
  }
  return found
}

interface Attempt {
  start: number
  end: number
  ok: boolean
  error?: string
}

async function once(n: number) {
  const logs: Attempt[][] = []
  let stop = false
  const loops: Promise<void>[] = []
  for (let i = 0; i < CLIENTS; i++) {
    const log: Attempt[] = []
    logs.push(log)
    loops.push(
      (async () => {
        let client: pg.Client | null = null
        while (!stop) {
          const start = Date.now()
          try {
            if (client === null) {
              client = pooler.client({ database: 'app' })
              client.on('error', () => {})
              await client.connect()
            }
            await client.query('SELECT 1')
            log.push({ start, end: Date.now(), ok: true })
          } catch (err) {
            log.push({ start, end: Date.now(), ok: false, error: (err as Error).message })
            const dead = client
            client = null
            dead?.end().catch(() => {})
            await new Promise((r) => setTimeout(r, 20))
          }
        }
        await client?.end().catch(() => {})
      })(),
    )
  }
  await new Promise((r) => setTimeout(r, 2000))
  const began = Date.now()
  await db.bounce()
  const pgBack = Date.now()
  // Until every client has been served after the restart began, then 1 s more (at most 60 s).
  const servedAfter = (log: Attempt[], t: number) => log.some((a) => a.ok && a.start >= t)
  while (Date.now() - began < 60_000 && !logs.every((l) => servedAfter(l, pgBack))) {
    await new Promise((r) => setTimeout(r, 100))
  }
  await new Promise((r) => setTimeout(r, 1000))
  stop = true
  await Promise.all(loops)
  const down = logTime(/received fast shutdown request/, began)
  const ready = logTime(/database system is ready to accept connections/, began)
  const sawError = logs.filter((l) => l.some((a) => !a.ok && a.end >= began)).length
  const errors = logs.reduce((s, l) => s + l.filter((a) => !a.ok && a.end >= began).length, 0)
  // Per client: its first success that started at or after the shutdown request.
  const served = logs.map((l) => l.find((a) => a.ok && a.start >= down)?.end ?? Number.NaN)
  const everyone = Math.max(...served) - down
  const texts = new Map<string, number>()
  for (const l of logs)
    for (const a of l)
      if (!a.ok && a.end >= began) texts.set(a.error!, (texts.get(a.error!) ?? 0) + 1)
  console.log(
    JSON.stringify({
      target,
      run: n,
      clientsWithError: sawError,
      errors,
      postgresDownS: +((ready - down) / 1000).toFixed(2),
      everyClientServedS: +(everyone / 1000).toFixed(2),
      errorTexts: Object.fromEntries(texts),
    }),
  )
}

for (let n = 1; n <= runs; n++) {
  await once(n)
  await new Promise((r) => setTimeout(r, 2000))
}
pooler.stop().catch(() => {})
await db.stop().catch(() => {})
process.exit(0)
