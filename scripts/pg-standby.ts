// A streaming standby of a harness PostgreSQL (pg-harness.ts): `pg_basebackup -R` from the
// primary's unix socket into a temp dir, started on another loopback address, run as the
// `postgres` OS user as the harness runs its servers. For the failover tests: the standby
// can be stopped, started again and promoted.

import { appendFile, chown, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { findPgTool, type PgServer } from './pg-harness.ts'
import { freePort, HarnessError, run, serverOsUser } from './pg-process.ts'
import { readLogTail, type TrackedCluster, track } from './pg-registry.ts'

export interface PgStandby {
  readonly host: string
  readonly port: number
  readonly dataDir: string
  readonly logPath: string
  /** One statement as the superuser, on a short-lived connection. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string): Promise<pg.QueryResult<R>>
  /** Stops it, keeping its data dir and port; start() undoes it. */
  halt(mode?: 'fast' | 'immediate'): Promise<void>
  start(): Promise<void>
  /** `pg_ctl promote`: resolves once it has left recovery. */
  promote(): Promise<void>
  readLog(): string
  /** Stops it (if running) and removes its temp dir. Idempotent. */
  stop(): Promise<void>
}

/** pg_basebackup where the harness finds PostgreSQL's tools; null when absent. */
export function findBasebackup(): string | null {
  return findPgTool('pg_basebackup')
}

/**
 * The primary needs `local replication all trust` in its hba (usePostgres' `hba`) and its
 * default wal_level (replica). Resolves once the standby accepts read-only queries.
 */
export async function startStandby(primary: PgServer, host: string): Promise<PgStandby> {
  const basebackup = findBasebackup()
  if (basebackup === null) {
    throw new HarnessError('PG_HARNESS_NO_BASEBACKUP', 'pg_basebackup not found')
  }
  const user = serverOsUser()
  const rootDir = await mkdtemp(join(tmpdir(), 'pg-standby-'))
  if (user) await chown(rootDir, user.uid, user.gid)
  const dataDir = join(rootDir, 'data')
  const logPath = join(rootDir, 'postgres.log')
  const tracked: TrackedCluster = {
    label: `${host} (standby)`,
    rootDir,
    dataDir,
    logPath,
    running: false,
    logTail: null,
    logPrinted: false,
    healthy: false,
  }
  track(tracked)
  const args = ['-h', primary.socketDir, '-p', String(primary.port), '-U', primary.superuser]
  args.push('-D', dataDir, '-R', '-X', 'stream', '-c', 'fast', '--no-sync')
  await run(basebackup, args, { user, cwd: rootDir })
  // The copy carries the primary's listen address and socket directory.
  await appendFile(
    join(dataDir, 'postgresql.conf'),
    `\n# pg-standby\nlisten_addresses = '${host}'\nunix_socket_directories = '${rootDir}'\nhot_standby = on\n`,
  )
  const port = await freePort(host)
  const pgCtl = join(primary.binDir, 'pg_ctl')
  const ctl = (a: string[]) => run(pgCtl, ['-D', dataDir, ...a], { user, cwd: rootDir })
  const query = async <R extends pg.QueryResultRow>(sql: string) => {
    const client = new pg.Client({ host, port, user: primary.superuser, database: 'postgres' })
    await client.connect()
    try {
      return await client.query<R>(sql)
    } finally {
      await client.end().catch(() => {})
    }
  }
  const waitFor = async (what: string, ok: () => Promise<boolean>) => {
    const deadline = Date.now() + 30_000
    for (;;) {
      try {
        if (await ok()) return
      } catch (err) {
        if (Date.now() > deadline) throw err
      }
      if (Date.now() > deadline) throw new HarnessError('PG_HARNESS_STANDBY', `standby: ${what}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  const start = async () => {
    tracked.running = true
    await ctl(['-l', logPath, '-w', '-t', '60', '-o', `-p ${port}`, 'start'])
    await waitFor('no connections', async () => (await query('SELECT 1')).rowCount === 1)
  }
  await start()
  let stopped = false
  const standby: PgStandby = {
    host,
    port,
    dataDir,
    logPath,
    query,
    start,
    async halt(mode = 'fast') {
      if (!tracked.running) return
      await ctl(['-m', mode, '-w', '-t', '30', 'stop'])
      tracked.running = false
    },
    async promote() {
      await ctl(['-w', '-t', '60', 'promote'])
      await waitFor('still in recovery', async () => {
        const { rows } = await query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')
        return rows[0]!.r === false
      })
    },
    readLog: () => readLogTail(logPath, 200),
    async stop() {
      if (stopped) return
      stopped = true
      await standby.halt().catch(() => {})
      await rm(rootDir, { recursive: true, force: true })
    },
  }
  return standby
}
