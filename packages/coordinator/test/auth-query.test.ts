import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// auth_user + auth_query: users who are not in auth_file are looked up in
// PostgreSQL, and the pooler logs in to PostgreSQL as them with what it found.
const db = usePostgres({
  databases: ['app'],
  roles: [
    { name: 'md5user', password: 'md5-secret', auth: 'md5' },
    { name: 'scramuser', password: 'scram secret', auth: 'scram-sha-256' },
  ],
})

interface Failure {
  code?: string
  message: string
}

async function whoami(
  p: Pooler,
  user: string,
  password: string,
  database = 'app',
): Promise<string> {
  return withClient({ host: p.host, port: p.port, user, password, database }, async (c) =>
    String((await c.query('SELECT current_user AS u')).rows[0].u),
  )
}

for (const authType of ['scram-sha-256', 'md5'] as const) {
  describe(`auth_type ${authType}, global auth_user`, () => {
    let p: Pooler
    before(async () => {
      p = await startPooler(
        writeIni({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          // Only auth_user is in auth_file; the harness lets postgres in by trust.
          userlist: { postgres: '' },
          pgbouncer: { auth_type: authType, auth_user: 'postgres', pool_mode: 'transaction' },
        }),
      )
    })
    after(() => p.stop())

    test('a user known to PostgreSQL only logs in, and the pooler logs in to PostgreSQL as that user', async () => {
      if (authType === 'md5') assert.equal(await whoami(p, 'md5user', 'md5-secret'), 'md5user')
      assert.equal(await whoami(p, 'scramuser', 'scram secret'), 'scramuser')
    })

    test('a wrong password and an unknown user get the same 28P01', async () => {
      for (const [user, password] of [
        ['scramuser', 'wrong'],
        ['nobody', 'whatever'],
      ]) {
        await assert.rejects(whoami(p, user!, password!), (err: Failure) => {
          assert.equal(err.code, '28P01')
          assert.equal(err.message, `password authentication failed for user "${user}"`)
          return true
        })
      }
    })
  })
}

describe('per-database auth_user and auth_query, auth_dbname', () => {
  let p: Pooler
  before(async () => {
    await db.server.query(`CREATE DATABASE authdb`)
    p = await startPooler(
      writeIni({
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app auth_user=postgres auth_dbname=authdb auth_query='SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1'`,
          authdb: `host=127.0.0.1 port=${db.server.port} dbname=authdb`,
          other: `host=127.0.0.1 port=${db.server.port} dbname=app`,
          viaconsole: `host=127.0.0.1 port=${db.server.port} dbname=app auth_user=postgres auth_dbname=pgbouncer`,
        },
        // PostgreSQL lets postgres in by trust; the console wants the password.
        userlist: { postgres: 'console pw' },
        pgbouncer: {
          auth_type: 'scram-sha-256',
          pool_mode: 'transaction',
          admin_users: 'postgres',
        },
      }),
    )
  })
  after(() => p.stop())

  test('the database with auth_user looks users up; one without does not', async () => {
    assert.equal(await whoami(p, 'scramuser', 'scram secret', 'app'), 'scramuser')
    await assert.rejects(whoami(p, 'scramuser', 'scram secret', 'other'), (err: Failure) => {
      assert.equal(err.code, '28P01')
      return true
    })
  })

  test('the lookup ran as auth_user in auth_dbname, through that pool', async () => {
    const pools = await withClient(
      {
        host: p.host,
        port: p.port,
        user: 'postgres',
        password: 'console pw',
        database: 'pgbouncer',
      },
      async (c) => (await c.query('SHOW POOLS')).rows,
    )
    assert.ok(
      pools.some((r) => r.database === 'authdb' && r.user === 'postgres'),
      JSON.stringify(pools.map((r) => [r.database, r.user])),
    )
  })

  test('the console as a database auth_dbname: bouncer config error, as PgBouncer', async () => {
    await assert.rejects(whoami(p, 'scramuser', 'scram secret', 'viaconsole'), {
      message: 'bouncer config error',
    })
  })

  test("a DISABLEd auth_dbname refuses the lookup with PgBouncer's text", async () => {
    const console = {
      host: p.host,
      port: p.port,
      user: 'postgres',
      password: 'console pw',
      database: 'pgbouncer',
    }
    await withClient(console, (c) => c.query('DISABLE authdb'))
    try {
      await assert.rejects(whoami(p, 'scramuser', 'scram secret', 'app'), {
        message: 'authentication database "authdb" is disabled',
      })
    } finally {
      await withClient(console, (c) => c.query('ENABLE authdb'))
    }
    assert.equal(await whoami(p, 'scramuser', 'scram secret', 'app'), 'scramuser')
  })
})
