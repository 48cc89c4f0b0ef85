import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// The console's `SET name = value` changes a setting while the pooler runs,
// checked as the file's values are; RELOAD reads the file again and the file
// wins. The same bodies run against PgBouncer 1.18, which has SET; its RELOAD
// of a broken file still answered RELOAD (1.25 fails it with F0000).

const db = usePostgres({ databases: ['app'] })

type Start = (spec: IniSpec) => Promise<Pooler & { ini: string }>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: async (spec) => {
      const ini = writeIni(spec)
      return Object.assign(await startPooler(ini, { workers: 2 }), { ini })
    },
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

const spec = (): IniSpec => ({
  databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
  pgbouncer: {
    pool_mode: 'transaction',
    default_pool_size: 3,
    max_client_conn: 50,
    admin_users: 'admin',
    stats_users: 'watcher',
  },
  // PgBouncer lets in only the users of auth_file, trust or not.
  userlist: { postgres: '', admin: '', watcher: '' },
})

for (const target of TARGETS) {
  describe(`console SET (${target.name})`, { skip: target.skip, timeout: 60_000 }, () => {
    let pooler: Pooler & { ini: string }
    let admin: pg.Client
    const clients: pg.Client[] = []

    before(async () => {
      pooler = await target.start(spec())
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

    async function config(key: string): Promise<string> {
      const { rows } = await admin.query('SHOW CONFIG')
      const row = rows.find((r) => r.key === key)
      assert.ok(row, `SHOW CONFIG has ${key}`)
      return row.value
    }

    test('SET changes the value SHOW CONFIG and SHOW DATABASES show, with PgBouncer tag', async () => {
      const res = await admin.query('SET default_pool_size = 7')
      assert.equal(res.command, 'SET')
      assert.equal(await config('default_pool_size'), '7')
      const dbs = (await admin.query('SHOW DATABASES')).rows
      assert.equal(Number(dbs.find((r) => r.name === 'app').pool_size), 7)
      // A quoted value, and TO instead of =, lower case.
      await admin.query("set server_reset_query to 'DISCARD ALL; SELECT 1'")
      assert.equal(await config('server_reset_query'), 'DISCARD ALL; SELECT 1')
    })

    test('the new value is honoured: max_client_conn refuses the client over it', async () => {
      await admin.query('SET max_client_conn = 2')
      const first = await connect('app')
      const second = pooler.client({ database: 'app' })
      second.on('error', () => {})
      await assert.rejects(second.connect(), {
        message: 'no more connections allowed (max_client_conn)',
      })
      await first.end()
      await admin.query('SET max_client_conn = 50')
      const again = await connect('app')
      assert.equal((await again.query('SELECT 1 AS one')).rows[0].one, 1)
    })

    test("an unknown setting or a bad value: PgBouncer's `SET failed`, nothing changes", async () => {
      await assert.rejects(admin.query('SET no_such_setting = 1'), {
        message: 'SET failed',
        code: '08P01',
      })
      await assert.rejects(admin.query('SET default_pool_size = many'), { message: 'SET failed' })
      await assert.rejects(admin.query("SET pool_mode = 'sometimes'"), { message: 'SET failed' })
      assert.equal(await config('pool_mode'), 'transaction')
      // A value that is not one word and not quoted is not a SET at all.
      await assert.rejects(admin.query('SET reserve_pool_timeout = 1.5'), {
        message: "invalid command 'SET reserve_pool_timeout = 1.5', use SHOW HELP;",
      })
    })

    test('a setting only a restart changes is answered and ignored', async () => {
      const port = await config('listen_port')
      const res = await admin.query('SET listen_port = 1')
      assert.equal(res.command, 'SET')
      assert.equal(await config('listen_port'), port)
    })

    test('stats users may not SET; session settings drivers send are ignored with a notice', async () => {
      const watcher = await connect('pgbouncer', 'watcher')
      await assert.rejects(watcher.query('SET default_pool_size = 2'), {
        message: 'admin access needed',
      })
      const notices: string[] = []
      watcher.on('notice', (n) => notices.push(n.message ?? ''))
      assert.equal((await watcher.query('SET client_encoding = UTF8')).command, 'SET')
      assert.deepEqual(notices, ['SET ignored'])
    })

    test('RELOAD reads the file again: the file wins over SET', async () => {
      await admin.query('SET default_pool_size = 9')
      assert.equal(await config('default_pool_size'), '9')
      assert.equal((await admin.query('RELOAD')).command, 'RELOAD')
      assert.equal(await config('default_pool_size'), '3')
    })

    test('RELOAD of a broken file fails with PgBouncer 1.25 error and keeps the running values', {
      skip: target.name === 'PgBouncer' && 'PgBouncer 1.18 answers RELOAD whatever the file says',
    }, async () => {
      const good = readFileSync(pooler.ini, 'utf8')
      writeFileSync(pooler.ini, `${good}\nno_such_setting = 1\n`)
      try {
        await assert.rejects(admin.query('RELOAD'), {
          message: 'RELOAD failed, see logs for additional details',
          code: 'F0000',
        })
        assert.equal(await config('default_pool_size'), '3')
      } finally {
        writeFileSync(pooler.ini, good)
      }
      assert.equal((await admin.query('RELOAD')).command, 'RELOAD')
    })
  })
}
