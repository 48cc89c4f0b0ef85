import assert from 'node:assert/strict'
import { execFile, spawn, spawnSync } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { hiddenTools, skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import pg from 'pg'
import { errorFields, queryMessage, RawConnection } from './raw-protocol.ts'
import {
  metricsBase,
  type Pooler,
  scrapeMetrics,
  startPooler,
  tempDir,
  until,
  withClient,
  writeIni,
} from './support.ts'

// LISTEN/NOTIFY in transaction mode: two workers, pool_size 1, so listeners
// and notifiers share the one server of the pool; the pooler answers LISTEN
// itself and one listening server per database carries the channels.

const PSQL = findPgTool('psql')
const PGJDBC = '/usr/share/java/postgresql.jar'
const JAVA =
  hiddenTools().has('pgjdbc') ||
  !existsSync(PGJDBC) ||
  spawnSync('java', ['-version'], { stdio: 'ignore' }).status !== 0
    ? null
    : 'java'

interface Got {
  channel: string
  payload: string
  pid: number
}

/** A node-postgres client that LISTENs to `channels` through the pooler and collects what arrives. */
async function listening(pooler: Pooler, database: string, ...channels: string[]) {
  const client = pooler.client({ database })
  const got: Got[] = []
  client.on('notification', (n) =>
    got.push({ channel: n.channel, payload: n.payload ?? '', pid: n.processId }),
  )
  await client.connect()
  for (const channel of channels) await client.query(`LISTEN ${channel}`)
  return { client, got }
}

/** The first python3 (the system's first: pyenv shims hide its packages) that has `module`. */
async function pythonWith(module: string): Promise<string | null> {
  if (hiddenTools().has(module)) return null
  for (const bin of ['/usr/bin/python3', 'python3']) {
    if (bin.startsWith('/') && !existsSync(bin)) continue
    const ok = await new Promise<boolean>((resolve) => {
      const probe = spawn(bin, ['-c', `import ${module}`], { stdio: 'ignore' })
      probe.on('exit', (code) => resolve(code === 0))
      probe.on('error', () => resolve(false))
    })
    if (ok) return bin
  }
  return null
}

/** Runs a listening program; resolves with its stdout lines, calling `onLine` as each comes. */
function runProgram(
  bin: string,
  args: string[],
  onLine: (line: string) => void,
): Promise<string[]> {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    out += s
    let nl = out.indexOf('\n')
    while (nl >= 0) {
      const line = out.slice(0, nl)
      out = out.slice(nl + 1)
      lines.push(line)
      onLine(line)
      nl = out.indexOf('\n')
    }
  })
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    err += s
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve(lines)
      else reject(new Error(`${bin} exited ${code}: ${err}`))
    })
  })
}

