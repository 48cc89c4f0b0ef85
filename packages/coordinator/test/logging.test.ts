import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, tempDir, writeIni } from './support.ts'

// log_stats, log_pooler_errors and disable_pqexec. Each body runs against
// pgbouncer-cluster and against PgBouncer 1.18, which has all three.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** What 1.18 and 1.24 share of the stats line; 1.24 adds the prepared-statement rates after queries/s. */
const STATS_LINE =
  /stats: (\d+) xacts\/s, (\d+) queries\/s, (?:\d+ client parses\/s, \d+ server parses\/s, \d+ binds\/s, )?in (\d+) B\/s, out (\d+) B\/s, xact \d+ us, query \d+ us, wait \d+ us/g
const STATS_LINE_1_24 =
  /stats: \d+ xacts\/s, \d+ queries\/s, \d+ client parses\/s, \d+ server parses\/s, \d+ binds\/s, in \d+ B\/s, out \d+ B\/s, xact \d+ us, query \d+ us, wait \d+ us/

type Start = (spec: IniSpec) => Promise<Pooler>
const targets: [string, Start, false | string][] = [
  ['pgbouncer-cluster', (spec) => startPooler(writeIni(spec), { workers: 2 }), false],
  ['PgBouncer 1.18', startPgBouncer, NO_PGBOUNCER],
]

describe('logging', { timeout: 120_000 }, () => {
  const db = usePostgres({ databases: ['app'] })
  const spec = (settings: Record<string, string | number>): IniSpec => ({
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: { pool_mode: 'transaction', ...settings },
  })

  async function client(pooler: Pooler, database = 'app'): Promise<pg.Client> {
    const c = pooler.client({ database })
    c.on('error', () => {})
    await c.connect()
    return c
  }

  test('pgbouncer-cluster: log_connections and log_disconnections name the client by its address and port', async () => {
    const pooler = await startPooler(
      writeIni(spec({ log_connections: 1, log_disconnections: 1 })),
      { workers: 1 },
    )
    const c = await client(pooler)
    const port = (c as unknown as { connection: { stream: { localPort: number } } }).connection
      .stream.localPort
    await c.query('SELECT 1')
    await c.end()
    const remote = `"remote":"127.0.0.1:${port}"`
    let output = ''
    for (let i = 0; i < 30 && !output.includes('closing client'); i++) {
      await sleep(100)
      output = pooler.output()
    }
    assert.match(output, new RegExp(`${remote}[^\\n]*"msg":"login"`))
    assert.match(output, new RegExp(`${remote}[^\\n]*"msg":"closing client"`))
    await pooler.stop()
  })

  test('pgbouncer-cluster: the start-up warnings reach the logfile too', async () => {
    const dir = tempDir()
    const logfile = join(dir, 'pooler.log')
    const pooler = await startPooler(writeIni(spec({ logfile, dns_max_ttl: 10 })), { workers: 1 })
    try {
      assert.match(pooler.output(), /pgbouncer-cluster: warning: .*no effect: dns_max_ttl/)
      const warning = readFileSync(logfile, 'utf8')
        .split('\n')
        .find((l) => l.includes('dns_max_ttl'))
      assert.ok(warning, readFileSync(logfile, 'utf8'))
      assert.equal(JSON.parse(warning).level, 40)
    } finally {
      await pooler.stop()
    }
  })

  for (const [name, start, skip] of targets) {
    test(`${name}: a failed server login is logged once, naming the pool as db/user`, {
      skip,
    }, async () => {
      const pooler = await start({
        databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=nosuchdb` },
        pgbouncer: { pool_mode: 'transaction' },
      })
      const c = pooler.client({ database: 'app' })
      c.on('error', () => {})
      await assert.rejects(c.connect(), { message: 'database "nosuchdb" does not exist' })
      let lines: string[] = []
      for (let i = 0; i < 30 && lines.length === 0; i++) {
        await sleep(100)
        lines = pooler
          .output()
          .split('\n')
          .filter((l) => l.includes('server login failed'))
      }
      await sleep(300)
      lines = pooler
        .output()
        .split('\n')
        .filter((l) => l.includes('server login failed'))
      assert.equal(lines.length, 1, pooler.output())
      assert.match(pooler.output(), /app\/postgres/)
      assert.doesNotMatch(pooler.output(), /\\u0000/, 'the internal pool key')
      await pooler.stop()
    })

    test(`${name}: log_stats logs the stats line every stats_period, with the traffic in it`, {
      skip,
    }, async () => {
      const pooler = await start(spec({ log_stats: 1, stats_period: 1 }))
      const c = await client(pooler)
      for (let i = 0; i < 30; i++) await c.query('SELECT 1')
      let busy: RegExpExecArray | undefined
      for (let i = 0; i < 60 && busy === undefined; i++) {
        await sleep(100)
        busy = [...pooler.output().matchAll(STATS_LINE)].find((m) => Number(m[2]) > 0)
      }
      assert.ok(busy, `a stats line with queries/s > 0 in:\n${pooler.output()}`)
      assert.ok(Number(busy[3]) > 0 && Number(busy[4]) > 0, busy[0])
      if (name === 'pgbouncer-cluster') assert.match(busy[0], STATS_LINE_1_24)
      await c.end()
      await pooler.stop()
    })

    test(`${name}: log_stats = 0 logs no stats line`, { skip }, async () => {
      const pooler = await start(spec({ log_stats: 0, stats_period: 1 }))
      const c = await client(pooler)
      await c.query('SELECT 1')
      await sleep(2500)
      assert.doesNotMatch(pooler.output(), /stats: \d+ xacts\/s/)
      await c.end()
      await pooler.stop()
    })

    for (const on of [1, 0]) {
      test(`${name}: log_pooler_errors = ${on} ${on ? 'logs' : 'does not log'} the error a client was sent`, {
        skip,
      }, async () => {
        const pooler = await start(spec({ log_pooler_errors: on }))
        const c = pooler.client({ database: 'nosuch' })
        c.on('error', () => {})
        await assert.rejects(c.connect(), { message: 'no such database: nosuch' })
        await sleep(300)
        if (on) assert.match(pooler.output(), /pooler error: no such database: nosuch/)
        else assert.doesNotMatch(pooler.output(), /pooler error/)
        await pooler.stop()
      })
    }

    test(`${name}: disable_pqexec refuses the simple query protocol and drops the client; extended queries run`, {
      skip,
    }, async () => {
      const pooler = await start(spec({ disable_pqexec: 1 }))
      const extended = await client(pooler)
      const { rows } = await extended.query({ text: 'SELECT $1::int AS x', values: [5] })
      assert.deepEqual(rows, [{ x: 5 }])
      const simple = await client(pooler)
      await assert.rejects(simple.query('SELECT 1'), {
        message: 'PQexec disallowed',
        code: '08P01',
        severity: 'FATAL',
      })
      await assert.rejects(simple.query({ text: 'SELECT $1::int AS x', values: [1] }))
      // Multi-statement strings, the injection this guards against, never reach a server.
      const multi = await client(pooler)
      await assert.rejects(multi.query('SELECT 1; SELECT 2'), { message: 'PQexec disallowed' })
      assert.equal(
        (await extended.query({ text: 'SELECT $1::int AS x', values: [6] })).rows[0].x,
        6,
      )
      await extended.end()
      await pooler.stop()
    })
  }
})
