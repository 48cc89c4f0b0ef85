// The throwaway PostgreSQL behind every integration test, benchmark and demo: a fresh initdb in
// a temp dir, a free port on 127.0.0.1 (or another loopback address, `host`), roles/databases/TLS as asked, and a guaranteed cleanup
// (pg-registry.ts). As root, the server runs as the `postgres` OS user (pg-process.ts).
//
//   const db = usePostgres({ roles: [{ name: 'app', password: 'pw', auth: 'scram-sha-256' }] })
//   test('...', async () => { const c = new pg.Client(db.server.url({ user: 'app', password: 'pw' })) })

import { existsSync, readFileSync } from 'node:fs'
import { appendFile, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before } from 'node:test'
import type { QueryResult, QueryResultRow } from 'pg'
import pg from 'pg'
import { findPgBinDir, findPgTool } from './pg-bin.ts'
import {
  hbaConf,
  makeCert,
  passwordEncryptionOf,
  type StartOptions,
  serverConf,
  type TlsFiles,
  validateOptions,
} from './pg-config.ts'
import { cleanEnv, freePort, HarnessError, type OsUser, run, serverOsUser } from './pg-process.ts'
import {
  destroySync,
  killPostmasterSync,
  printLogTail,
  readLogTail,
  type TrackedCluster,
  track,
} from './pg-registry.ts'

export { findPgBinDir, findPgTool } from './pg-bin.ts'
export type {
  AuthMethod,
  PasswordEncryption,
  RoleOptions,
  StartOptions,
  TlsFiles,
} from './pg-config.ts'
export { HarnessError } from './pg-process.ts'

export interface ConnectOptions {
  user?: string
  password?: string
  database?: string
}

export interface PgServer {
  /** The listen address: 127.0.0.1 unless `host` chose another loopback address. */
  readonly host: string
  readonly port: number
  readonly binDir: string
  readonly dataDir: string
  /** unix_socket_directories; also the temp dir holding data dir and log. */
  readonly socketDir: string
  readonly logPath: string
  readonly superuser: 'postgres'
  /** server_version_num, e.g. 150018. */
  readonly version: number
  /** The generated certificate and key when started with `tls: true`. */
  readonly tls: TlsFiles | null
  /** postgres://user[:password]@host:port/database; user and database default to postgres. */
  url(opts?: ConnectOptions): string
  /** PGHOST, PGPORT, PGUSER, PGDATABASE (+PGPASSWORD) for psql/pgbench; merge into process.env. */
  env(opts?: ConnectOptions): Record<string, string>
  /** One statement as the superuser, on a short-lived connection. */
  query<R extends QueryResultRow = QueryResultRow>(
    sql: string,
    params?: unknown[],
  ): Promise<QueryResult<R>>
  /** The whole server log (after stop(): its last lines). */
  readLog(): string
  /** Fast shutdown (kill as fallback), then removes the temp dir. Idempotent. */
  stop(): Promise<void>
  /**
   * Shutdown that keeps the data dir and port, for outage tests; restart() undoes it.
   * `immediate` is a crash as clients see it: backends quit without finishing their work.
   */
  halt(mode?: 'fast' | 'immediate'): Promise<void>
  /** Starts the server again on the same port (after halt(), or stopping it first). */
  restart(): Promise<void>
  /**
   * `pg_ctl restart -m fast`, as an operator restarts a server: one command,
   * the same port and log; resolves once it accepts connections again.
   */
  bounce(): Promise<void>
  /**
   * Asks for a smart shutdown and returns at once: while the sessions already
   * open last, new connections get 57P03 "the database system is shutting
   * down". restart() completes it (the sessions end) and starts the server again.
   */
  beginShutdown(): Promise<void>
}

const DEFAULT_HOST = '127.0.0.1'
const SUPERUSER = 'postgres'
const START_ATTEMPTS = 4

class Cluster implements PgServer {
  readonly host: string
  readonly superuser = SUPERUSER
  port = 0
  version = 0
  tls: TlsFiles | null = null
  readonly binDir: string
  readonly dataDir: string
  readonly socketDir: string
  readonly logPath: string
  readonly tracked: TrackedCluster
  #stopping: Promise<void> | undefined

