import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, withClient, writeIni } from './support.ts'

// Server health: server_check_query/server_check_delay, server_round_robin,
// server_fast_close and the TCP keepalive settings, each run against this
// pooler and against PgBouncer 1.18, with the same expected outcome.

const DATABASES = ['checks', 'rr', 'fastclose', 'keepalive'] as const
type Db = (typeof DATABASES)[number]
const TEST_TIMEOUT = 30_000
const db = usePostgres({ databases: [...DATABASES] })
const run = promisify(execFile)

type Start = (spec: IniSpec) => Promise<Pooler>
const TARGETS: { name: string; start: Start; skip: string | false }[] = [
  {
    name: 'pgbouncer-cluster',
    start: (spec) => startPooler(writeIni(spec), { workers: 1 }),
    skip: false,
  },
  { name: 'PgBouncer', start: (spec) => startPgBouncer(spec), skip: NO_PGBOUNCER },
]

function spec(database: Db, settings: Record<string, string | number>): IniSpec {
  return {
    databases: { [database]: `host=127.0.0.1 port=${db.server.port} dbname=${database}` },
    pgbouncer: { pool_mode: 'transaction', default_pool_size: 2, ...settings },
  }
}

async function backendPid(c: pg.Client): Promise<number> {
  return Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Two servers in the pool: two transactions at once, then both idle. */
async function twoServers(pooler: Pooler, database: Db): Promise<number[]> {
  const url = pooler.url({ database })
  return withClient({ connectionString: url }, (a) =>
    withClient({ connectionString: url }, async (b) => {
      await a.query('BEGIN')
      await b.query('BEGIN')
      const pids = [await backendPid(a), await backendPid(b)]
      await a.query('COMMIT')
      await b.query('COMMIT')
      return pids
    }),
  )
}

for (const target of TARGETS) {
  describe(`${target.name}: server_check_query and server_check_delay`, {
    skip: target.skip,
  }, () => {
    before(async () => {
      await withClient({ connectionString: db.server.url({ database: 'checks' }) }, (c) =>
        c.query('CREATE TABLE IF NOT EXISTS checks (at timestamptz DEFAULT now())'),
      )
    })

    async function checksRun(settings: Record<string, string | number>): Promise<number> {
      await withClient({ connectionString: db.server.url({ database: 'checks' }) }, (c) =>
        c.query('TRUNCATE checks'),
      )
      const pooler = await target.start(
        spec('checks', {
          default_pool_size: 1,
          server_check_query: 'insert into checks default values',
          ...settings,
        }),
      )
      try {
        await withClient({ connectionString: pooler.url({ database: 'checks' }) }, async (c) => {
          for (let i = 0; i < 3; i++) await c.query('SELECT 1')
        })
      } finally {
        await pooler.stop()
      }
      return withClient({ connectionString: db.server.url({ database: 'checks' }) }, async (c) =>
        Number((await c.query('SELECT count(*) AS n FROM checks')).rows[0].n),
      )
    }

    test('with server_check_delay = 0 a server runs the check before each reuse (not after its login)', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      assert.equal(await checksRun({ server_check_delay: 0 }), 2)
    })

    test('a server reused within server_check_delay is not checked', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      assert.equal(await checksRun({ server_check_delay: 30 }), 0)
    })

    test('an empty server_check_query turns the check off', { timeout: TEST_TIMEOUT }, async () => {
      assert.equal(await checksRun({ server_check_delay: 0, server_check_query: '' }), 0)
    })
  })

  describe(`${target.name}: server_round_robin`, { skip: target.skip }, () => {
    for (const [setting, distinct] of [
      [0, 1],
      [1, 2],
    ] as const) {
      test(`server_round_robin = ${setting}: ${distinct === 1 ? 'the last server used is reused' : 'the idle servers take turns'}`, {
        timeout: TEST_TIMEOUT,
      }, async () => {
        const pooler = await target.start(spec('rr', { server_round_robin: setting }))
        try {
          const pids = await twoServers(pooler, 'rr')
          const used = await withClient(
            { connectionString: pooler.url({ database: 'rr' }) },
            async (c) => {
              const seen: number[] = []
              for (let i = 0; i < 4; i++) seen.push(await backendPid(c))
              return seen
            },
          )
          for (const pid of used) assert.ok(pids.includes(pid))
          assert.equal(new Set(used).size, distinct, `backends used: ${used.join(', ')}`)
          if (distinct === 2) assert.notEqual(used[0], used[1])
        } finally {
          await pooler.stop()
        }
      })
    }
  })

  describe(`${target.name}: server_fast_close`, { skip: target.skip }, () => {
    for (const fast of [0, 1]) {
      test(`server_fast_close = ${fast}: after RECONNECT, a session between transactions ${fast ? 'is ended' : 'keeps its server'}`, {
        timeout: TEST_TIMEOUT,
      }, async () => {
        const pooler = await target.start({
          ...spec('fastclose', { pool_mode: 'session', server_fast_close: fast }),
          pgbouncer: {
            pool_mode: 'session',
            server_fast_close: fast,
            admin_users: 'postgres',
          },
        })
        try {
          const c = pooler.client({ database: 'fastclose' })
          let fatal: (Error & { code?: string; severity?: string }) | null = null
          c.on('error', (e) => {
            fatal ??= e
          })
          await c.connect()
          const pid = await backendPid(c)
          await withClient({ connectionString: pooler.url({ database: 'pgbouncer' }) }, (admin) =>
            admin.query('RECONNECT'),
          )
          if (fast) {
            const started = Date.now()
            while (fatal === null && Date.now() - started < 10_000) await sleep(50)
            assert.ok(fatal !== null, 'the session was not ended')
            const err = fatal as Error & { code?: string; severity?: string }
            assert.equal(err.message, 'database configuration changed')
            assert.equal(err.code, '08P01')
            assert.equal(err.severity, 'FATAL')
          } else {
            await sleep(1500)
            assert.equal(await backendPid(c), pid)
            assert.equal(fatal, null)
          }
          await c.end().catch(() => {})
        } finally {
          await pooler.stop()
        }
      })
    }
  })

  describe(`${target.name}: tcp_keepidle`, { skip: target.skip }, () => {
    let pooler: Pooler
    before(async () => {
      pooler = await target.start(spec('keepalive', { tcp_keepalive: 1, tcp_keepidle: 7 }))
    })
    after(() => pooler.stop())

    /**
     * The keepalive timers (seconds left) of established sockets matching an ss
     * filter. ss writes them as `119min`, `1min4sec` or, under a minute, `6.700ms`
     * (seconds with three decimals, whatever the unit says).
     */
    async function timers(filter: string): Promise<number[]> {
      const { stdout } = await run('ss', ['-tnoH', 'state', 'established', filter])
      return [...stdout.matchAll(/timer:\(keepalive,([^,]+),/g)].map(([, t]) => {
        const m = /^(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)(\.\d+)?ms)?$/.exec(t!)
        if (m === null) return Number.NaN
        const below =
          m[3] === undefined ? 0 : m[4] === undefined ? Number(m[3]) / 1000 : Number(m[3] + m[4])
        return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0) + below
      })
    }

    test('client and server sockets probe after tcp_keepidle seconds of silence', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      await withClient({ connectionString: pooler.url({ database: 'keepalive' }) }, async (c) => {
        await c.query('BEGIN')
        await c.query('SELECT 1')
        // A socket shows its keepalive timer only while no other timer (a
        // retransmit, a delayed ACK) runs on it: look a few times.
        let clientSide: number[] = []
        let serverSide: number[] = []
        for (let i = 0; i < 40 && (clientSide.length === 0 || serverSide.length === 0); i++) {
          if (i > 0) await sleep(100)
          clientSide = await timers(`( sport = :${pooler.port} )`)
          serverSide = await timers(`( dport = :${db.server.port} )`)
        }
        assert.ok(clientSide.length >= 1, 'no client socket with keepalive')
        assert.ok(serverSide.length >= 1, 'no server socket with keepalive')
        for (const t of [...clientSide, ...serverSide]) assert.ok(t > 0 && t <= 7, `timer ${t}s`)
        await c.query('COMMIT')
      })
    })
  })
}
