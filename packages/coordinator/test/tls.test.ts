import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import {
  findPgTool,
  type PgServer,
  startPostgres,
  usePostgres,
} from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { sendCancel, startupPacket } from './raw-protocol.ts'
import { type Pooler, startPooler, withClient, writeIni } from './support.ts'

// TLS on both sides. PostgreSQL runs with ssl=on and a self-signed
// certificate for 127.0.0.1; the pooler presents the same certificate to its
// clients, so a client can check it with that certificate as its root.
const db = usePostgres({ tls: true })
const run = promisify(execFile)
const psql = findPgTool('psql')

const certDir = mkdtempSync(join(tmpdir(), 'pgbc-tls-'))
process.on('exit', () => rmSync(certDir, { recursive: true, force: true }))

/** A self-signed client certificate; it is also the CA that vouches for itself. */
async function clientCert(
  name = 'client',
): Promise<{ key: string; cert: string; certPath: string }> {
  const keyPath = join(certDir, `${name}.key`)
  const certPath = join(certDir, `${name}.crt`)
  await run('openssl', [
    ...['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
    ...['-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=postgres'],
  ])
  return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8'), certPath }
}

function serverCert(): { certPath: string; keyPath: string; ca: string } {
  const files = db.server.tls!
  return { ...files, ca: readFileSync(files.certPath, 'utf8') }
}

function database(server: PgServer = db.server): Record<string, string> {
  return { postgres: `host=127.0.0.1 port=${server.port} dbname=postgres` }
}

function connection(pooler: Pooler, ssl: pg.ClientConfig['ssl']): pg.ClientConfig {
  return { host: pooler.host, port: pooler.port, user: 'postgres', database: 'postgres', ssl }
}

/** A pooler that shows PostgreSQL's certificate to its clients; its servers in plain text. */
function clientTlsPooler(settings: Record<string, string>): Promise<Pooler> {
  const { certPath, keyPath } = serverCert()
  return startPooler(
    writeIni({
      databases: database(),
      pgbouncer: {
        client_tls_cert_file: certPath,
        client_tls_key_file: keyPath,
        server_tls_sslmode: 'disable',
        ...settings,
      },
    }),
  )
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

describe('client_tls_sslmode = require', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await clientTlsPooler({
      pool_mode: 'transaction',
      default_pool_size: '4',
      client_tls_sslmode: 'require',
      admin_users: 'postgres',
    })
  })
  after(() => pooler.stop())

  test('a client that checks our certificate gets a TLS connection and its answers', async () => {
    const { ca } = serverCert()
    await withClient(connection(pooler, { ca }), async (c) => {
      const stream = (c as unknown as { connection: { stream: { encrypted?: boolean } } })
        .connection.stream
      assert.equal(stream.encrypted, true)
      assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1)
    })
  })

  test("SHOW CLIENTS gives each client's TLS protocol and cipher, as PgBouncer does", async () => {
    const { ca } = serverCert()
    const admin = { ...connection(pooler, { ca }), database: 'pgbouncer' }
    const rows = await withClient(admin, async (c) => (await c.query('SHOW CLIENTS')).rows)
    assert.ok(rows.length > 0)
    for (const row of rows) assert.match(row.tls, /^TLSv1\.[23]\/[A-Z0-9_-]+/)
  })

  test('a client in plain text gets PgBouncer\'s FATAL "SSL required" (08P01)', async () => {
    await assert.rejects(
      withClient(connection(pooler, false), (c) => c.query('SELECT 1')),
      (err: Error & { code?: string }) => {
        assert.equal(err.message, 'SSL required')
        assert.equal(err.code, '08P01')
        return true
      },
    )
  })

  test('plain-text bytes sent right behind SSLRequest are refused, as a man-in-the-middle could have put them there', async () => {
    const sslRequest = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
    const answer = await new Promise<Buffer>((resolve, reject) => {
      const socket = net.connect(pooler.port, pooler.host)
      const chunks: Buffer[] = []
      socket.on('data', (b) => chunks.push(b))
      socket.on('error', reject)
      socket.on('close', () => resolve(Buffer.concat(chunks)))
      socket.write(Buffer.concat([sslRequest, startupPacket({ user: 'postgres' })]))
    })
    assert.equal(answer.subarray(0, 1).toString(), 'S')
    assert.match(answer.toString('latin1'), /received unencrypted data after SSL request/)
  })

  test('psql with sslmode=verify-full connects; with sslmode=disable it is refused', {
    skip: skipWithout('psql', psql),
  }, async () => {
    const env = { ...process.env, PGSSLROOTCERT: serverCert().certPath }
    const conninfo = (mode: string) =>
      `host=127.0.0.1 port=${pooler.port} user=postgres dbname=postgres sslmode=${mode}`
    const ok = await run(psql!, [conninfo('verify-full'), '-Atc', 'SELECT 41 + 1'], { env })
    assert.equal(ok.stdout.trim(), '42')
    await assert.rejects(run(psql!, [conninfo('disable'), '-Atc', 'SELECT 1'], { env }), (err) => {
      assert.match((err as { stderr: string }).stderr, /FATAL: {2}SSL required/)
      return true
    })
  })

  test('30 TLS clients in transaction mode: every result is the client’s own, and a large result arrives whole', async () => {
    const { ca } = serverCert()
    const clients = Array.from({ length: 30 }, () => new pg.Client(connection(pooler, { ca })))
    await Promise.all(clients.map((c) => c.connect()))
    try {
      await Promise.all(
        clients.map(async (c, i) => {
          for (let q = 0; q < 40; q++) {
            const token = `c${i}-q${q}`
            const { rows } = await c.query('SELECT $1::text AS token', [token])
            assert.equal(rows[0].token, token)
          }
        }),
      )
      // About 10 MB: many TLS records, and writes that queue on both sides.
      const big =
        "SELECT string_agg(md5(g::text) || repeat('x', 300), ',') AS s FROM generate_series(1, 30000) g"
      const through = (await clients[0]!.query(big)).rows[0].s as string
      const direct = (await db.server.query(big)).rows[0].s as string
      assert.equal(through.length, direct.length)
      assert.equal(sha256(through), sha256(direct))
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
  })
})

