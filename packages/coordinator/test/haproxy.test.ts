import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { findTool, skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { cancelRequestPacket } from './raw-protocol.ts'
import { freePort, type Pooler, startPooler, tempDir } from './support.ts'

// deploy/haproxy as shipped: HAProxy (mode tcp, round-robin, pgsql-check) in
// front of two pgbouncer-cluster processes peered with [peers]. The files are
// used as they are, only their ports moved to free ones.
const DEPLOY = new URL('../../../deploy/haproxy/', import.meta.url).pathname
const HAPROXY = findTool('haproxy')
const TEST_TIMEOUT = 120_000
const db = usePostgres({ databases: ['app'] })

function keyOf(c: pg.Client): { pid: number; secret: number } {
  const k = c as unknown as { processID: number; secretKey: number }
  return { pid: k.processID, secret: k.secretKey }
}

function sendCancel(port: number, pid: number, secret: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.on('connect', () => socket.write(cancelRequestPacket(pid, secret)))
    socket.on('error', reject)
    socket.on('close', () => resolve())
    socket.setTimeout(10_000, () => socket.destroy(new Error('cancel connection left open')))
  })
}

async function waitUntilRunning(sql: string): Promise<void> {
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    const { rows } = await db.server.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
      [sql],
    )
    if (rows[0].n > 0) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`${sql} never started`)
}

