import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { type ErrorFields, RawConnection } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

// The user and database names of a startup packet reach auth_file, hba and
// PostgreSQL as the bytes the client sent, or the login is refused: never
// decoded into another name. Decoding with replacement made the user `u\xff`
// the role `u\uFFFD` (SCRAM's proof does not cover the name, so the other
// role's password let it in). PgBouncer passes the bytes through, and no role
// or database of a UTF8 cluster can have a name that is not UTF-8, so its
// logins fail there; pgbouncer-cluster refuses such a name at once, with
// PostgreSQL's own error for bytes invalid in UTF-8 (22021).
const REPLACED = 'u\uFFFD'
const db = usePostgres({
  databases: ['app', 'app\uFFFD'],
  roles: [{ name: 'üser' }, { name: REPLACED }],
})

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 1 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

for (const target of TARGETS) {
  describe(`${target.name}: names in the startup packet`, {
    skip: target.skip,
    timeout: 60_000,
  }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start({
        // The fallback database sends any other name on to PostgreSQL as it is.
        databases: {
          app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
          '*': `host=127.0.0.1 port=${db.server.port}`,
        },
        pgbouncer: { auth_type: 'scram-sha-256', pool_mode: 'transaction' },
        userlist: { üser: 'ü secret', [REPLACED]: 'replaced secret' },
      })
    })
    after(() => pooler.stop())

    /** Logs in; the error, or the bytes of current_user and current_database. */
    async function login(
      user: Buffer,
      database: Buffer,
      password: string,
    ): Promise<ErrorFields | { user: string; database: string }> {
      const conn = await RawConnection.connect(pooler.host, pooler.port)
      try {
        const refused = await conn.passwordLogin({ user, database }, password)
        if (refused !== null) return refused
        const [row] = await conn.query(
          "SELECT encode(convert_to(current_user, 'UTF8'), 'hex'), encode(convert_to(current_database(), 'UTF8'), 'hex')",
        )
        return { user: row![0]!, database: row![1]! }
      } finally {
        conn.destroy()
      }
    }

    test('a UTF-8 user name reaches auth_file and PostgreSQL byte for byte', async () => {
      const got = await login(Buffer.from('üser'), Buffer.from('app'), 'ü secret')
      assert.deepEqual(got, {
        user: Buffer.from('üser').toString('hex'),
        database: Buffer.from('app').toString('hex'),
      })
    })

    test('a user name that is not UTF-8 never becomes the role its decoding names', async () => {
      const got = await login(Buffer.from([0x75, 0xff]), Buffer.from('app'), 'replaced secret')
      assert.ok('severity' in got, `logged in as ${JSON.stringify(got)}`)
      assert.equal(got.severity, 'FATAL')
      if (target.name === 'pgbouncer-cluster') {
        assert.equal(got.code, '22021')
        assert.equal(got.message, 'invalid byte sequence for encoding "UTF8": 0xff')
      }
    })

    test('a database name that is not UTF-8 never reaches the database its decoding names', async () => {
      const got = await login(
        Buffer.from('üser'),
        Buffer.from([0x61, 0x70, 0x70, 0xff]),
        'ü secret',
      )
      assert.ok('severity' in got, `connected to ${JSON.stringify(got)}`)
      assert.equal(got.severity, 'FATAL')
      if (target.name === 'pgbouncer-cluster') {
        assert.equal(got.code, '22021')
        assert.equal(got.message, 'invalid byte sequence for encoding "UTF8": 0xff')
      }
    })
  })
}