describe('LISTEN/NOTIFY in transaction mode', () => {
  const db = usePostgres({ databases: ['app', 'leave'] })
  let pooler: Pooler
  const direct = () => new pg.Client({ connectionString: db.server.url({ database: 'app' }) })

  before(async () => {
    const ini = writeIni({
      databases: {
        app: `host=127.0.0.1 port=${db.server.port} dbname=app`,
        leave: `host=127.0.0.1 port=${db.server.port} dbname=leave`,
      },
      pgbouncer: {
        pool_mode: 'transaction',
        default_pool_size: 1,
        max_client_conn: 100,
        admin_users: 'postgres',
        // pgjdbc sends it in its startup packet.
        ignore_startup_parameters: 'extra_float_digits',
      },
    })
    pooler = await startPooler(ini, {
      workers: 2,
      args: ['--metrics', '127.0.0.1:0'],
      timeoutMs: 60_000,
    })
  })
  after(() => pooler.stop())

  test('20 NOTIFYs from a client of the pool reach every listener once, in order, with the notifying backend pid', async () => {
    // Enough listeners that both workers have some.
    const listeners = await Promise.all(
      Array.from({ length: 8 }, () => listening(pooler, 'app', 'jobs')),
    )
    const bystander = await listening(pooler, 'app', 'other')
    const notifier = pooler.client({ database: 'app' })
    const busy = pooler.client({ database: 'app' })
    await notifier.connect()
    await busy.connect()
    try {
      let querying = true
      const load = (async () => {
        while (querying) await busy.query('SELECT pg_sleep(0.001)')
      })()
      const pids: number[] = []
      for (let i = 0; i < 20; i++) {
        const { rows } = await notifier.query('SELECT pg_backend_pid() AS pid, pg_notify($1, $2)', [
          'jobs',
          String(i),
        ])
        pids.push(rows[0].pid)
      }
      querying = false
      await load
      await until('20 notifications at every listener', async () =>
        listeners.every((l) => l.got.length >= 20),
      )
      // Sent on the same listening server after the jobs: once it is in, no stray job is on its way.
      await notifier.query("NOTIFY other, 'end'")
      await until('the bystander notification', async () => bystander.got.length > 0)
      for (const l of listeners) {
        assert.deepEqual(
          l.got.map((g) => g.payload),
          Array.from({ length: 20 }, (_, i) => String(i)),
        )
        assert.deepEqual(
          l.got.map((g) => g.pid),
          pids,
        )
        assert.ok(l.got.every((g) => g.channel === 'jobs'))
      }
      assert.deepEqual(
        bystander.got.map((g) => [g.channel, g.payload]),
        [['other', 'end']],
      )
    } finally {
      await Promise.all([...listeners, bystander].map((l) => l.client.end()))
      await notifier.end()
      await busy.end()
    }
  })

  test('a NOTIFY from outside the pooler arrives, with a 7999-byte payload and its sender pid', async () => {
    const l = await listening(pooler, 'app', 'outside', '"MixedCase"')
    const sender = direct()
    await sender.connect()
    try {
      const big = 'é'.repeat(3000) + 'x'.repeat(1999)
      assert.equal(Buffer.byteLength(big), 7999)
      await sender.query('SELECT pg_notify($1, $2)', ['outside', big])
      await sender.query('SELECT pg_notify($1, $2)', ['MixedCase', 'quoted'])
      await sender.query('SELECT pg_notify($1, $2)', ['mixedcase', 'folded: not listened'])
      await until('two notifications', async () => l.got.length >= 2)
      const pid = (sender as unknown as { processID: number }).processID
      assert.deepEqual(l.got, [
        { channel: 'outside', payload: big, pid },
        { channel: 'MixedCase', payload: 'quoted', pid },
      ])
    } finally {
      await sender.end()
      await l.client.end()
    }
  })

  test('LISTEN in a transaction takes effect at COMMIT; rolled back, it does nothing', async () => {
    const c = pooler.client({ database: 'app' })
    const got: string[] = []
    c.on('notification', (n) => got.push(`${n.channel}:${n.payload}`))
    await c.connect()
    const sender = pooler.client({ database: 'app' })
    await sender.connect()
    try {
      await c.query('BEGIN')
      await c.query('LISTEN tx_rolled')
      await c.query('ROLLBACK')
      await c.query('BEGIN')
      const res = await c.query('LISTEN tx_committed')
      assert.equal(res.command, 'LISTEN')
      await c.query('COMMIT')
      // A failed transaction refuses LISTEN, as PostgreSQL does.
      await c.query('BEGIN')
      await assert.rejects(c.query('SELECT 1/0'))
      await assert.rejects(
        c.query('LISTEN tx_failed'),
        (err: { code?: string }) => err.code === '25P02',
      )
      await c.query('COMMIT')
      await c.query('LISTEN sentinel')
      await sender.query("NOTIFY tx_rolled, 'r'")
      await sender.query("NOTIFY tx_failed, 'f'")
      await sender.query("NOTIFY tx_committed, 'c'")
      await sender.query("NOTIFY sentinel, 's'")
      await until('the sentinel', async () => got.includes('sentinel:s'))
      assert.deepEqual(got, ['tx_committed:c', 'sentinel:s'])
      // UNLISTEN * leaves them all, answered as PostgreSQL answers it.
      const un = await c.query('UNLISTEN *')
      assert.equal(un.command, 'UNLISTEN')
      await c.query('LISTEN sentinel')
      await sender.query("NOTIFY tx_committed, 'c2'")
      await sender.query("NOTIFY sentinel, 's2'")
      await until('the second sentinel', async () => got.includes('sentinel:s2'))
      assert.deepEqual(got, ['tx_committed:c', 'sentinel:s', 'sentinel:s2'])
    } finally {
      await c.end()
      await sender.end()
    }
  })

  test('a client that disconnects leaves its channels; a channel nobody listens to is unlistened', async () => {
    const monitor = new pg.Client({ connectionString: db.server.url({ database: 'leave' }) })
    await monitor.connect()
    const listenerQuery = async (): Promise<string[]> =>
      (
        await monitor.query(
          "SELECT query FROM pg_stat_activity WHERE datname = 'leave' AND query ~ '^(UN)?LISTEN '",
        )
      ).rows.map((r) => r.query)
    try {
      const a = await listening(pooler, 'leave', 'gone_a')
      const b = await listening(pooler, 'leave', 'gone_b')
      await until('one listening server', async () => (await listenerQuery()).length === 1)
      await a.client.end()
      await until('gone_a unlistened', async () => {
        const q = await listenerQuery()
        return q.length === 1 && q[0] === 'UNLISTEN "gone_a"'
      })
      await b.client.end()
      // No channel left: the listening server closes.
      await until('no listening server', async () => (await listenerQuery()).length === 0)
    } finally {
      await monitor.end()
    }
  })

  test('the listening server killed by pg_terminate_backend is reopened and listens again', async () => {
    const l = await listening(pooler, 'app', 'survive')
    const monitor = direct()
    await monitor.connect()
    const listenerPid = async (): Promise<number | null> =>
      (
        await monitor.query(
          "SELECT pid FROM pg_stat_activity WHERE datname = 'app' AND query ~ '^(UN)?LISTEN '",
        )
      ).rows[0]?.pid ?? null
    try {
      const before = await listenerPid()
      assert.ok(before !== null, 'a listening server runs')
      await monitor.query('SELECT pg_terminate_backend($1)', [before])
      // Notifications sent in the gap are lost; one sent once it listens again arrives.
      let n = 0
      await until('a notification after the reopen', async () => {
        await monitor.query('SELECT pg_notify($1, $2)', ['survive', String(n++)])
        await new Promise((r) => setTimeout(r, 50))
        return l.got.length > 0
      })
      const after = await listenerPid()
      assert.ok(
        after !== null && after !== before,
        `a new listening server (was ${before}, now ${after})`,
      )
      assert.match(pooler.output(), /notification listener lost/)
      // The gap is counted, and the listener shows in SHOW SERVERS in a state of its own.
      const base = metricsBase(pooler)
      await until('the listener up again in /metrics', async () => {
        const m = await scrapeMetrics(base)
        return m.get('pgbouncer_cluster_notify_listener_up{database="app"}') === 1
      })
      const m = await scrapeMetrics(base)
      assert.ok((m.get('pgbouncer_cluster_notify_listener_gaps_total{database="app"}') ?? 0) >= 1)
      assert.ok((m.get('pgbouncer_cluster_notify_channels{database="app"}') ?? 0) >= 1)
      const servers = await withClient(
        { connectionString: pooler.url({ database: 'pgbouncer' }) },
        async (admin) => (await admin.query('SHOW SERVERS')).rows,
      )
      const listenRows = servers.filter((r) => r.state === 'listen')
      assert.equal(listenRows.length, 1, JSON.stringify(servers))
      assert.equal(listenRows[0].database, 'app')
      assert.equal(Number(listenRows[0].remote_pid), after)
      const seen = l.got.map((g) => Number(g.payload))
      assert.deepEqual(
        seen,
        [...new Set(seen)].sort((x, y) => x - y),
        'in order, no duplicates',
      )
    } finally {
      await monitor.end()
      await l.client.end()
    }
  })

  test('a client that does not read its notifications is disconnected past its bound; others get them all', async () => {
    const slow = await RawConnection.connect(pooler.host, pooler.port)
    await slow.login({ user: 'postgres', database: 'app' })
    slow.send(queryMessage('LISTEN flood'))
    const answer = await slow.until('Z', 10_000)
    assert.deepEqual(
      answer.map((m) => m.type),
      ['C', 'Z'],
    )
    slow.socket.pause()
    const healthy = await listening(pooler, 'app', 'flood')
    const count = 6000
    const step = 500
    // In steps of 4 MB, each once the healthy listener has the one before: on
    // a loaded machine a reading client must not fall 8 MB behind a burst.
    await withClient({ connectionString: db.server.url({ database: 'app' }) }, async (c) => {
      for (let from = 1; from <= count; from += step) {
        await c.query(
          "SELECT pg_notify('flood', i || repeat('x', 7990)) FROM generate_series($1::int, $2::int) i",
          [from, from + step - 1],
        )
        await until(
          'the healthy listener keeping up',
          async () => healthy.got.length >= from + step - 1,
          60_000,
        )
      }
    })
    try {
      await until(
        'the slow client dropped',
        async () => /closing a client that does not read its notifications/.test(pooler.output()),
        60_000,
      )
      await until(
        'all notifications at the healthy listener',
        async () => healthy.got.length >= count,
        60_000,
      )
      assert.equal(healthy.got.length, count)
      assert.deepEqual(
        healthy.got.map((g) => Number.parseInt(g.payload, 10)),
        Array.from({ length: count }, (_, i) => i + 1),
      )
      slow.socket.resume()
      const rest = await slow.drain(20_000)
      const error = rest.find((m) => m.type === 'E')
      assert.ok(error, 'the slow client is told why')
      const fields = errorFields(error.body)
      assert.equal(fields.severity, 'FATAL')
      assert.equal(fields.code, '53400')
      assert.match(fields.message, /does not read its notifications/)
      assert.ok(slow.closed, 'and its connection closed')
    } finally {
      slow.destroy()
      await healthy.client.end()
    }
  })

  test('psycopg: conn.notifies() gets every notification once', async (t) => {
    const bin = await pythonWith('psycopg')
    if (bin === null) {
      t.skip('psycopg not installed (apt-get install -y python3-psycopg)')
      return
    }
    const script = `
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("LISTEN py_jobs")
print("ready", flush=True)
n = 0
for note in conn.notifies():
    print(note.channel, note.payload, note.pid, flush=True)
    n += 1
    if n == 20:
        break
conn.close()
`
    await runNotifyProgram(bin, ['-c', script, pooler.url({ database: 'app' })], 'py_jobs')
  })

  test('asyncpg: add_listener gets every notification once', async (t) => {
    const bin = await pythonWith('asyncpg')
    if (bin === null) {
      t.skip('asyncpg not installed (apt-get install -y python3-asyncpg)')
      return
    }
    const script = `
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    done = asyncio.get_running_loop().create_future()
    got = []
    def on_note(connection, pid, channel, payload):
        print(channel, payload, pid, flush=True)
        got.append(payload)
        if len(got) == 20 and not done.done():
            done.set_result(None)
    await conn.add_listener("py_jobs", on_note)
    print("ready", flush=True)
    await done
    await conn.close()
asyncio.run(main())
`
    await runNotifyProgram(bin, ['-c', script, pooler.url({ database: 'app' })], 'py_jobs')
  })

  test('pgjdbc: getNotifications() gets every notification once', {
    skip:
      JAVA === null ? 'pgjdbc not installed (apt-get install -y libpostgresql-jdbc-java)' : false,
  }, async () => {
    const source = join(tempDir(), 'Listen.java')
    writeFileSync(
      source,
      `import java.sql.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
public class Listen {
  public static void main(String[] args) throws Exception {
    Connection c = DriverManager.getConnection(args[0], "postgres", "");
    try (Statement s = c.createStatement()) { s.execute("LISTEN jdbc_jobs"); }
    System.out.println("ready");
    System.out.flush();
    PGConnection pg = c.unwrap(PGConnection.class);
    int n = 0;
    while (n < 20) {
      PGNotification[] got = pg.getNotifications(1000);
      if (got == null) continue;
      for (PGNotification g : got) {
        System.out.println(g.getName() + " " + g.getParameter() + " " + g.getPID());
        System.out.flush();
        n++;
      }
    }
    c.close();
  }
}
`,
    )
    const url = `jdbc:postgresql://${pooler.host}:${pooler.port}/app`
    await runNotifyProgram(JAVA!, ['-cp', PGJDBC, source, url], 'jdbc_jobs')
  })

  test('psql: the notification is printed once, with the notifying backend pid', {
    skip: skipWithout('psql', PSQL),
  }, async () => {
    // Each -c is a Query of its own; psql prints what arrived after each command,
    // so a few short ones follow the NOTIFY.
    const commands = [
      'LISTEN psql_jobs',
      "SELECT 'pid=' || pg_backend_pid(), pg_notify('psql_jobs', 'from psql')",
      ...Array.from({ length: 40 }, () => 'SELECT pg_sleep(0.05)'),
    ]
    const { stdout } = await promisify(execFile)(
      PSQL!,
      [pooler.url({ database: 'app' }), '-X', '-A', '-t', ...commands.flatMap((c) => ['-c', c])],
      { timeout: 60_000 },
    )
    const pid = /pid=(\d+)/.exec(stdout)?.[1]
    assert.ok(pid, stdout)
    const lines = stdout.split('\n').filter((l) => l.startsWith('Asynchronous notification'))
    assert.deepEqual(lines, [
      `Asynchronous notification "psql_jobs" with payload "from psql" received from server process with PID ${pid}.`,
    ])
  })

  /** A listening program on `channel`; 20 NOTIFYs through the pooler; each arrives once, in order. */
  async function runNotifyProgram(bin: string, args: string[], channel: string): Promise<void> {
    const notifier = pooler.client({ database: 'app' })
    await notifier.connect()
    try {
      const pids: number[] = []
      const ready = Promise.withResolvers<void>()
      const run = runProgram(bin, args, (line) => {
        if (line === 'ready') ready.resolve()
      })
      run.catch((err) => ready.reject(err))
      await ready.promise
      for (let i = 0; i < 20; i++) {
        const { rows } = await notifier.query('SELECT pg_backend_pid() AS pid, pg_notify($1, $2)', [
          channel,
          String(i),
        ])
        pids.push(rows[0].pid)
      }
      const lines = await run
      assert.deepEqual(
        lines.slice(1),
        pids.map((pid, i) => `${channel} ${i} ${pid}`),
      )
    } finally {
      await notifier.end()
    }
  }
})

describe('LISTEN in session mode', () => {
  const db = usePostgres({ databases: ['app'] })
  let pooler: Pooler

  before(async () => {
    const ini = writeIni({
      databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
      pgbouncer: { pool_mode: 'session', default_pool_size: 2 },
    })
    pooler = await startPooler(ini, { workers: 2, timeoutMs: 60_000 })
  })
  after(() => pooler.stop())

  test('goes to the session’s own server, as before', async () => {
    const l = await listening(pooler, 'app', 'sess')
    try {
      // The session's server itself listens: PostgreSQL answers for it.
      const { rows } = await l.client.query('SELECT pg_listening_channels() AS c')
      assert.deepEqual(
        rows.map((r) => r.c),
        ['sess'],
      )
      await withClient({ connectionString: db.server.url({ database: 'app' }) }, (c) =>
        c.query("NOTIFY sess, 'hello'"),
      )
      await until('the notification', async () => l.got.length > 0)
      assert.equal(l.got[0]!.payload, 'hello')
    } finally {
      await l.client.end()
    }
  })
})
