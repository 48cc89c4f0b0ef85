import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Authentication on both sides: clients against auth_file, the pooler against PostgreSQL.
const db = usePostgres({
  databases: ['app'],
  roles: [
    { name: 'md5user', password: 'md5-secret', auth: 'md5' },
    { name: 'scramuser', password: 'scram secret', auth: 'scram-sha-256' },
    { name: 'passuser', password: 'plain-secret', auth: 'password' },
  ],
})

async function storedSecret(user: string): Promise<string> {
  const { rows } = await db.server.query('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [
    user,
  ])
  return rows[0].rolpassword
}

function sqlstateOf(err: unknown): string | undefined {
  return (err as { code?: string }).code
}

async function whoami(pooler: Pooler, user: string, password: string): Promise<string> {
  return withClient(
    { host: pooler.host, port: pooler.port, user, password, database: 'app' },
    async (c) => String((await c.query('SELECT current_user AS u')).rows[0].u),
  )
}

for (const authType of ['md5', 'scram-sha-256', 'plain'] as const) {
  describe(`auth_type ${authType} with passwords in auth_file`, () => {
    let pooler: Pooler
    before(async () => {
      const ini = writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: authType, pool_mode: 'transaction' },
        userlist: { md5user: 'md5-secret', scramuser: 'scram secret', passuser: 'plain-secret' },
      })
      pooler = await startPooler(ini)
    })
    after(() => pooler.stop())

    test('the right password logs in, and the pooler logs in to PostgreSQL with md5, SCRAM and cleartext', async () => {
      assert.equal(await whoami(pooler, 'md5user', 'md5-secret'), 'md5user')
      assert.equal(await whoami(pooler, 'scramuser', 'scram secret'), 'scramuser')
      assert.equal(await whoami(pooler, 'passuser', 'plain-secret'), 'passuser')
    })

    test("a wrong password gets 28P01 with PgBouncer's text", async () => {
      await assert.rejects(whoami(pooler, 'md5user', 'nope'), (err) => {
        assert.equal(sqlstateOf(err), '28P01')
        assert.equal((err as Error).message, 'password authentication failed for user "md5user"')
        return true
      })
    })

    test('an unknown user gets the same answer as a wrong password', async () => {
      await assert.rejects(whoami(pooler, 'nobody', 'x'), (err) => sqlstateOf(err) === '28P01')
    })
  })
}

describe('secrets copied from pg_authid into auth_file', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { auth_type: 'scram-sha-256', pool_mode: 'transaction' },
      userlist: {
        scramuser: await storedSecret('scramuser'),
        md5user: await storedSecret('md5user'),
      },
    })
    pooler = await startPooler(ini)
  })
  after(() => pooler.stop())

  test('a SCRAM secret works end to end: the ClientKey from the client logs in to PostgreSQL', async () => {
    assert.equal(await whoami(pooler, 'scramuser', 'scram secret'), 'scramuser')
    // Again, now that the pool knows the keys: a second connection and new servers still work.
    const clients = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({
          host: pooler.host,
          port: pooler.port,
          user: 'scramuser',
          password: 'scram secret',
          database: 'app',
        })
        await c.connect()
        await c.query('BEGIN')
        return c
      }),
    )
    for (const c of clients) {
      assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, 'scramuser')
      await c.query('COMMIT')
      await c.end()
    }
  })

  test('a SCRAM secret still refuses a wrong password', async () => {
    await assert.rejects(whoami(pooler, 'scramuser', 'wrong'), (err) => sqlstateOf(err) === '28P01')
  })

  test('an md5 hash in auth_file with auth_type scram-sha-256 cannot verify a client', async () => {
    await assert.rejects(
      whoami(pooler, 'md5user', 'md5-secret'),
      (err) => sqlstateOf(err) === '28P01',
    )
  })
})

describe('md5 hashes in auth_file', () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { auth_type: 'md5' },
      userlist: { md5user: await storedSecret('md5user') },
    })
    pooler = await startPooler(ini)
  })
  after(() => pooler.stop())

  test('an md5 hash works both ways: client md5 against it, and md5 login to PostgreSQL with it', async () => {
    assert.equal(await whoami(pooler, 'md5user', 'md5-secret'), 'md5user')
    await assert.rejects(whoami(pooler, 'md5user', 'wrong'), (err) => sqlstateOf(err) === '28P01')
  })
})

describe("trust, a forced server user, and PostgreSQL's own errors", () => {
  let pooler: Pooler
  before(async () => {
    const ini = writeIni({
      databases: {
        app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
        forced: `host=127.0.0.1 port=${db.server.port} dbname=app user=scramuser password='scram secret'`,
        badpass: `host=127.0.0.1 port=${db.server.port} dbname=app user=md5user password=wrong`,
      },
      pgbouncer: { auth_type: 'trust' },
    })
    pooler = await startPooler(ini)
  })
  after(() => pooler.stop())

  test('trust lets a user in without a password', async () => {
    assert.equal(await whoami(pooler, 'postgres', ''), 'postgres')
  })

  test('user= and password= in [databases] log every client in as that user', async () => {
    const user = await withClient(
      { host: pooler.host, port: pooler.port, user: 'postgres', database: 'forced' },
      async (c) => String((await c.query('SELECT current_user AS u')).rows[0].u),
    )
    assert.equal(user, 'scramuser')
  })

  test("a wrong server password relays PostgreSQL's 28P01 to the client", async () => {
    await assert.rejects(
      withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'badpass' },
        (c) => c.query('SELECT 1'),
      ),
      (err) => {
        assert.equal(sqlstateOf(err), '28P01')
        assert.match((err as Error).message, /password authentication failed for user "md5user"/)
        return true
      },
    )
  })

  test("an unknown database gets PgBouncer's error", async () => {
    await assert.rejects(
      withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'nosuch' },
        (c) => c.query('SELECT 1'),
      ),
      (err) => {
        assert.equal(sqlstateOf(err), '08P01')
        assert.equal((err as Error).message, 'no such database: nosuch')
        return true
      },
    )
  })

  test('an unsupported startup parameter is refused by name; application_name and options -c are honoured', async () => {
    await assert.rejects(
      withClient(
        {
          host: pooler.host,
          port: pooler.port,
          user: 'postgres',
          database: 'app',
          statement_timeout: 1000,
        },
        (c) => c.query('SELECT 1'),
      ),
      (err) => (err as Error).message === 'unsupported startup parameter: statement_timeout',
    )
    const rows = await withClient(
      {
        host: pooler.host,
        port: pooler.port,
        user: 'postgres',
        database: 'app',
        application_name: 'billing',
        options: '-c TimeZone=Asia/Tokyo',
      },
      async (c) =>
        (
          await c.query(
            "SELECT current_setting('application_name') AS a, current_setting('TimeZone') AS tz",
          )
        ).rows,
    )
    assert.deepEqual(rows, [{ a: 'billing', tz: 'Asia/Tokyo' }])
  })
})

// A SCRAM secret in auth_file logs in to PostgreSQL only with the ClientKey of
// a client's own SCRAM exchange: a trusted client brings none. PgBouncer tells
// the client `server login failed: wrong password type` (1.18 the same).
describe('a SCRAM secret without a SCRAM client', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(
      writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'trust', pool_mode: 'transaction' },
        userlist: { scramuser: await storedSecret('scramuser') },
      }),
    )
  })
  after(() => pooler.stop())

  test("the client gets PgBouncer's wrong password type", async () => {
    await assert.rejects(whoami(pooler, 'scramuser', ''), {
      message: 'server login failed: wrong password type',
    })
  })
})