  constructor(binDir: string, rootDir: string, host: string) {
    this.host = host
    this.binDir = binDir
    this.socketDir = rootDir
    this.dataDir = join(rootDir, 'data')
    this.logPath = join(rootDir, 'postgres.log')
    this.tracked = {
      label: host,
      rootDir,
      dataDir: this.dataDir,
      logPath: this.logPath,
      running: false,
      logTail: null,
      logPrinted: false,
      healthy: false,
    }
  }

  url(opts: ConnectOptions = {}): string {
    const user = encodeURIComponent(opts.user ?? SUPERUSER)
    const password = opts.password === undefined ? '' : `:${encodeURIComponent(opts.password)}`
    const database = encodeURIComponent(opts.database ?? SUPERUSER)
    return `postgres://${user}${password}@${this.host}:${this.port}/${database}`
  }

  env(opts: ConnectOptions = {}): Record<string, string> {
    const env: Record<string, string> = {
      PGHOST: this.host,
      PGPORT: String(this.port),
      PGUSER: opts.user ?? SUPERUSER,
      PGDATABASE: opts.database ?? SUPERUSER,
    }
    if (opts.password !== undefined) env.PGPASSWORD = opts.password
    return env
  }

  /** Superuser connection over the unix socket, which pg_hba always trusts. */
  async connect(database = SUPERUSER): Promise<pg.Client> {
    const client = new pg.Client({
      host: this.socketDir,
      port: this.port,
      user: SUPERUSER,
      database,
    })
    await client.connect()
    return client
  }

  async query<R extends QueryResultRow = QueryResultRow>(
    sql: string,
    params?: unknown[],
  ): Promise<QueryResult<R>> {
    const client = await this.connect()
    try {
      return await client.query<R>(sql, params)
    } finally {
      await client.end()
    }
  }