describe('HAProxy in front of two peered poolers (deploy/haproxy)', {
  skip: skipWithout('haproxy', HAPROXY),
}, () => {
  let balancer: number
  const poolers: Pooler[] = []
  let haproxy: ChildProcess
  let haproxyOut = ''
  const client = () =>
    new pg.Client({
      host: '127.0.0.1',
      port: balancer,
      user: 'postgres',
      database: 'app',
      connectionTimeoutMillis: 20_000,
    })

  before(async () => {
    balancer = await freePort()
    const ports = [await freePort(), await freePort()]
    const dir = tempDir()
    const moved = (text: string) =>
      text
        .replaceAll('127.0.0.1:6432', `127.0.0.1:${balancer}`)
        .replaceAll(/\b6433\b/g, String(ports[0]))
        .replaceAll(/\b6434\b/g, String(ports[1]))
        .replaceAll('port=5432', `port=${db.server.port}`)
    for (const file of ['haproxy.cfg', 'pooler1.ini', 'pooler2.ini'])
      writeFileSync(join(dir, file), moved(readFileSync(join(DEPLOY, file), 'utf8')))
    for (const file of ['pooler1.ini', 'pooler2.ini'])
      poolers.push(await startPooler(join(dir, file), { workers: 2, timeoutMs: 90_000 }))
    haproxy = spawn(HAPROXY!, ['-f', join(dir, 'haproxy.cfg'), '-db'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    haproxy.stdout!.setEncoding('utf8').on('data', (s: string) => {
      haproxyOut += s
    })
    haproxy.stderr!.setEncoding('utf8').on('data', (s: string) => {
      haproxyOut += s
    })
    process.on('exit', () => haproxy.kill('SIGKILL'))
    // Ready once a login goes through the balancer.
    const deadline = Date.now() + 60_000
    for (;;) {
      const c = client()
      try {
        await c.connect()
        await c.query('SELECT 1')
        break
      } catch (err) {
        if (Date.now() > deadline || haproxy.exitCode !== null)
          throw new Error(`no login through HAProxy: ${(err as Error).message}\n${haproxyOut}`)
        await new Promise((r) => setTimeout(r, 200))
      } finally {
        await c.end().catch(() => {})
      }
    }
  })
  after(async () => {
    haproxy?.kill('SIGTERM')
    await Promise.all(poolers.map((p) => p.stop()))
  })

  test('login and cancel both through the balancer: every cancel cancels its query', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const rounds = 12
    let cancelled = 0
    for (let round = 0; round < rounds; round++) {
      const c = client()
      await c.connect()
      try {
        const sql = `SELECT pg_sleep(30) /* haproxy round ${round} */`
        const outcome = c.query(sql).then(
          () => null,
          (err: Error & { code?: string }) => err,
        )
        await waitUntilRunning(sql)
        const { pid, secret } = keyOf(c)
        await sendCancel(balancer, pid, secret)
        const err = await outcome
        assert.equal(err?.code, '57014', `round ${round}: not cancelled`)
        cancelled++
      } finally {
        await c.end().catch(() => {})
      }
    }
    assert.equal(cancelled, rounds)
    // Round-robin sent some cancels to the pooler that did not own the key: forwarded.
    let forwarded = 0
    for (const p of poolers) {
      const rows = await withAdmin(p, 'SHOW PEER_POOLS')
      forwarded += rows.length
    }
    assert.ok(forwarded > 0, 'no cancel needed forwarding: round-robin was not exercised')
  })

  test('no client sees another client’s rows or settings', { timeout: TEST_TIMEOUT }, async () => {
    const clients = Array.from({ length: 8 }, (_, i) => i)
    await Promise.all(
      clients.map(async (me) => {
        const c = client()
        await c.connect()
        try {
          for (let i = 0; i < 25; i++) {
            await c.query('BEGIN')
            await c.query(`SET LOCAL application_name = 'client-${me}'`)
            const { rows } = await c.query(
              "SELECT $1::int AS me, current_setting('application_name') AS app",
              [me],
            )
            await c.query('COMMIT')
            assert.equal(rows[0].me, me)
            assert.equal(rows[0].app, `client-${me}`)
          }
        } finally {
          await c.end().catch(() => {})
        }
      }),
    )
  })

  test('one pooler killed (SIGKILL): new clients go to the other; a cancel for the dead peer harms nothing', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    // A session on the pooler that will die, to get a key that names it.
    const doomed = poolers[1]!
    const victim = new pg.Client({
      host: '127.0.0.1',
      port: doomed.port,
      user: 'postgres',
      database: 'app',
    })
    victim.on('error', () => {})
    await victim.connect()
    const deadKey = keyOf(victim)
    doomed.child.kill('SIGKILL')
    await doomed.exited
    // Every fresh client through the balancer now lands on the survivor:
    // HAProxy retries a refused connection on the other server, and its check
    // takes the dead one out. 20 logins in a row must all work.
    let ok = 0
    const deadline = Date.now() + 60_000
    while (ok < 20) {
      const c = client()
      try {
        await c.connect()
        await c.query('SELECT 1')
        ok++
      } catch (err) {
        ok = 0
        assert.ok(Date.now() < deadline, `logins still fail: ${(err as Error).message}`)
      } finally {
        await c.end().catch(() => {})
      }
    }
    // The health check (pgsql-check against the console) took the dead one out, only it.
    const marked = Date.now() + 30_000
    while (!/pooler2 is DOWN/.test(haproxyOut)) {
      assert.ok(Date.now() < marked, `HAProxy never marked pooler2 down:\n${haproxyOut}`)
      await new Promise((r) => setTimeout(r, 100))
    }
    assert.doesNotMatch(haproxyOut, /pooler1 is DOWN/)
    // A cancel naming the dead peer: forwarded, refused, logged; nothing else breaks.
    await sendCancel(balancer, deadKey.pid, deadKey.secret)
    const survivor = poolers[0]!
    const until = Date.now() + 10_000
    while (!/cancel request to peer failed/.test(survivor.output())) {
      assert.ok(Date.now() < until, 'the failed forward to the dead peer was not logged')
      await new Promise((r) => setTimeout(r, 50))
    }
    // The survivor still cancels its own clients' queries, through the balancer.
    const c = client()
    await c.connect()
    try {
      const sql = 'SELECT pg_sleep(30) /* after the kill */'
      const outcome = c.query(sql).then(
        () => null,
        (err: Error & { code?: string }) => err,
      )
      await waitUntilRunning(sql)
      const { pid, secret } = keyOf(c)
      await sendCancel(balancer, pid, secret)
      assert.equal((await outcome)?.code, '57014')
    } finally {
      await c.end().catch(() => {})
    }
  })
})

async function withAdmin(p: Pooler, sql: string): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: p.port,
    user: 'pgbouncer',
    database: 'pgbouncer',
  })
  await c.connect()
  try {
    return (await c.query(sql)).rows
  } finally {
    await c.end().catch(() => {})
  }
}
