import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { freePort, type Pooler, startPooler, writeIni } from './support.ts'

// A rolling restart on one port (so_reuseport = 1): a second pgbouncer-cluster
// starts on the port of a running one, the old one gets SIGTERM, stops
// accepting at once and drains. A client opening a fresh connection every few
// milliseconds throughout must see no error at all.
//
// Linux resets the connections queued on a listening socket that closes
// unless net.ipv4.tcp_migrate_req = 1 hands them to another socket of the
// port; .ci/run sets it, and docs/RUNNING-MORE-THAN-ONE.md says why. On a host without it the
// test is skipped (it would measure the kernel, not the pooler).
const db = usePostgres({ databases: ['app'] })

function migrateReq(): string | null {
  try {
    return readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim()
  } catch {
    return null
  }
}

const migrate = migrateReq()
const skip =
  migrate !== '1' &&
  `net.ipv4.tcp_migrate_req is ${migrate ?? 'missing (Linux < 5.14)'}: see "Upgrade without downtime" in docs/RUNNING-MORE-THAN-ONE.md`

describe('rolling restart on one port with so_reuseport', () => {
  test('a fresh connection every few ms through start, SIGTERM and drain: zero errors', {
    timeout: 240_000,
    skip,
  }, async () => {
    const port = await freePort()
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: {
        listen_port: port,
        so_reuseport: 1,
        pool_mode: 'transaction',
        default_pool_size: 4,
        // Two processes cannot share one socket file: each needs its own directory, or none.
        unix_socket_dir: '',
      },
    })
    const old = await startPooler(ini, { workers: 2, timeoutMs: 90_000 })
    let next: Pooler | null = null
    const errors: string[] = []
    let ok = 0
    let stop = false
    // Bounded: a few clients in a loop, each connection short, 127.0.0.1 only.
    const client = async (n: number) => {
      while (!stop) {
        const c = new pg.Client({
          host: '127.0.0.1',
          port,
          user: 'postgres',
          database: 'app',
          connectionTimeoutMillis: 20_000,
        })
        try {
          await c.connect()
          const { rows } = await c.query('SELECT $1::int AS n', [n])
          assert.equal(rows[0].n, n)
          ok++
        } catch (err) {
          errors.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`)
        } finally {
          await c.end().catch(() => {})
        }
        await new Promise((r) => setTimeout(r, 3))
      }
    }
    const clients = [client(1), client(2), client(3)]
    try {
      await new Promise((r) => setTimeout(r, 1000))
      const beforeRestart = ok
      next = await startPooler(ini, { workers: 2, timeoutMs: 90_000 })
      await new Promise((r) => setTimeout(r, 1000))
      old.child.kill('SIGTERM')
      const code = await old.exited
      assert.equal(code, 0, old.output())
      assert.match(old.output(), /client connections dropped, exiting/)
      const atExit = ok
      await new Promise((r) => setTimeout(r, 1500))
      stop = true
      await Promise.all(clients)
      console.log(
        `rolling restart: ${ok} connections, ${errors.length} errors (${beforeRestart} before the second process, ${ok - atExit} after the first exited)`,
      )
      assert.deepEqual(errors, [], `${errors.length} of ${ok + errors.length} connections failed`)
      assert.ok(beforeRestart > 0 && ok - atExit > 0, 'connections went through before and after')
    } finally {
      stop = true
      await Promise.all(clients)
      await Promise.all([old.stop(), next?.stop()])
    }
  })
})
