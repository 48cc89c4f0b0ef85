import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, until, writeIni } from './support.ts'

// SIGUSR1 is PAUSE and SIGUSR2 RESUME, as in PgBouncer (1.18 has both), and
// neither stops the process. The same body runs against /usr/sbin/pgbouncer.

const db = usePostgres({ databases: ['app'] })

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 2 }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

for (const target of TARGETS) {
  describe(`SIGUSR1 and SIGUSR2 (${target.name})`, { skip: target.skip, timeout: 60_000 }, () => {
    let pooler: Pooler
    let admin: pg.Client
    const clients: pg.Client[] = []

    before(async () => {
      pooler = await target.start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { pool_mode: 'transaction', admin_users: 'admin' },
        userlist: { postgres: '', admin: '' },
      })
      admin = await connect('pgbouncer', 'admin')
    })
    after(async () => {
      await Promise.all(clients.map((c) => c.end().catch(() => {})))
      await pooler.stop()
    })

    async function connect(database: string, user = 'postgres'): Promise<pg.Client> {
      const c = pooler.client({ database, user })
      c.on('error', () => {})
      await c.connect()
      clients.push(c)
      return c
    }

    async function pool(): Promise<Record<string, number>> {
      const { rows } = await admin.query('SHOW POOLS')
      const row = rows.find((r) => r.database === 'app' && r.user === 'postgres')
      assert.ok(row, 'a pool row for app')
      return row
    }

    test('SIGUSR1 pauses: transactions finish, their servers close, new queries wait; SIGUSR2 resumes', async () => {
      const inTx = await connect('app')
      const later = await connect('app')
      await inTx.query('BEGIN')
      await inTx.query('SELECT 1')
      pooler.child.kill('SIGUSR1')
      await until('the pause to be logged', async () =>
        /got SIGUSR1, pausing all activity/.test(pooler.output()),
      )
      // The console's PAUSE finds the pooler paused already.
      await assert.rejects(admin.query('PAUSE'), { message: 'already suspended/paused' })
      // The open transaction goes on; its end closes its server.
      await inTx.query('SELECT 2')
      await inTx.query('COMMIT')
      await until('the released server to close', async () => {
        const p = await pool()
        return Number(p.sv_idle) + Number(p.sv_active) + Number(p.sv_used) === 0
      })
      let answered = false
      const held = later.query('SELECT 42 AS n').then((r) => {
        answered = true
        return r.rows[0].n
      })
      await until('the query to wait', async () => Number((await pool()).cl_waiting) === 1)
      await sleep(300)
      assert.equal(answered, false, 'a query waits while paused')
      pooler.child.kill('SIGUSR2')
      assert.equal(await held, 42)
      assert.equal(pooler.child.exitCode, null, 'still running')
      await assert.rejects(admin.query('RESUME'), { message: 'pooler is not paused/suspended' })
    })

    test('neither signal stops the process, however often it comes', async () => {
      for (const signal of ['SIGUSR2', 'SIGUSR1', 'SIGUSR1', 'SIGUSR2', 'SIGUSR2'] as const) {
        pooler.child.kill(signal)
        await sleep(100)
      }
      assert.equal(pooler.child.exitCode, null)
      assert.equal(pooler.child.signalCode, null)
      const c = await connect('app')
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
      if (target.name === 'pgbouncer-cluster') {
        // Node's inspector would have said so on stderr: a SIGUSR1 listener keeps it off.
        assert.doesNotMatch(pooler.output(), /Debugger listening/)
        assert.match(pooler.output(), /got SIGUSR1, pausing all activity/)
        assert.match(pooler.output(), /got SIGUSR1, but already paused\/suspended/)
        assert.match(pooler.output(), /got SIGUSR2, continuing from PAUSE/)
        assert.match(pooler.output(), /got SIGUSR2, but not paused\/suspended/)
      }
    })
  })
}
