import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// The '*' entry: a database name no entry has gets an automatic database made
// from the '*' line, every key of it applying to that name as to a database
// of its own (PgBouncer parses the line again for each name). The same body
// runs against PgBouncer 1.18.

const db = usePostgres({
  roles: [{ name: 'tenant_owner', password: 'owner-pw', auth: 'scram-sha-256' }],
})
const TEST_TIMEOUT = 30_000

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 2 }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(): IniSpec {
  return {
    databases: {
      '*': [
        `host=127.0.0.1 port=${db.server.port} dbname=postgres`,
        'user=tenant_owner password=owner-pw',
        'pool_size=1 application_name=from_star',
        `connect_query='SET work_mem = ''7MB'''`,
      ].join(' '),
    },
    pgbouncer: { pool_mode: 'session', admin_users: 'postgres', query_wait_timeout: 20 },
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: the keys of the '*' entry`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec())
    })
    after(() => pooler?.stop())

    const connect = async (database: string) => {
      const c = pooler.client({ database })
      await c.connect()
      return c
    }

    test('any name reaches dbname=postgres as the forced user, with application_name and connect_query', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const c = await connect('tenant7')
      try {
        const { rows } = await c.query(
          "SELECT current_database() AS db, current_user AS usr, current_setting('application_name') AS app, current_setting('work_mem') AS mem",
        )
        assert.deepEqual(rows[0], {
          db: 'postgres',
          usr: 'tenant_owner',
          app: 'from_star',
          mem: '7MB',
        })
      } finally {
        await c.end()
      }
    })

    test('pool_size applies to each name on its own', { timeout: TEST_TIMEOUT }, async () => {
      const holders: pg.Client[] = []
      try {
        // One server each: both names are served at once.
        for (const name of ['tenant_a', 'tenant_b']) {
          const c = await connect(name)
          holders.push(c)
          await c.query('BEGIN')
        }
        // A second client of tenant_a waits for that name's one server (here
        // perhaps at its login, when its worker has not yet seen the pool).
        const waiter = pooler.client({ database: 'tenant_a' })
        holders.push(waiter)
        let answered = false
        const query = waiter
          .connect()
          .then(() => waiter.query('SELECT 1'))
          .then(() => {
            answered = true
          })
        await new Promise((r) => setTimeout(r, 700))
        assert.equal(answered, false, 'tenant_a had a second server')
        const first = holders.shift()!
        await first.query('COMMIT')
        await first.end()
        await query
      } finally {
        await Promise.all(holders.map((c) => c.end().catch(() => {})))
      }
    })

    test("SHOW DATABASES lists the name with the entry's dbname, user and pool_size", {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const c = await connect('tenant9')
      await c.end()
      await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
        async (admin) => {
          const row = (await admin.query('SHOW DATABASES')).rows.find((r) => r.name === 'tenant9')
          assert.ok(row, 'tenant9 is not in SHOW DATABASES')
          assert.equal(row.database, 'postgres')
          assert.equal(row.force_user, 'tenant_owner')
          assert.equal(Number(row.pool_size), 1)
        },
      )
    })
  })
}
