import assert from 'node:assert/strict'
import { chmodSync } from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, tempDir, until, writeIni } from './support.ts'

// The console's process commands beyond PAUSE and KILL db: DISABLE/ENABLE,
// WAIT_CLOSE, SUSPEND/RESUME, KILL of everything, SHOW SOCKETS. Each body
// runs against PgBouncer 1.18 too where 1.18 has the command (it has all but
// KILL without a database, SHOW STATE and 1.25's SHOW SOCKETS columns).

const db = usePostgres({ databases: ['app', 'other'] })

type Start = (spec: IniSpec) => Promise<Pooler>
const ours: Start = (spec) => startPooler(writeIni(spec), { workers: 2 })
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  { name: 'pgbouncer-cluster', start: ours, skip: false },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

const spec = (extra: Record<string, string | number> = {}): IniSpec => ({
  databases: {
    app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
    other: `host=127.0.0.1 port=${db.server.port} dbname=other`,
  },
  pgbouncer: {
    pool_mode: 'transaction',
    admin_users: 'admin',
    query_wait_timeout: 30,
    suspend_timeout: 10,
    ...extra,
  },
  userlist: { postgres: '', admin: '' },
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
type PgError = Error & { code?: string }

for (const target of TARGETS) {
  const ourOwn = target.name === 'pgbouncer-cluster'
  describe(`console process commands (${target.name})`, {
    skip: target.skip,
    timeout: 90_000,
  }, () => {
    let pooler: Pooler
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

    async function databaseRow(name: string): Promise<Record<string, unknown>> {
      const { rows } = await admin.query('SHOW DATABASES')
      const row = rows.find((r) => r.name === name)
      assert.ok(row, `SHOW DATABASES lists ${name}`)
      return row
    }

    test('DISABLE refuses new clients of the database after their login; ENABLE lets them in', async () => {
      const connected = await connect('app')
      assert.equal((await admin.query('DISABLE app')).command, 'DISABLE')
      assert.equal(Number((await databaseRow('app')).disabled), 1)
      const refused = pooler.client({ database: 'app' })
      refused.on('error', () => {})
      await assert.rejects(refused.connect(), { message: 'database "app" is disabled' })
      // The clients already there go on; other databases take new ones.
      assert.equal((await connected.query('SELECT 1 AS one')).rows[0].one, 1)
      const other = await connect('other')
      assert.equal((await other.query('SELECT 2 AS two')).rows[0].two, 2)
      assert.equal((await admin.query('ENABLE app')).command, 'ENABLE')
      assert.equal(Number((await databaseRow('app')).disabled), 0)
      const again = await connect('app')
      assert.equal((await again.query('SELECT 3 AS three')).rows[0].three, 3)
      await assert.rejects(admin.query('DISABLE nosuch'), { message: 'no such database: nosuch' })
      await assert.rejects(admin.query('DISABLE'), { message: 'a database is required' })
      await assert.rejects(admin.query('DISABLE pgbouncer'), {
        message: 'cannot disable admin db: pgbouncer',
      })
    })

    test('WAIT_CLOSE waits until the servers RECONNECT marked have closed', async () => {
      const inTx = await connect('app')
      await inTx.query('BEGIN')
      await inTx.query('SELECT 1')
      await admin.query('RECONNECT app')
      let waited = false
      const waiting = admin.query('WAIT_CLOSE app').then((r) => {
        waited = true
        return r.command
      })
      await sleep(500)
      assert.equal(waited, false, 'WAIT_CLOSE waits for the open transaction')
      await inTx.query('COMMIT')
      // node-postgres keeps the tag's first word: WAIT_CLOSE reads as WAIT.
      assert.equal(await waiting, 'WAIT')
      // Nothing marked: it answers at once.
      assert.equal((await admin.query('WAIT_CLOSE')).command, 'WAIT')
      await assert.rejects(admin.query('WAIT_CLOSE nosuch'), {
        message: 'no such database: nosuch',
      })
    })

    test('SUSPEND stops every client and server until RESUME; new connections wait', async () => {
      const c = await connect('app')
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
      assert.equal((await admin.query('SUSPEND')).command, 'SUSPEND')
      if (ourOwn) {
        const { rows } = await admin.query('SHOW STATE')
        assert.deepEqual(Object.fromEntries(rows.map((r) => [r.key, r.value])), {
          active: 'no',
          paused: 'no',
          suspended: 'yes',
        })
      }
      await assert.rejects(admin.query('SUSPEND'), { message: 'already suspended/paused' })
      await assert.rejects(admin.query('PAUSE'), { message: 'already suspended/paused' })
      let answered = false
      const held = c.query('SELECT 42 AS n').then((r) => {
        answered = true
        return r.rows[0].n
      })
      let connected = false
      const late = pooler.client({ database: 'app' })
      late.on('error', () => {})
      clients.push(late)
      const lateConnect = late.connect().then(() => {
        connected = true
      })
      await sleep(700)
      assert.equal(answered, false, 'a suspended client is not read')
      assert.equal(connected, false, 'a new connection waits')
      assert.equal((await admin.query('RESUME')).command, 'RESUME')
      assert.equal(await held, 42)
      await lateConnect
      assert.equal((await late.query('SELECT 7 AS n')).rows[0].n, 7)
      await assert.rejects(admin.query('RESUME'), { message: 'pooler is not paused/suspended' })
    })

    test('KILL without a database drops every client and pauses every database', {
      skip: !ourOwn && 'PgBouncer 1.18 needs a database after KILL',
    }, async () => {
      const a = await connect('app')
      const o = await connect('other')
      await a.query('BEGIN')
      await o.query('BEGIN')
      const lost = (c: pg.Client) =>
        new Promise<string>((resolve) => c.once('error', (e: Error) => resolve(e.message)))
      const gone = Promise.all([lost(a), lost(o)])
      assert.equal((await admin.query('KILL')).command, 'KILL')
      assert.deepEqual(await gone, ['database removed', 'database removed'])
      assert.equal(Number((await databaseRow('app')).paused), 1)
      assert.equal(Number((await databaseRow('other')).paused), 1)
      await admin.query('RESUME app')
      await admin.query('RESUME other')
      const again = await connect('app')
      assert.equal((await again.query('SELECT 1 AS one')).rows[0].one, 1)
    })

    test('SHOW SOCKETS lists clients and servers with their socket states; ACTIVE_SOCKETS and MEM answer', {
      skip: !ourOwn && "PgBouncer 1.18's SHOW SOCKETS lacks 1.23's columns",
    }, async () => {
      const c = await connect('app')
      await c.query('BEGIN')
      await c.query('SELECT 1')
      const res = await admin.query('SHOW SOCKETS')
      const names = res.fields.map((f) => f.name)
      assert.deepEqual(names.slice(-7), [
        'recv_pos',
        'pkt_pos',
        'pkt_remain',
        'send_pos',
        'send_remain',
        'pkt_avail',
        'send_avail',
      ])
      assert.equal(names[4], 'state')
      const linked = res.rows.find((r) => r.type === 'C' && r.database === 'app' && r.link !== '')
      assert.ok(linked, 'the client in its transaction')
      assert.equal(linked.state, 'cl_active')
      const server = res.rows.find((r) => r.type === 'S' && r.ptr === linked.link)
      assert.ok(server, 'its server')
      assert.equal(server.state, 'sv_active')
      // As in PgBouncer, clients and servers take their ids from one counter (per worker here).
      const ids = res.rows.map((r) => Number(r.id))
      assert.equal(new Set(ids).size, ids.length, 'ids are unique')
      assert.equal(Math.floor(Number(server.id) / 2 ** 24), Math.floor(Number(linked.id) / 2 ** 24))
      await c.query('COMMIT')
      // Only sockets with bytes queued for writing: none while all is quiet.
      const active = await admin.query('SHOW ACTIVE_SOCKETS')
      assert.deepEqual(
        active.fields.map((f) => f.name),
        names,
      )
      assert.equal(active.rows.length, 0)
      const mem = await admin.query('SHOW MEM')
      assert.deepEqual(
        mem.fields.map((f) => f.name),
        ['name', 'size', 'used', 'free', 'memtotal'],
      )
      await assert.rejects(admin.query('SHOW FDS'), {
        message: 'SHOW FDS is not supported by pgbouncer-cluster',
      })
    })

    test('the last console session leaving a SUSPEND resumes the pooler', async () => {
      const c = await connect('app')
      assert.equal((await admin.query('SUSPEND')).command, 'SUSPEND')
      const held = c.query('SELECT 5 AS n')
      await admin.end()
      assert.equal((await held).rows[0].n, 5)
      admin = await connect('pgbouncer', 'admin')
      await assert.rejects(admin.query('RESUME'), { message: 'pooler is not paused/suspended' })
    })
  })
}

// PgBouncer lets its own OS user into the console as `pgbouncer` over the unix
// socket, checked with getpeereid(). Node cannot ask for a peer's uid: the
// pooler grants it when the socket is private to its user. PgBouncer runs as
// `postgres` here while the tests run as root, so only ours is tested.
describe('the console user pgbouncer on a private unix socket', { timeout: 60_000 }, () => {
  let pooler: Pooler
  let dir: string

  before(async () => {
    dir = tempDir() // mode 0700, ours
    pooler = await startPooler(
      writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'md5', unix_socket_dir: dir, admin_users: 'someone' },
        userlist: { someone: 'secret' },
      }),
      { workers: 1 },
    )
  })
  after(async () => {
    await pooler.stop()
  })

  const consoleClient = () =>
    new pg.Client({ host: dir, port: pooler.port, user: 'pgbouncer', database: 'pgbouncer' })

  test('gets in without a password and may run commands', async () => {
    const c = consoleClient()
    await c.connect()
    try {
      assert.equal((await c.query('SET default_pool_size = 4')).command, 'SET')
      assert.equal((await c.query('SHOW STATE')).rows[0].key, 'active')
    } finally {
      await c.end()
    }
  })

  test('not when others may reach the socket, nor over TCP', async () => {
    chmodSync(dir, 0o755)
    chmodSync(`${dir}/.s.PGSQL.${pooler.port}`, 0o777)
    try {
      const c = consoleClient()
      c.on('error', () => {})
      // md5 with no such user in auth_file: the password exchange fails.
      const err = (await c.connect().then(
        () => null,
        (e: unknown) => e as PgError,
      )) as PgError | null
      await c.end().catch(() => {})
      assert.ok(err !== null, 'refused')
      const tcp = pooler.client({ user: 'pgbouncer', database: 'pgbouncer', password: 'x' })
      tcp.on('error', () => {})
      await assert.rejects(tcp.connect())
    } finally {
      chmodSync(dir, 0o700)
    }
  })
})
