import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { connect } from 'node:net'
import { describe, it } from 'node:test'
import { promisify } from 'node:util'
import pg from 'pg'
import { skipWithout } from './optional-tools.ts'
import { findPgTool, type PgServer, startPostgres, usePostgres } from './pg-harness.ts'

const execFileAsync = promisify(execFile)

async function queryAs(
  server: PgServer,
  opts: { user: string; password?: string; database?: string; ssl?: pg.ClientConfig['ssl'] },
  sql: string,
): Promise<pg.QueryResult> {
  const client = new pg.Client({
    host: server.host,
    port: server.port,
    user: opts.user,
    password: opts.password,
    database: opts.database ?? 'postgres',
    ssl: opts.ssl ?? false,
  })
  await client.connect()
  try {
    return await client.query(sql)
  } finally {
    await client.end()
  }
}

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

describe('roles, databases and settings', () => {
  const db = usePostgres({
    roles: [
      { name: 'trusted' },
      { name: 'plain_pw', password: 'plain-secret', auth: 'password' },
      { name: 'md5_user', password: 'md5-secret', auth: 'md5' },
      { name: 'scram_user', password: 'scram-secret', auth: 'scram-sha-256' },
      { name: 'boss', superuser: true },
    ],
    databases: ['extra_db'],
    maxConnections: 37,
    settings: { work_mem: '7MB' },
  })

  it('reports a numeric server version matching server_version_num', async () => {
    const { rows } = await db.server.query<{ v: string }>(
      'SELECT current_setting($$server_version_num$$) AS v',
    )
    assert.equal(db.server.version, Number(rows[0]!.v))
    assert.ok(db.server.version >= 100000)
  })

  it('lets a trust role run SELECT 1 without a password', async () => {
    const { rows } = await queryAs(db.server, { user: 'trusted' }, 'SELECT 1 AS one')
    assert.deepEqual(rows, [{ one: 1 }])
  })

  for (const [user, password] of [
    ['plain_pw', 'plain-secret'],
    ['md5_user', 'md5-secret'],
    ['scram_user', 'scram-secret'],
  ] as const) {
    it(`${user}: accepts the right password and rejects a wrong one with 28P01`, async () => {
      const { rows } = await queryAs(db.server, { user, password }, 'SELECT current_user AS u')
      assert.deepEqual(rows, [{ u: user }])
      await assert.rejects(queryAs(db.server, { user, password: 'wrong' }, 'SELECT 1'), {
        code: '28P01',
      })
    })
  }

  it('writes one pg_hba line per role with its method, before the catch-all trust line', async () => {
    const { rows } = await db.server.query<{ users: string[]; method: string }>(
      `SELECT user_name AS users, auth_method AS method FROM pg_hba_file_rules
       WHERE type = 'host' ORDER BY line_number`,
    )
    assert.deepEqual(
      rows.map((r) => `${r.users.join(',')}:${r.method}`),
      [
        'trusted:trust',
        'plain_pw:password',
        'md5_user:md5',
        'scram_user:scram-sha-256',
        'boss:trust',
        'all:trust',
      ],
    )
  })

  it('stores the md5 role as an md5 hash and the scram role as a SCRAM verifier', async () => {
    const { rows } = await db.server.query<{ rolname: string; rolpassword: string }>(
      `SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('md5_user', 'scram_user')`,
    )
    const byName = new Map(rows.map((r) => [r.rolname, r.rolpassword]))
    assert.match(byName.get('md5_user')!, /^md5[0-9a-f]{32}$/)
    assert.match(byName.get('scram_user')!, /^SCRAM-SHA-256\$/)
  })

  it('makes superuser roles superusers and others not', async () => {
    const { rows } = await db.server.query<{ rolname: string; rolsuper: boolean }>(
      `SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN ('boss', 'trusted') ORDER BY 1`,
    )
    assert.deepEqual(rows, [
      { rolname: 'boss', rolsuper: true },
      { rolname: 'trusted', rolsuper: false },
    ])
  })

  it('creates the extra database, reachable through url() and writable in public', async () => {
    const client = new pg.Client({
      connectionString: db.server.url({
        user: 'scram_user',
        password: 'scram-secret',
        database: 'extra_db',
      }),
    })
    await client.connect()
    try {
      const { rows } = await client.query('SELECT current_database() AS d, current_user AS u')
      assert.deepEqual(rows, [{ d: 'extra_db', u: 'scram_user' }])
      await client.query('CREATE TABLE harness_probe (id int)')
    } finally {
      await client.end()
    }
  })

  it('applies maxConnections and extra settings', async () => {
    const max = await db.server.query<{ max_connections: string }>('SHOW max_connections')
    assert.equal(max.rows[0]!.max_connections, '37')
    const workMem = await db.server.query<{ work_mem: string }>('SHOW work_mem')
    assert.equal(workMem.rows[0]!.work_mem, '7MB')
  })

  it('listens on 127.0.0.1 only, with its socket in the temp dir', async () => {
    const { rows } = await db.server.query<{ l: string; s: string }>(
      `SELECT current_setting('listen_addresses') AS l,
              current_setting('unix_socket_directories') AS s`,
    )
    assert.deepEqual(rows, [{ l: '127.0.0.1', s: db.server.socketDir }])
  })

  it('runs psql against it through env()', async (t) => {
    const psql = findPgTool('psql')
    if (!psql) return t.skip(skipWithout('psql', psql) as string)
    const { stdout } = await execFileAsync(psql, ['-X', '-A', '-t', '-c', 'select 42'], {
      env: { ...process.env, ...db.server.env({ user: 'md5_user', password: 'md5-secret' }) },
    })
    assert.equal(stdout.trim(), '42')
  })

  it('exposes the server log', () => {
    assert.match(db.server.readLog(), /database system is ready to accept connections/)
  })
})

