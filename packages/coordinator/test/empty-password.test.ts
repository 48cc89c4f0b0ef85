import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type ErrorFields, RawConnection } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// An empty password logs nobody in, whichever side holds it: an auth_file
// entry `"emptyu" ""`, an auth_query answer of '', or a client that sends ''.
// PgBouncer's check_client_passwd refuses an empty stored password with the
// error a wrong password gets, and a client's empty PasswordMessage with
// "empty password returned by client". The client here is hand-made
// (raw-protocol.ts): libpq and pg refuse to send an empty password at all.
const db = usePostgres({
  databases: ['app'],
  roles: [{ name: 'emptyu' }, { name: 'fullu' }, { name: 'queried' }],
})

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 1 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

async function login(
  pooler: Pooler,
  user: string,
  password: string,
  database = 'app',
): Promise<ErrorFields | null> {
  const conn = await RawConnection.connect(pooler.host, pooler.port)
  try {
    return await conn.passwordLogin({ user, database }, password)
  } finally {
    conn.destroy()
  }
}

function refused(result: ErrorFields | null, what: string): ErrorFields {
  assert.ok(result !== null, `${what} logged in`)
  assert.equal(result.severity, 'FATAL', `${what}: ${JSON.stringify(result)}`)
  return result
}

for (const authType of ['plain', 'md5', 'scram-sha-256'] as const) {
  for (const target of TARGETS) {
    // PgBouncer 1.18 lets the empty auth_file password in under SCRAM: it builds
    // its ad-hoc secret from the empty text (saslprep refuses it, and the raw
    // text is used). It refuses it under plain and md5, which the test checks.
    const skip =
      target.skip ||
      (target.name === 'PgBouncer' && authType === 'scram-sha-256'
        ? 'PgBouncer 1.18 accepts an empty auth_file password under SCRAM'
        : false)
    describe(`${target.name}, auth_type ${authType}`, { skip, timeout: 60_000 }, () => {
      let pooler: Pooler
      before(async () => {
        pooler = await target.start({
          databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
          pgbouncer: { auth_type: authType },
          userlist: { emptyu: '', fullu: 'full secret' },
        })
      })
      after(() => pooler.stop())

      test('an empty auth_file password is no password: refused as a wrong password is', async () => {
        assert.equal(await login(pooler, 'fullu', 'full secret'), null, 'the right password')
        const wrong = refused(await login(pooler, 'fullu', 'wrong'), 'a wrong password')
        for (const given of ['', 'anything']) {
          const err = refused(await login(pooler, 'emptyu', given), `emptyu with '${given}'`)
          if (given === '' && authType === 'plain') continue // the client's own empty password, below
          assert.equal(err.code, wrong.code)
          assert.equal(err.message, wrong.message.replace('"fullu"', '"emptyu"'))
        }
      })

      test("a client's empty password is refused", async () => {
        for (const user of ['fullu', 'emptyu', 'nobody']) {
          const err = refused(await login(pooler, user, ''), `${user} with an empty password`)
          if (authType === 'plain') {
            // The PasswordMessage itself is empty: refused before any check, as PgBouncer does.
            assert.equal(err.code, '08P01')
            assert.equal(err.message, 'empty password returned by client')
          }
        }
      })
    })
  }
}

for (const target of TARGETS) {
  describe(`${target.name}: auth_query answers an empty password`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: {
          auth_type: 'md5',
          auth_user: 'postgres',
          auth_query: "SELECT rolname, ''::text FROM pg_authid WHERE rolname = $1",
        },
        // PostgreSQL lets postgres in by trust; fullu shows a login still works.
        userlist: { postgres: '', fullu: 'full secret' },
      })
    })
    after(() => pooler.stop())

    test('a user whose secret auth_query gives as empty does not log in', async () => {
      assert.equal(await login(pooler, 'fullu', 'full secret'), null)
      const wrong = refused(await login(pooler, 'fullu', 'wrong'), 'a wrong password')
      for (const given of ['', 'anything']) {
        const err = refused(await login(pooler, 'queried', given), `queried with '${given}'`)
        assert.equal(err.code, wrong.code)
        assert.equal(err.message, wrong.message.replace('"fullu"', '"queried"'))
      }
    })
  })
}