describe('client_tls_sslmode = verify-ca', () => {
  let pooler: Pooler
  let client: { key: string; cert: string; certPath: string }
  before(async () => {
    client = await clientCert()
    pooler = await clientTlsPooler({
      client_tls_sslmode: 'verify-ca',
      client_tls_ca_file: client.certPath,
    })
  })
  after(() => pooler.stop())

  test('a client with a certificate the CA signed logs in; one without, or with another, is refused', async () => {
    const ok = await withClient(
      connection(pooler, { rejectUnauthorized: false, key: client.key, cert: client.cert }),
      async (c) => (await c.query('SELECT 7 AS n')).rows[0].n,
    )
    assert.equal(ok, 7)
    await assert.rejects(
      withClient(connection(pooler, { rejectUnauthorized: false }), (c) => c.query('SELECT 1')),
    )
    // A certificate of the right shape that client_tls_ca_file does not vouch for.
    const stranger = await clientCert('stranger')
    await assert.rejects(
      withClient(
        connection(pooler, { rejectUnauthorized: false, key: stranger.key, cert: stranger.cert }),
        (c) => c.query('SELECT 1'),
      ),
    )
  })
})

describe('auth_type = cert', () => {
  let pooler: Pooler
  let client: { key: string; cert: string; certPath: string }
  before(async () => {
    client = await clientCert()
    pooler = await clientTlsPooler({
      auth_type: 'cert',
      client_tls_sslmode: 'verify-full',
      client_tls_ca_file: client.certPath,
    })
  })
  after(() => pooler.stop())

  test('the certificate’s CommonName is the user: postgres gets in, another user with it does not', async () => {
    const ssl = { rejectUnauthorized: false, key: client.key, cert: client.cert }
    const who = await withClient(
      connection(pooler, ssl),
      async (c) => (await c.query('SELECT current_user AS u')).rows[0].u,
    )
    assert.equal(who, 'postgres')
    await assert.rejects(
      withClient({ ...connection(pooler, ssl), user: 'someone_else' }, (c) => c.query('SELECT 1')),
      (err: Error & { code?: string }) => {
        assert.equal(err.message, 'certificate authentication failed')
        assert.equal(err.code, '08P01')
        return true
      },
    )
  })
})

