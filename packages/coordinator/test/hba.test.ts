import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { RawConnection, startupPacket } from './raw-protocol.ts'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// auth_type = hba through real clients, against pgbouncer-cluster and, where
// PgBouncer 1.18 has the same feature, against it with the same files.
const TEST_TIMEOUT = 30_000
const db = usePostgres({
  tls: true,
  roles: [{ name: 'alice' }, { name: 'bob' }, { name: 'dave' }, { name: 'eve' }],
  databases: ['app', 'closed'],
})
const run = promisify(execFile)
const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname

/** A directory the postgres OS user can read too (PgBouncer runs as it). */
function sharedDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-hba-'))
  chmodSync(dir, 0o755)
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function writeShared(dir: string, name: string, text: string): string {
  const path = join(dir, name)
  writeFileSync(path, text)
  chmodSync(path, 0o644)
  return path
}

const HBA = [
  '# TYPE    DATABASE   USER          ADDRESS                 METHOD',
  'local     all        all                                   trust',
  'host      closed     all           127.0.0.1/32            reject',
  'host      "app"      alice         127.0.0.1/32            md5',
  'host      app        bob           127.0.0.1 255.255.255.255 password',
  'host      sameuser   @staff.txt    127.0.0.0/8             trust',
  'host      app        dave          ::1/128                 trust',
].join('\n')

function spec(hbaFile: string, extra: Record<string, string | number> = {}): IniSpec {
  const target = `host=127.0.0.1 port=${db.server.port}`
  return {
    databases: {
      app: `${target} dbname=app`,
      closed: `${target} dbname=closed`,
      dave: `${target} dbname=app`,
    },
    pgbouncer: { auth_type: 'hba', auth_hba_file: hbaFile, pool_mode: 'transaction', ...extra },
    userlist: { alice: 'alice-pw', bob: 'bob-pw', dave: 'dave-pw', eve: 'eve-pw' },
  }
}

interface LoginResult {
  ok?: string
  error?: string
  code?: string
}

async function login(
  pooler: Pooler,
  user: string,
  database: string,
  password: string,
): Promise<LoginResult> {
  return withClient(
    { host: pooler.host, port: pooler.port, user, database, password },
    async (c) => (await c.query('SELECT current_user AS u')).rows[0].u as string,
  ).then(
    (u) => ({ ok: u }),
    (e: Error & { code?: string }) => ({ error: e.message, code: e.code }),
  )
}

for (const target of ['pgbouncer-cluster', 'PgBouncer 1.18'] as const) {
  const reference = target !== 'pgbouncer-cluster'
  describe(`auth_type hba (${target})`, { skip: reference && NO_PGBOUNCER }, () => {
    let pooler: Pooler
    before(async () => {
      const dir = sharedDir()
      writeShared(dir, 'staff.txt', 'dave, eve\n')
      const s = spec(writeShared(dir, 'hba.conf', `${HBA}\n`))
      pooler = reference
        ? await startPgBouncer(s)
        : await startPooler(writeIni(s), { workers: 1, timeoutMs: 60_000 })
    })
    after(() => pooler.stop())

    test('md5 and password lines ask for the password; a wrong one is refused', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      assert.deepEqual(await login(pooler, 'alice', 'app', 'alice-pw'), { ok: 'alice' })
      assert.deepEqual(await login(pooler, 'bob', 'app', 'bob-pw'), { ok: 'bob' })
      for (const user of ['alice', 'bob']) {
        const wrong = await login(pooler, user, 'app', 'nope')
        assert.match(String(wrong.error), /password authentication failed/)
        if (!reference) assert.equal(wrong.code, '28P01')
      }
    })

    test('trust by sameuser and an @file user list; reject; no line at all', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      // dave is in staff.txt and asks for the database named like him: any password will do.
      assert.deepEqual(await login(pooler, 'dave', 'dave', 'whatever'), { ok: 'dave' })
      const rejected = await login(pooler, 'alice', 'closed', 'alice-pw')
      assert.equal(rejected.error, 'login rejected')
      // eve fits no line: her database is not named like her, and app has no line for her;
      // dave's ::1 line does not fit an IPv4 client.
      for (const [user, database] of [
        ['eve', 'app'],
        ['dave', 'app'],
      ] as const) {
        const none = await login(pooler, user, database, `${user}-pw`)
        // PgBouncer 1.21+ says so; 1.18 said "login rejected" for this too.
        assert.equal(none.error, reference ? 'login rejected' : 'no authentication method is found')
        if (!reference) assert.equal(none.code, '08P01')
      }
    })
  })
}