describe('tls', () => {
  const db = usePostgres({
    tls: true,
    roles: [{ name: 'tls_only' }],
    hba: ['hostssl all tls_only 127.0.0.1/32 trust', 'host all tls_only 127.0.0.1/32 reject'],
  })

  it('serves TLS with the generated self-signed certificate', async () => {
    assert.ok(db.server.tls && existsSync(db.server.tls.certPath))
    const { rows } = await queryAs(
      db.server,
      { user: 'postgres', ssl: { rejectUnauthorized: false } },
      'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
    )
    assert.deepEqual(rows, [{ ssl: true }])
  })

  it('honours hostssl lines: the tls_only role gets in over TLS only', async () => {
    const { rows } = await queryAs(
      db.server,
      { user: 'tls_only', ssl: { rejectUnauthorized: false } },
      'SELECT current_user AS u',
    )
    assert.deepEqual(rows, [{ u: 'tls_only' }])
    await assert.rejects(queryAs(db.server, { user: 'tls_only' }, 'SELECT 1'), { code: '28000' })
  })
})

describe('lifecycle', () => {
  it('initialises pgbench tables, and stop() removes the cluster and frees the port', {
    skip: skipWithout('pgbench', findPgTool('pgbench')),
  }, async () => {
    const server = await startPostgres({ pgbenchInit: { scale: 1 } })
    let stopped = false
    try {
      const { rows } = await server.query<{ n: string }>(
        'SELECT count(*) AS n FROM pgbench_branches',
      )
      assert.equal(rows[0]!.n, '1')
      assert.ok(existsSync(server.dataDir))
      await server.stop()
      stopped = true
      assert.equal(existsSync(server.dataDir), false)
      assert.equal(existsSync(server.socketDir), false)
      assert.equal(await portAccepts(server.port), false)
      await server.stop()
    } finally {
      if (!stopped) await server.stop()
    }
  })

  it('rejects bad options before starting anything', async () => {
    await assert.rejects(startPostgres({ roles: [{ name: 'x', auth: 'md5' }] }), {
      code: 'PG_HARNESS_BAD_OPTIONS',
    })
  })

  // A child process starts a cluster, reports it, then dies; the cluster must die with it.
  for (const ending of ['uncaught', 'SIGTERM'] as const) {
    it(`removes the cluster when its process ends by ${ending}`, async () => {
      const script = `
        import { startPostgres } from ${JSON.stringify(new URL('./pg-harness.ts', import.meta.url).href)}
        const s = await startPostgres()
        console.log(JSON.stringify({ dataDir: s.dataDir, port: s.port }))
        if (${JSON.stringify(ending)} === 'uncaught') setTimeout(() => { throw new Error('boom') }, 10)
        else setInterval(() => {}, 1000)
      `
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      let stdout = ''
      let stderr = ''
      child.stdout.on('data', (d) => (stdout += d))
      child.stderr.on('data', (d) => (stderr += d))
      const info = await new Promise<{ dataDir: string; port: number }>((resolve, reject) => {
        child.stdout.on('data', () => {
          if (stdout.includes('\n')) resolve(JSON.parse(stdout.split('\n')[0]!))
        })
        child.on('exit', () => reject(new Error(`child ended early: ${stderr}`)))
      })
      if (ending === 'SIGTERM') child.kill('SIGTERM')
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
        child.on('exit', (c, s) => resolve([c, s])),
      )
      assert.equal(existsSync(info.dataDir), false, 'data dir removed')
      assert.equal(await portAccepts(info.port), false, 'port closed')
      if (ending === 'uncaught') {
        assert.equal(code, 1)
        assert.match(stderr, /last 80 lines of the PostgreSQL log/)
        assert.match(stderr, /database system is ready to accept connections/)
      } else {
        assert.equal(signal, 'SIGTERM')
      }
    })
  }
})

describe('findPgTool', () => {
  it('returns null for a tool that does not exist', () => {
    assert.equal(findPgTool('no-such-pg-tool-xyz'), null)
  })
})
