import assert from 'node:assert/strict'
import net from 'node:net'
import { after, before, describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { cancelRequestPacket } from './raw-protocol.ts'
import { freePort, type Pooler, startPooler, tempDir, withClient, writeIni } from './support.ts'

// [peers] and peer_id (PgBouncer 1.19): several pooler processes behind one
// address (a load balancer, or so_reuseport) each give out cancel keys naming
// themselves; a CancelRequest that reaches the wrong one is sent on to the
// right one, over TCP or its unix socket, and from there to PostgreSQL.
const TEST_TIMEOUT = 60_000
const db = usePostgres({ databases: ['app'] })

function keyOf(c: pg.Client): { pid: number; secret: number } {
  const k = c as unknown as { processID: number; secretKey: number }
  return { pid: k.processID, secret: k.secretKey }
}

/** The same key naming another peer (bytes 1-2 of the pid, low byte first, as PgBouncer). */
function withPeer(pid: number, peer: number): number {
  return (pid & 0xff0000ff) | ((peer & 0xff) << 16) | ((peer >>> 8) << 8)
}

/** Sends a CancelRequest and resolves with what came back before the pooler hung up. */
function sendCancel(port: number, pid: number, secret: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    const got: Buffer[] = []
    socket.on('connect', () => socket.write(cancelRequestPacket(pid, secret)))
    socket.on('data', (b) => got.push(b))
    socket.on('error', reject)
    socket.on('close', () => resolve(Buffer.concat(got)))
    socket.setTimeout(5000, () =>
      socket.destroy(new Error('the pooler kept the cancel connection open')),
    )
  })
}