  readLog(): string {
    try {
      return readFileSync(this.logPath, 'utf8')
    } catch {
      return this.tracked.logTail ?? ''
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#stop()
    return this.#stopping
  }

  async halt(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (this.#stopping) throw new HarnessError('PG_HARNESS_STOPPED', 'halt(): server was stopped')
    if (!this.tracked.running) return
    const args = ['-D', this.dataDir, '-m', mode, '-w', '-t', '30', 'stop']
    try {
      await run(join(this.binDir, 'pg_ctl'), args, { user: serverOsUser(), cwd: this.socketDir })
    } catch (err) {
      // A smart shutdown (beginShutdown) ends by itself once its last session
      // leaves, and may have done so just before this stop: then it is down.
      if (existsSync(join(this.dataDir, 'postmaster.pid'))) throw err
    }
    this.tracked.running = false
  }

  async bounce(): Promise<void> {
    if (this.#stopping) throw new HarnessError('PG_HARNESS_STOPPED', 'bounce(): server was stopped')
    const args = ['-D', this.dataDir, '-l', this.logPath, '-m', 'fast', '-w', '-t', '60']
    args.push('-o', `-p ${this.port}`, 'restart')
    await run(join(this.binDir, 'pg_ctl'), args, { user: serverOsUser(), cwd: this.socketDir })
    await waitForConnections(this)
  }

  async beginShutdown(): Promise<void> {
    if (this.#stopping)
      throw new HarnessError('PG_HARNESS_STOPPED', 'beginShutdown(): server was stopped')
    const args = ['-D', this.dataDir, '-m', 'smart', '-W', 'stop']
    await run(join(this.binDir, 'pg_ctl'), args, { user: serverOsUser(), cwd: this.socketDir })
  }

  async restart(): Promise<void> {
    if (this.#stopping)
      throw new HarnessError('PG_HARNESS_STOPPED', 'restart(): server was stopped')
    await this.halt()
    // Same port: whoever points at it (a pooler under test) must find the server again.
    this.tracked.running = true
    const args = ['-D', this.dataDir, '-l', this.logPath, '-w', '-t', '60']
    args.push('-o', `-p ${this.port}`, 'start')
    try {
      await run(join(this.binDir, 'pg_ctl'), args, { user: serverOsUser(), cwd: this.socketDir })
    } catch (err) {
      killPostmasterSync(this.dataDir)
      this.tracked.running = false
      throw err
    }
    await waitForConnections(this)
  }

  async #stop(): Promise<void> {
    if (this.tracked.running) {
      const args = ['-D', this.dataDir, '-m', 'fast', '-w', '-t', '30', 'stop']
      try {
        await run(join(this.binDir, 'pg_ctl'), args, { user: serverOsUser(), cwd: this.socketDir })
      } catch {
        killPostmasterSync(this.dataDir)
      }
      this.tracked.logTail = readLogTail(this.logPath)
      this.tracked.running = false
    }
    await rm(this.tracked.rootDir, { recursive: true, force: true })
  }
}

async function initCluster(cluster: Cluster, opts: StartOptions, user: OsUser | null) {
  const initdb = join(cluster.binDir, 'initdb')
  const args = ['-D', cluster.dataDir, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8']
  args.push('--locale=C', '--no-sync')
  await run(initdb, args, { user, cwd: cluster.socketDir })
  const hbaPath = join(cluster.dataDir, 'pg_hba.conf')
  await writeFile(hbaPath, hbaConf(opts, cluster.host))
  if (user) await chown(hbaPath, user.uid, user.gid)
  await appendFile(
    join(cluster.dataDir, 'postgresql.conf'),
    serverConf(opts, cluster.host, cluster.socketDir),
  )
  if (opts.tls) cluster.tls = await makeCert(cluster.dataDir, cluster.host, user)
}

/** pg_ctl start on a fresh free port; retried when another process grabbed the port first. */
async function startServer(cluster: Cluster, user: OsUser | null): Promise<void> {
  const pgCtl = join(cluster.binDir, 'pg_ctl')
  for (let attempt = 1; ; attempt++) {
    cluster.port = await freePort(cluster.host)
    cluster.tracked.label = `${cluster.host}:${cluster.port}`
    cluster.tracked.running = true
    const args = ['-D', cluster.dataDir, '-l', cluster.logPath, '-w', '-t', '60']
    args.push('-o', `-p ${cluster.port}`, 'start')
    try {
      await run(pgCtl, args, { user, cwd: cluster.socketDir })
      return
    } catch (err) {
      killPostmasterSync(cluster.dataDir)
      cluster.tracked.running = false
      const portTaken = /could not bind|could not create any TCP\/IP sockets|in use/i
      if (attempt >= START_ATTEMPTS || !portTaken.test(cluster.readLog())) throw err
    }
  }
}

async function waitForConnections(cluster: Cluster): Promise<void> {
  const deadline = Date.now() + 15_000
  for (;;) {
    try {
      await cluster.query('SELECT 1')
      return
    } catch (err) {
      if (Date.now() > deadline) throw err
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
}

async function createRolesAndDatabases(cluster: Cluster, opts: StartOptions): Promise<void> {
  const client = await cluster.connect()
  try {
    // A failing statement would otherwise be logged with the password in it.
    await client.query(`SET log_min_error_statement = 'panic'`)
    for (const role of opts.roles ?? []) {
      await client.query(`SET password_encryption = '${passwordEncryptionOf(role)}'`)
      const found = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role.name])
      const parts = [
        found.rowCount ? 'ALTER ROLE' : 'CREATE ROLE',
        client.escapeIdentifier(role.name),
      ]
      parts.push('LOGIN')
      if (role.superuser) parts.push('SUPERUSER')
      if (role.password !== undefined) parts.push('PASSWORD', client.escapeLiteral(role.password))
      await client.query(parts.join(' '))
    }
    for (const database of opts.databases ?? []) {
      const name = client.escapeIdentifier(database)
      await client.query(`CREATE DATABASE ${name} OWNER ${SUPERUSER}`)
      await client.query(`GRANT CONNECT ON DATABASE ${name} TO PUBLIC`)
    }
  } finally {
    await client.end()
  }
  for (const database of opts.databases ?? []) {
    const client = await cluster.connect(database)
    try {
      // PostgreSQL 15+ no longer lets every role create tables in public.
      await client.query('GRANT ALL ON SCHEMA public TO PUBLIC')
    } finally {
      await client.end()
    }
  }
}

async function pgbenchInit(cluster: Cluster, init: NonNullable<StartOptions['pgbenchInit']>) {
  const pgbench = findPgTool('pgbench')
  if (!pgbench) throw new HarnessError('PG_HARNESS_NO_PGBENCH', 'pgbenchInit: pgbench not found')
  const env = { ...cleanEnv(), ...cluster.env({ database: init.database }) }
  await run(pgbench, ['-i', '-q', '-s', String(init.scale)], { env })
}

async function startCluster(opts: StartOptions): Promise<Cluster> {
  validateOptions(opts)
  const binDir = findPgBinDir()
  const user = serverOsUser()
  const host = opts.host ?? DEFAULT_HOST
  const cluster = new Cluster(binDir, await mkdtemp(join(tmpdir(), 'pg-harness-')), host)
  track(cluster.tracked)
  try {
    if (user) await chown(cluster.socketDir, user.uid, user.gid)
    await initCluster(cluster, opts, user)
    await startServer(cluster, user)
    await waitForConnections(cluster)
    await createRolesAndDatabases(cluster, opts)
    if (opts.pgbenchInit) await pgbenchInit(cluster, opts.pgbenchInit)
    const { rows } = await cluster.query<{ num: number; text: string }>(
      `SELECT current_setting('server_version_num')::int AS num,
              split_part(current_setting('server_version'), ' ', 1) AS text`,
    )
    cluster.version = rows[0]!.num
    if (!opts.quiet) {
      process.stderr.write(
        `pg-harness: PostgreSQL ${rows[0]!.text} at ${cluster.host}:${cluster.port} (${binDir})\n`,
      )
    }
    return cluster
  } catch (err) {
    const tail = readLogTail(cluster.logPath, 30)
    destroySync(cluster.tracked)
    cluster.tracked.logPrinted = true
    const message = err instanceof Error ? err.message : String(err)
    const code = (err as { code?: unknown }).code
    throw new HarnessError(
      typeof code === 'string' && code.startsWith('PG_HARNESS_') ? code : 'PG_HARNESS_START_FAILED',
      `pg-harness: could not start PostgreSQL from ${binDir}: ${message}` +
        (tail ? `\n--- server log (last lines) ---\n${tail}` : ''),
    )
  }
}

/** Starts a throwaway cluster. Stop it with `stop()`; it is also removed when the process ends. */
export function startPostgres(opts: StartOptions = {}): Promise<PgServer> {
  return startCluster(opts)
}

export interface UsedPostgres {
  /** The running server; available inside tests and hooks that run after before(). */
  readonly server: PgServer
}

/**
 * node:test helper: starts a cluster in before(), stops it in after() of the current suite (or
 * file), and prints the server log's tail when a test of that scope failed.
 */
export function usePostgres(opts: StartOptions = {}): UsedPostgres {
  let cluster: Cluster | undefined
  let failed = false
  before(
    async () => {
      cluster = await startCluster(opts)
    },
    { timeout: 120_000 },
  )
  afterEach((t) => {
    // TestContext.passed exists at runtime in Node 24 but not in every @types/node.
    if ('passed' in t && t.passed === false) failed = true
  })
  after(async () => {
    if (!cluster) return
    if (failed) printLogTail(cluster.tracked)
    else cluster.tracked.healthy = true
    await cluster.stop()
  })
  return {
    get server(): PgServer {
      if (!cluster) {
        throw new HarnessError(
          'PG_HARNESS_NOT_STARTED',
          'usePostgres(): the server starts in a before() hook; use db.server inside tests',
        )
      }
      return cluster
    },
  }
}