describe('auth_type hba: the unix socket, reload, a broken file', () => {
  let pooler: Pooler
  let dir: string
  let hbaFile: string
  before(async () => {
    dir = sharedDir()
    writeShared(dir, 'staff.txt', 'dave, eve\n')
    hbaFile = writeShared(dir, 'hba.conf', `${HBA}\n`)
    const socketDir = sharedDir()
    pooler = await startPooler(writeIni(spec(hbaFile, { unix_socket_dir: socketDir })), {
      workers: 1,
      timeoutMs: 60_000,
    })
    ;(pooler as unknown as { socketDir: string }).socketDir = socketDir
  })
  after(() => pooler.stop())

  test('local lines govern the unix socket', { timeout: TEST_TIMEOUT }, async () => {
    const socketDir = (pooler as unknown as { socketDir: string }).socketDir
    const u = await withClient(
      { host: socketDir, port: pooler.port, user: 'alice', database: 'app', password: 'wrong' },
      async (c) => (await c.query('SELECT current_user AS u')).rows[0].u,
    )
    assert.equal(u, 'alice')
  })

  test('SIGHUP reads auth_hba_file again', { timeout: TEST_TIMEOUT }, async () => {
    assert.deepEqual(await login(pooler, 'alice', 'app', 'alice-pw'), { ok: 'alice' })
    writeShared(dir, 'hba.conf', 'host all alice 127.0.0.1/32 reject\n')
    pooler.child.kill('SIGHUP')
    for (let i = 0; ; i++) {
      const r = await login(pooler, 'alice', 'app', 'alice-pw')
      if (r.error === 'login rejected') break
      if (i > 100) assert.fail(`still ${JSON.stringify(r)} after the reload`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const none = await login(pooler, 'bob', 'app', 'bob-pw')
    assert.equal(none.error, 'no authentication method is found')
  })

  test('a malformed line stops the start with file, line and what is wrong', async () => {
    const broken = writeShared(
      dir,
      'broken.conf',
      'local all all trust\nhost all all 10.0.0.0/40 md5\n',
    )
    const ini = writeIni(spec(broken))
    const result = await run(process.execPath, [BIN, ini]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    )
    assert.equal(result.code, 2)
    assert.match(result.stderr, /broken\.conf:2: invalid mask length "\/40" for 10\.0\.0\.0/)
  })
})

describe('scram_iterations', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(
      writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: { auth_type: 'scram-sha-256', scram_iterations: 1234 },
        userlist: { alice: 'alice-pw' },
      }),
      { workers: 1, timeoutMs: 60_000 },
    )
  })
  after(() => pooler.stop())

  test('the SCRAM secret made from a plaintext password uses that many iterations', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const raw = await RawConnection.connect(pooler.host, pooler.port)
    try {
      raw.send(startupPacket({ user: 'alice', database: 'app' }))
      const sasl = await raw.next(5000)
      assert.equal(sasl?.type, 'R')
      assert.equal(sasl!.body.readInt32BE(0), 10)
      const first = Buffer.from('n,,n=,r=abcdefghijklmnop')
      const mech = Buffer.from('SCRAM-SHA-256\0')
      const len = Buffer.alloc(4)
      len.writeInt32BE(first.length)
      const body = Buffer.concat([mech, len, first])
      const head = Buffer.alloc(5)
      head[0] = 'p'.charCodeAt(0)
      head.writeInt32BE(body.length + 4, 1)
      raw.send(Buffer.concat([head, body]))
      const cont = await raw.next(5000)
      assert.equal(cont!.body.readInt32BE(0), 11)
      assert.match(cont!.body.subarray(4).toString(), /,i=1234$/)
    } finally {
      raw.destroy()
    }
    // And a real client logs in through it.
    assert.deepEqual(await login(pooler, 'alice', 'app', 'alice-pw'), { ok: 'alice' })
  })
})

describe('auth_type hba over TLS: hostssl lines and the cert method', () => {
  let pooler: Pooler
  let client: { key: string; cert: string }
  before(async () => {
    const dir = sharedDir()
    // A self-signed client certificate for CN=postgres, its own CA.
    const keyPath = join(dir, 'client.key')
    const certPath = join(dir, 'client.crt')
    await run('openssl', [
      ...['req', '-x509', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'],
      ...['-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=postgres'],
    ])
    client = { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8') }
    const hba = writeShared(
      dir,
      'hba.conf',
      [
        'hostnossl all all 0.0.0.0/0 reject',
        'hostssl all postgres 127.0.0.1/32 cert',
        'hostssl all alice 127.0.0.0/8 md5',
      ].join('\n'),
    )
    const tls = db.server.tls!
    pooler = await startPooler(
      writeIni(
        spec(hba, {
          client_tls_sslmode: 'verify-ca',
          client_tls_ca_file: certPath,
          client_tls_cert_file: tls.certPath,
          client_tls_key_file: tls.keyPath,
        }),
      ),
      { workers: 1, timeoutMs: 60_000 },
    )
  })
  after(() => pooler.stop())

  test('the certificate logs postgres in; alice gives her password; a user with no line is refused', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const ssl = { rejectUnauthorized: false, key: client.key, cert: client.cert }
    const as = (user: string, password?: string) =>
      withClient(
        { host: pooler.host, port: pooler.port, user, database: 'app', password, ssl },
        async (c) => (await c.query('SELECT current_user AS u')).rows[0].u as string,
      ).then(
        (u): LoginResult => ({ ok: u }),
        (e: Error & { code?: string }): LoginResult => ({ error: e.message, code: e.code }),
      )
    assert.deepEqual(await as('postgres'), { ok: 'postgres' })
    assert.deepEqual(await as('alice', 'alice-pw'), { ok: 'alice' })
    assert.match(String((await as('alice', 'nope')).error), /password authentication failed/)
    assert.deepEqual(await as('bob', 'bob-pw'), {
      error: 'no authentication method is found',
      code: '08P01',
    })
  })
})