async function waitUntilRunning(sql: string): Promise<void> {
  const deadline = Date.now() + 10_000
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

/** Runs `sql` on `pooler` and resolves with its error (null when it completed). */
async function running(pooler: Pooler, sql: string) {
  const c = pooler.client({ database: 'app' })
  await c.connect()
  const outcome = c.query(sql).then(
    () => null,
    (err: Error & { code?: string }) => err,
  )
  await waitUntilRunning(sql)
  return { client: c, key: keyOf(c), outcome }
}

async function adminRows(pooler: Pooler, sql: string): Promise<Record<string, unknown>[]> {
  return withClient({ connectionString: pooler.url({ database: 'pgbouncer' }) }, async (c) => {
    const { rows } = await c.query(sql)
    return rows
  })
}

describe('[peers]: a CancelRequest that lands on the wrong pooler', () => {
  const poolers: Record<number, Pooler> = {}
  let ports: Record<number, number>
  let unixDir: string
  let downPort: number

  before(async () => {
    // Peers 1 and 2 talk TCP; peer 3 is reached through its unix socket only;
    // peer 4 is configured but never started (a peer that is down);
    // peer 5 points back at peer 1 itself (a loop).
    ports = { 1: await freePort(), 2: await freePort(), 3: await freePort() }
    downPort = await freePort()
    unixDir = tempDir()
    const peers = {
      1: `host=127.0.0.1 port=${ports[1]}`,
      2: `host=127.0.0.1 port=${ports[2]}`,
      3: `host=${unixDir} port=${ports[3]}`,
      4: `host=127.0.0.1 port=${downPort}`,
      5: `host=127.0.0.1 port=${ports[1]}`,
    }
    for (const id of [1, 2, 3]) {
      const ini = writeIni({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
        pgbouncer: {
          pool_mode: 'transaction',
          default_pool_size: 4,
          listen_port: ports[id]!,
          peer_id: id,
          unix_socket_dir: id === 3 ? unixDir : '',
          admin_users: 'postgres',
        },
        peers,
      })
      poolers[id] = await startPooler(ini, {
        workers: 2,
        args: ['--log-level', 'debug'],
        timeoutMs: 90_000,
      })
    }
  })
  after(async () => {
    await Promise.all(Object.values(poolers).map((p) => p.stop()))
  })

  test('the key names its peer: a cancel sent to another peer is forwarded and cancels the query (57014)', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    for (const [owner, receiver] of [
      [1, 2],
      [2, 1],
      [1, 3],
      [3, 1], // forwarded to peer 3 through its unix socket
      [3, 2],
    ] as const) {
      const sql = `SELECT pg_sleep(20) /* owner ${owner} receiver ${receiver} */`
      const q = await running(poolers[owner]!, sql)
      try {
        const reply = await sendCancel(ports[receiver]!, q.key.pid, q.key.secret)
        assert.equal(reply.length, 0, 'a CancelRequest gets no answer')
        const err = await q.outcome
        assert.ok(err !== null, `${owner} <- ${receiver}: not cancelled`)
        assert.equal(err.code, '57014')
        // The session goes on after its cancelled query.
        const { rows } = await q.client.query('SELECT 1 AS one')
        assert.equal(rows[0].one, 1)
      } finally {
        await q.client.end().catch(() => {})
      }
    }
  })

  test('keys of an unknown peer, a spent TTL and a loop are dropped without a word; nothing else is disturbed', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const sql = 'SELECT pg_sleep(1.5) /* must not be cancelled */'
    const q = await running(poolers[2]!, sql)
    try {
      const { pid, secret } = q.key
      // Peer 99 is in nobody's [peers].
      assert.equal((await sendCancel(ports[1]!, withPeer(pid, 99), secret)).length, 0)
      // The right peer, but the TTL is spent: peer 1 must not forward it.
      assert.equal((await sendCancel(ports[1]!, pid, secret & ~3)).length, 0)
      // Peer 5 is peer 1 itself under another id: 1 forwards to itself until the TTL runs out.
      assert.equal((await sendCancel(ports[1]!, withPeer(pid, 5), secret)).length, 0)
      // A wrong secret reaches peer 2 and matches nothing there.
      assert.equal((await sendCancel(ports[1]!, pid, secret ^ 0x400)).length, 0)
      assert.equal(await q.outcome, null, 'the query ran to its end')
    } finally {
      await q.client.end().catch(() => {})
    }
    const deadline = Date.now() + 10_000
    while (!/TTL was exhausted[\s\S]*TTL was exhausted/.test(poolers[1]!.output())) {
      assert.ok(Date.now() < deadline, 'the spent and the looping key were not both dropped')
      await new Promise((r) => setTimeout(r, 50))
    }
    // The loop went round three times (TTL 3, 2, 1), then stopped: peer 1 still serves.
    assert.match(poolers[1]!.output(), /no such peer/)
    await withClient({ connectionString: poolers[1]!.url({ database: 'app' }) }, async (c) => {
      assert.equal((await c.query('SELECT 2 AS two')).rows[0].two, 2)
    })
  })

  test('a peer that is down when a cancel for it arrives: the request is lost, the rest keeps working', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const q = await running(poolers[1]!, 'SELECT pg_sleep(20) /* peer down */')
    try {
      // Peer 4 has nobody listening on its port.
      const reply = await sendCancel(ports[2]!, withPeer(q.key.pid, 4), q.key.secret)
      assert.equal(reply.length, 0)
      const deadline = Date.now() + 10_000
      while (!/cancel request to peer failed/.test(poolers[2]!.output())) {
        assert.ok(Date.now() < deadline, 'no failed forward was logged')
        await new Promise((r) => setTimeout(r, 50))
      }
      // Peer 2 and the cancel path still work: the real key through peer 2 cancels.
      await sendCancel(ports[2]!, q.key.pid, q.key.secret)
      const err = await q.outcome
      assert.equal(err?.code, '57014')
    } finally {
      await q.client.end().catch(() => {})
    }
  })

  test('SHOW PEERS and SHOW PEER_POOLS with PgBouncer 1.19 columns', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const peers = await adminRows(poolers[1]!, 'SHOW PEERS')
    assert.deepEqual(
      peers.map((r) => Object.keys(r)),
      peers.map(() => ['peer_id', 'host', 'port', 'pool_size']),
    )
    assert.deepEqual(
      peers.map((r) => [r.peer_id, r.host, r.port, r.pool_size]),
      [
        [1, '127.0.0.1', ports[1], 4],
        [2, '127.0.0.1', ports[2], 4],
        [3, unixDir, ports[3], 4],
        [4, '127.0.0.1', downPort, 4],
        [5, '127.0.0.1', ports[1], 4],
      ],
    )
    const pools = await adminRows(poolers[1]!, 'SHOW PEER_POOLS')
    assert.ok(pools.length > 0, 'peer 1 forwarded cancels: it has peer pools')
    for (const r of pools) {
      assert.deepEqual(Object.keys(r), [
        'peer_id',
        'cl_active_cancel_req',
        'cl_waiting_cancel_req',
        'sv_active_cancel',
        'sv_login',
      ])
    }
    assert.ok(pools.some((r) => r.peer_id === 2))
  })
})