describe('server_tls_sslmode', () => {
  const poolers: Pooler[] = []
  after(() => Promise.all(poolers.map((p) => p.stop())))
  async function pooler(settings: Record<string, string>, server?: PgServer): Promise<Pooler> {
    const p = await startPooler(
      writeIni({
        databases: database(server),
        pgbouncer: { pool_mode: 'transaction', admin_users: 'postgres', ...settings },
      }),
      { workers: 1 },
    )
    poolers.push(p)
    return p
  }
  const sslOfBackend = 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'
  const showServers = (p: Pooler) =>
    withClient(
      { ...connection(p, false), database: 'pgbouncer' },
      async (c) => (await c.query('SHOW SERVERS')).rows,
    )

  test('verify-full with PostgreSQL’s certificate as CA: the server connections are in TLS', async () => {
    const p = await pooler({
      server_tls_sslmode: 'verify-full',
      server_tls_ca_file: serverCert().certPath,
    })
    await withClient(connection(p, false), async (c) => {
      assert.equal((await c.query(sslOfBackend)).rows[0].ssl, true)
      const servers = (await c.query('SELECT 1')) && (await showServers(p))
      assert.ok(servers.length > 0)
      for (const row of servers) assert.match(row.tls, /^TLSv1\.3\/TLS_[A-Z0-9_]+\/ECDH=/)
      const big = "SELECT string_agg(g::text, ',') AS s FROM generate_series(1, 200000) g"
      assert.equal(
        sha256((await c.query(big)).rows[0].s),
        sha256((await db.server.query(big)).rows[0].s),
      )
    })
  })

  test('prefer (the default) uses TLS when PostgreSQL offers it; disable does not', async () => {
    const preferring = await pooler({})
    await withClient(connection(preferring, false), async (c) => {
      assert.equal((await c.query(sslOfBackend)).rows[0].ssl, true)
    })
    const plain = await pooler({ server_tls_sslmode: 'disable' })
    await withClient(connection(plain, false), async (c) => {
      assert.equal((await c.query(sslOfBackend)).rows[0].ssl, false)
    })
  })

  test('a certificate the CA did not sign fails the login with the reason, not a hang', async () => {
    const other = await clientCert()
    const p = await pooler({ server_tls_sslmode: 'verify-ca', server_tls_ca_file: other.certPath })
    await assert.rejects(
      withClient(connection(p, false), (c) => c.query('SELECT 1')),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, '08006')
        assert.match(err.message, /self-signed certificate/)
        assert.doesNotMatch(err.message, /--use-system-ca/)
        return true
      },
    )
  })

  test('require against a PostgreSQL without TLS: "server refused SSL"; prefer goes on in plain text', async () => {
    const plainServer = await startPostgres()
    try {
      const requiring = await pooler({ server_tls_sslmode: 'require' }, plainServer)
      await assert.rejects(
        withClient(connection(requiring, false), (c) => c.query('SELECT 1')),
        /server refused SSL/,
      )
      const preferring = await pooler({ server_tls_sslmode: 'prefer' }, plainServer)
      await withClient(connection(preferring, false), async (c) => {
        assert.equal((await c.query(sslOfBackend)).rows[0].ssl, false)
      })
    } finally {
      await plainServer.stop()
    }
  })

  test('a cancel reaches a query running on a TLS server connection (57014), and the server is reused', async () => {
    const p = await pooler({
      server_tls_sslmode: 'verify-full',
      server_tls_ca_file: serverCert().certPath,
    })
    await withClient(connection(p, false), async (c) => {
      const sql = 'SELECT pg_sleep(10) /* cancel over TLS */'
      const running = c.query(sql).then(
        () => null,
        (err: Error & { code?: string }) => err,
      )
      for (let i = 0; i < 250; i++) {
        const { rows } = await db.server.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
          [sql],
        )
        if (rows[0].n > 0) break
        await new Promise((r) => setTimeout(r, 20))
      }
      const key = c as unknown as { processID: number; secretKey: number }
      await sendCancel(p.host, p.port, key.processID, key.secretKey)
      const err = await running
      assert.equal(err?.code, '57014')
      const { rows } = await c.query(`SELECT 1 AS n, (${sslOfBackend}) AS ssl`)
      assert.deepEqual(rows[0], { n: 1, ssl: true })
    })
  })

  test('a TLS server connection PostgreSQL ends is noticed: the next query gets a new one', async () => {
    const p = await pooler({ server_tls_sslmode: 'require' })
    await withClient(connection(p, false), async (c) => {
      const first = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid
      await db.server.query('SELECT pg_terminate_backend($1)', [first])
      // Transaction mode: the killed server was idle in the pool; the pooler
      // drops it and the next query runs on a fresh TLS connection.
      await new Promise((r) => setTimeout(r, 200))
      const { rows } = await c.query(`SELECT pg_backend_pid() AS pid, (${sslOfBackend}) AS ssl`)
      assert.notEqual(rows[0].pid, first)
      assert.equal(rows[0].ssl, true)
    })
  })
})
