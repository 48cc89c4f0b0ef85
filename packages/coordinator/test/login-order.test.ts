import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, until, withClient, writeIni } from './support.ts'

// What a login is told, and in which order, as PgBouncer does it: auth_type
// trust lets in only the users auth_file lists; the password is checked
// before an unknown database is named; a failing auth_query tells the client
// `bouncer config error` and the log the detail; users known only through
// auth_query reach the console as stats_users / admin_users.
const db = usePostgres({
  databases: ['app'],
  roles: [
    { name: 'listed', password: 'listed secret', auth: 'md5' },
    { name: 'queried', password: 'queried secret', auth: 'md5' },
  ],
})

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 1 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

interface Failure {
  code?: string
  message: string
}

function login(p: Pooler, user: string, password: string | undefined, database: string) {
  return withClient({ host: p.host, port: p.port, user, password, database }, async (c) =>
    String((await c.query('SELECT current_user AS u')).rows[0].u),
  )
}

async function refusal(promise: Promise<unknown>): Promise<Failure> {
  try {
    await promise
  } catch (err) {
    return err as Failure
  }
  assert.fail('the login went through')
}

for (const target of TARGETS) {
  describe(`${target.name}: login order and refusals`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    describe('auth_type trust with an auth_file', () => {
      let p: Pooler
      before(async () => {
        p = await target.start({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          pgbouncer: { auth_type: 'trust' },
          userlist: { listed: 'listed secret', postgres: '' },
        })
      })
      after(() => p.stop())

      test('a listed user gets in without a password', async () => {
        assert.equal(await login(p, 'listed', undefined, 'app'), 'listed')
      })

      test('a user auth_file does not list is refused, though PostgreSQL knows it', async () => {
        const err = await refusal(login(p, 'queried', undefined, 'app'))
        assert.equal(err.message, '"trust" authentication failed')
        assert.equal(err.code, '08P01')
      })

      test('an unknown database is named only to a user who may log in', async () => {
        const listed = await refusal(login(p, 'listed', undefined, 'nodb'))
        assert.equal(listed.message, 'no such database: nodb')
        const stranger = await refusal(login(p, 'queried', undefined, 'nodb'))
        assert.equal(stranger.message, '"trust" authentication failed')
      })
    })

    describe('auth_type md5: the password before the database', () => {
      let p: Pooler
      before(async () => {
        p = await target.start({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          pgbouncer: { auth_type: 'md5' },
          userlist: { listed: 'listed secret', postgres: '' },
        })
      })
      after(() => p.stop())

      test('a wrong password to an unknown database is a wrong password', async () => {
        // (PgBouncer 1.18 sends these as 08P01 without the user's name; ours as PostgreSQL, 28P01.)
        const err = await refusal(login(p, 'listed', 'wrong', 'nodb'))
        assert.match(err.message, /^password authentication failed/)
        const unknown = await refusal(login(p, 'nobody', 'x', 'nodb'))
        assert.match(unknown.message, /^password authentication failed/)
        if (target.name === 'pgbouncer-cluster') {
          assert.equal(err.code, '28P01')
          assert.equal(err.message, 'password authentication failed for user "listed"')
        }
      })

      test('the right password to an unknown database learns that it does not exist', async () => {
        const err = await refusal(login(p, 'listed', 'listed secret', 'nodb'))
        assert.equal(err.message, 'no such database: nodb')
        assert.equal(err.code, '08P01')
      })
    })

    describe('a failing auth_query', () => {
      let p: Pooler
      before(async () => {
        p = await target.start({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          pgbouncer: {
            auth_type: 'md5',
            auth_user: 'postgres',
            auth_query: 'SELECT usename, passwd FROM not_pg_shadow WHERE usename = $1',
          },
          userlist: { postgres: '' },
        })
      })
      after(() => p.stop())

      test('the client is told "bouncer config error", the log has the detail', async () => {
        const err = await refusal(login(p, 'queried', 'queried secret', 'app'))
        assert.equal(err.message, 'bouncer config error')
        assert.equal(err.code, '08P01')
        // PgBouncer 1.18 logs only that auth_query failed; ours names the error too.
        if (target.name === 'PgBouncer') return
        await until('the detail in the log', async () => p.output().includes('not_pg_shadow'))
      })
    })
  })
}

// PgBouncer 1.18 runs auth_query for the console only when auth_dbname names a
// database (it came in 1.19), so this part runs against ours alone.
describe('console users known only through auth_query', { timeout: 60_000 }, () => {
  let p: Pooler
  before(async () => {
    p = await ours({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        auth_type: 'md5',
        auth_user: 'postgres',
        auth_dbname: 'app',
        auth_query: 'SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1',
        stats_users: 'queried',
        admin_users: 'listed',
      },
      userlist: { postgres: '' },
    })
  })
  after(() => p.stop())

  test('a stats user and an admin user log in to the console with their PostgreSQL password', async () => {
    for (const [user, password] of [
      ['queried', 'queried secret'],
      ['listed', 'listed secret'],
    ] as const) {
      await withClient(
        { host: p.host, port: p.port, user, password, database: 'pgbouncer' },
        async (c) => {
          const { rows } = await c.query('SHOW VERSION')
          assert.equal(rows.length, 1)
        },
      )
    }
    const err = await refusal(
      withClient(
        { host: p.host, port: p.port, user: 'queried', password: 'wrong', database: 'pgbouncer' },
        async () => {},
      ),
    )
    assert.equal(err.code, '28P01')
  })

  test('without auth_dbname the console cannot run auth_query: "bouncer config error"', async () => {
    const q = await ours({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        auth_type: 'md5',
        auth_user: 'postgres',
        auth_query: 'SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1',
        stats_users: 'queried',
      },
      userlist: { postgres: '' },
    })
    try {
      const err = await refusal(
        withClient(
          {
            host: q.host,
            port: q.port,
            user: 'queried',
            password: 'queried secret',
            database: 'pgbouncer',
          },
          async () => {},
        ),
      )
      assert.equal(err.message, 'bouncer config error')
    } finally {
      await q.stop()
    }
  })
})
