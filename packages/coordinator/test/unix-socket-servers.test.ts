import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { sendCancel } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Server connections over PostgreSQL's unix socket, as PgBouncer makes them: a
// host starting with '/' is the socket's directory, an entry without a host
// uses unix_socket_dir's, and a host list may mix sockets and TCP hosts. The
// same bodies run against PgBouncer 1.18, which runs as the postgres OS user
// and reaches the harness's socket directory as its owner.

const db = usePostgres({ tls: true })
const run = promisify(execFile)
const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname
const TEST_TIMEOUT = 30_000

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 1 }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(): IniSpec {
  const { socketDir, port } = db.server
  return {
    databases: {
      sock: `host=${socketDir} port=${port} dbname=postgres`,
      nohost: `port=${port} dbname=postgres`,
      mixed: `host=${socketDir},127.0.0.1 port=${port} dbname=postgres`,
    },
    pgbouncer: {
      pool_mode: 'session',
      admin_users: 'postgres',
      unix_socket_dir: socketDir,
      // TLS is asked for over TCP; over a unix socket neither pooler uses it.
      server_tls_sslmode: 'require',
    },
  }
}

/** What PostgreSQL sees of the connection: its client address (null over a socket) and TLS. */
async function peerOf(c: pg.Client): Promise<{ addr: string | null; ssl: boolean }> {
  const { rows } = await c.query(
    'SELECT host(inet_client_addr()) AS addr, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
  )
  return { addr: rows[0].addr, ssl: rows[0].ssl }
}

for (const target of TARGETS) {
  describe(`${target.name}: servers over a unix socket`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec())
    })
    after(() => pooler?.stop())

    const admin = <T>(fn: (c: pg.Client) => Promise<T>) =>
      withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
        fn,
      )

    test('host=<directory> reaches PostgreSQL through <directory>/.s.PGSQL.<port>, without TLS', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'sock' },
        async (c) => {
          assert.deepEqual(await peerOf(c), { addr: null, ssl: false })
          const servers = await admin(async (a) => (await a.query('SHOW SERVERS')).rows)
          const row = servers.find((r) => r.database === 'sock')
          assert.ok(row, 'no server of sock in SHOW SERVERS')
          assert.equal(row.addr, 'unix')
          assert.equal(Number(row.port), db.server.port)
          assert.equal(row.local_addr, 'unix')
          assert.equal(
            Number(row.remote_pid),
            Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p),
          )
        },
      )
    })

    test('an entry without host= uses the socket in unix_socket_dir; SHOW DATABASES shows no host', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'nohost' },
        async (c) => {
          assert.deepEqual(await peerOf(c), { addr: null, ssl: false })
        },
      )
      const row = await admin(async (a) =>
        (await a.query('SHOW DATABASES')).rows.find((r) => r.name === 'nohost'),
      )
      assert.equal(row.host, null)
      assert.equal(Number(row.port), db.server.port)
    })

    test('a host list mixes the socket and a TCP host: one server over each, TLS on TCP only', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const clients = [0, 1].map(() => pooler.client({ database: 'mixed' }))
      try {
        await Promise.all(clients.map((c) => c.connect()))
        const peers = await Promise.all(clients.map(peerOf))
        const sorted = peers.sort((x, y) => String(x.addr).localeCompare(String(y.addr)))
        assert.deepEqual(sorted, [
          { addr: '127.0.0.1', ssl: true },
          { addr: null, ssl: false },
        ])
        const addrs = await admin(async (a) =>
          (await a.query('SHOW SERVERS')).rows
            .filter((r) => r.database === 'mixed')
            .map((r) => r.addr)
            .sort(),
        )
        assert.deepEqual(addrs, ['127.0.0.1', 'unix'])
      } finally {
        await Promise.all(clients.map((c) => c.end().catch(() => {})))
      }
    })

    test('a cancel for a server over the socket goes through the socket too', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const c = pooler.client({ database: 'sock' })
      await c.connect()
      try {
        const started = Date.now()
        const running = c.query('SELECT pg_sleep(20)').then(
          () => null,
          (e: Error & { code?: string }) => e,
        )
        // The query must be running before the cancel: PostgreSQL ignores one for an idle backend.
        for (let i = 0; i < 100; i++) {
          const { rows } = await db.server.query(
            "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' AND state = 'active'",
          )
          if (rows.length > 0) break
          await new Promise((r) => setTimeout(r, 50))
        }
        const key = c as unknown as { processID: number; secretKey: number }
        await sendCancel(pooler.host, pooler.port, key.processID, key.secretKey)
        const err = await running
        assert.ok(err !== null, 'the query was not cancelled')
        assert.equal(err.code, '57014')
        assert.ok(Date.now() - started < 15_000, 'the query ran to its end')
      } finally {
        await c.end().catch(() => {})
      }
    })
  })
}

// PgBouncer 1.18 fails such a server connection too ("unix socket dir not
// configured"), but its clients wait for query_wait_timeout; here the login
// gets the reason at once.
describe('pgbouncer-cluster: no host and no unix_socket_dir', () => {
  const empty: IniSpec = {
    databases: { nohost: `port=${5432} dbname=postgres` },
    pgbouncer: { unix_socket_dir: '' },
  }

  test('--check says where each entry goes, and warns that this one has nowhere to go', async () => {
    const { socketDir, port } = db.server
    const ini = writeIni({
      databases: {
        sock: `host=${socketDir} port=${port} dbname=postgres`,
        mixed: `host=${socketDir},127.0.0.1 port=${port} dbname=app`,
        ...empty.databases,
      },
      pgbouncer: empty.pgbouncer,
    })
    const { stdout } = await run(process.execPath, [BIN, '--check', ini])
    assert.match(
      stdout,
      new RegExp(`sock -> unix socket ${socketDir}/\\.s\\.PGSQL\\.${port}, dbname postgres`),
    )
    assert.match(
      stdout,
      new RegExp(
        `mixed -> unix socket ${socketDir}/\\.s\\.PGSQL\\.${port}, 127\\.0\\.0\\.1:${port}, dbname app`,
      ),
    )
    assert.match(stdout, /nohost -> unix_socket_dir \(empty: no server\), dbname postgres/)
    assert.match(stdout, /warning: .*database nohost has no host.*unix_socket_dir is empty/)
  })

  test('a login gets "pgbouncer cannot connect to server" with the reason, at once', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const pooler = await startPooler(writeIni(empty), { workers: 1 })
    try {
      const started = Date.now()
      const err = await withClient(
        { host: pooler.host, port: pooler.port, user: 'postgres', database: 'nohost' },
        async () => null,
      ).then(
        () => null,
        (e: Error & { code?: string }) => e,
      )
      assert.ok(err !== null, 'the login succeeded')
      assert.equal(
        err.message,
        'pgbouncer cannot connect to server: the database has no host and unix_socket_dir is empty',
      )
      assert.equal(err.code, '08006')
      assert.ok(Date.now() - started < 5000)
    } finally {
      await pooler.stop()
    }
  })
})
