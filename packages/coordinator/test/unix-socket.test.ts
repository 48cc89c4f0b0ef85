import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { startPooler, withClient, writeIni } from './support.ts'

// unix_socket_dir: clients that connect through the socket file, as psql and
// libpq do by default.
const db = usePostgres({ tls: true })
const run = promisify(execFile)
const PSQL = findPgTool('psql')

function socketDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgbc-sock-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function otherGroup(): { name: string; gid: number } | null {
  if (process.getuid?.() !== 0) return null
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':')
    if (name && gid && Number(gid) !== process.getgid?.()) return { name, gid: Number(gid) }
  }
  return null
}

function ini(dir: string, extra: Record<string, string | number> = {}): string {
  return writeIni({
    databases: { postgres: `host=127.0.0.1 port=${db.server.port} dbname=postgres` },
    pgbouncer: {
      unix_socket_dir: dir,
      pool_mode: 'transaction',
      admin_users: 'postgres',
      ...extra,
    },
  })
}

describe('unix_socket_dir', () => {
  test('node-postgres connects through .s.PGSQL.<port>; the file goes when the pooler stops', async () => {
    const dir = socketDir()
    // unix_socket_group by name: any group but our own (root may give the file to any).
    const group = otherGroup()
    const pooler = await startPooler(
      ini(dir, { unix_socket_mode: '0770', ...(group ? { unix_socket_group: group.name } : {}) }),
    )
    const path = join(dir, `.s.PGSQL.${pooler.port}`)
    try {
      assert.ok(statSync(path).isSocket())
      assert.equal(statSync(path).mode & 0o777, 0o770)
      if (group) assert.equal(statSync(path).gid, group.gid)
      const rows = await withClient(
        { host: dir, port: pooler.port, user: 'postgres', database: 'pgbouncer' },
        async (c) => (await c.query('SHOW CLIENTS')).rows,
      )
      assert.ok(
        rows.some((r) => r.addr === 'unix'),
        JSON.stringify(rows),
      )
    } finally {
      assert.equal(await pooler.stop('SIGTERM'), 0)
    }
    assert.ok(!existsSync(path))
  })

  test('psql connects through the socket file, as libpq does by default', {
    skip: skipWithout('psql', PSQL),
  }, async () => {
    const dir = socketDir()
    const pooler = await startPooler(ini(dir))
    try {
      const { stdout } = await run(PSQL!, [
        '-h',
        dir,
        '-p',
        String(pooler.port),
        '-U',
        'postgres',
        '-Atc',
        'SELECT 6 * 7',
        'postgres',
      ])
      assert.equal(stdout.trim(), '42')
    } finally {
      await pooler.stop()
    }
  })

  test('with client_tls_sslmode = require, unix socket clients need no TLS, as in PgBouncer', async () => {
    const dir = socketDir()
    const { certPath, keyPath } = db.server.tls!
    const pooler = await startPooler(
      ini(dir, {
        client_tls_sslmode: 'require',
        client_tls_cert_file: certPath,
        client_tls_key_file: keyPath,
      }),
    )
    try {
      const n = await withClient(
        { host: dir, port: pooler.port, user: 'postgres', database: 'postgres' },
        async (c) => (await c.query('SELECT 1 AS n')).rows[0].n,
      )
      assert.equal(n, 1)
    } finally {
      await pooler.stop()
    }
  })

  test('a socket file left by a killed pooler is replaced; one a live pooler answers on is refused', async () => {
    const dir = socketDir()
    const first = await startPooler(ini(dir))
    const port = first.port
    first.child.kill('SIGKILL')
    await first.exited
    assert.ok(existsSync(join(dir, `.s.PGSQL.${port}`)), 'the killed pooler left its socket file')
    const second = await startPooler(ini(dir, { listen_port: port }))
    try {
      const n = await withClient(
        { host: dir, port, user: 'postgres', database: 'postgres' },
        async (c) => (await c.query('SELECT 2 AS n')).rows[0].n,
      )
      assert.equal(n, 2)
      // so_reuseport lets the TCP port be shared; the socket file cannot be.
      await assert.rejects(
        startPooler(ini(dir, { listen_port: port, so_reuseport: 1 })),
        /unix socket .* is in use by another process/,
      )
    } finally {
      await second.stop()
    }
  })
})
