// How soon a client gets an error from a PostgreSQL that is down.
// stopped: PostgreSQL served the pooler, then `pg_ctl stop -m fast` (its servers ended with 57P01);
// never: the pooler never reached PostgreSQL (stopped before the pooler's first login).
// npx node bench/hostile/dead.ts ours|pgbouncer stopped|never
import { startPostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { startPgBouncer } from '../../packages/coordinator/test/reference-pgbouncer.ts'
import { startPooler, writeIni } from '../../packages/coordinator/test/support.ts'

const target = process.argv[2] ?? 'ours'
const how = process.argv[3] ?? 'stopped'
const db = await startPostgres({ databases: ['app'] })
const spec = {
  databases: { app: `host=127.0.0.1 port=${db.port} dbname=app` },
  pgbouncer: { pool_mode: 'transaction' },
}
const pooler =
  target === 'ours' ? await startPooler(writeIni(spec), { workers: 2 }) : await startPgBouncer(spec)
if (how === 'stopped') {
  for (let i = 0; i < 4; i++) {
    const c = pooler.client({ database: 'app' })
    await c.connect()
    await c.query('SELECT 1')
    await c.end()
  }
}
await db.halt()
await new Promise((r) => setTimeout(r, 300))
const times: string[] = []
for (let i = 0; i < 12; i++) {
  const c = pooler.client({ database: 'app' })
  c.on('error', () => {})
  const started = performance.now()
  let message = 'ok'
  try {
    await c.connect()
    await c.query('SELECT 1')
  } catch (err) {
    message = (err as Error).message
  }
  times.push(`${Math.round(performance.now() - started)}`)
  if (i === 0) console.log(target, how, 'first error:', message)
  await c.end().catch(() => {})
}
console.log(target, how, 'ms to error, attempts in a row:', times.join(' '))
pooler.stop().catch(() => {})
await db.restart().catch(() => {})
await db.stop().catch(() => {})
process.exit(0)
