import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { skipWithout } from '@pgbouncer-cluster/scripts/optional-tools'
import { findPgTool, usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import type pg from 'pg'
import { NO_PGBOUNCER, startPgBouncer } from './reference-pgbouncer.ts'
import { type IniSpec, type Pooler, startPooler, writeIni } from './support.ts'

const PSQL = findPgTool('psql')

// track_extra_parameters (PgBouncer 1.20+), the `options` startup parameter
// (-c name=value for tracked parameters, 1.20+) and application_name_add_host.
// One worker and pool_size 1 in transaction mode: consecutive clients share
// one server, so a parameter that did not follow its client would leak.
const TEST_TIMEOUT = 30_000
const db = usePostgres({ databases: ['app'] })
const run = promisify(execFile)

function spec(extra: Record<string, string | number> = {}): IniSpec {
  return {
    databases: { app: `host=127.0.0.1 port=${db.server.port} dbname=app` },
    pgbouncer: { pool_mode: 'transaction', default_pool_size: 1, ...extra },
  }
}

async function connect(pooler: Pooler, config: pg.ClientConfig = {}): Promise<pg.Client> {
  const c = pooler.client({ database: 'app', ...config })
  c.on('error', () => {})
  await c.connect()
  return c
}

async function refusal(
  pooler: Pooler,
  config: pg.ClientConfig,
): Promise<Error & { code?: string }> {
  const c = pooler.client({ database: 'app', ...config })
  c.on('error', () => {})
  const err = await c.connect().then(
    () => null,
    (e: unknown) => e as Error & { code?: string },
  )
  if (err === null) {
    await c.end()
    assert.fail('the client was let in')
  }
  return err
}

async function show(c: pg.Client): Promise<{ style: string; pid: number }> {
  const { rows } = await c.query(
    "SELECT current_setting('IntervalStyle') AS style, pg_backend_pid() AS pid",
  )
  return { style: rows[0].style, pid: Number(rows[0].pid) }
}

describe('track_extra_parameters: IntervalStyle by default', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(writeIni(spec()), { workers: 1 })
  })
  after(() => pooler.stop())

  test("a client's IntervalStyle (SET or options) follows it; a client without one sees the server default", {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const a = await connect(pooler)
    const b = await connect(pooler, { options: '-c IntervalStyle=sql_standard' })
    const c = await connect(pooler)
    try {
      await a.query("SET IntervalStyle = 'iso_8601'")
      const pids = new Set<number>()
      for (let round = 0; round < 3; round++) {
        for (const [client, want] of [
          [a, 'iso_8601'],
          [b, 'sql_standard'],
          [c, 'postgres'],
        ] as const) {
          const got = await show(client)
          pids.add(got.pid)
          assert.equal(got.style, want, `round ${round}`)
        }
      }
      assert.equal(pids.size, 1, 'the clients did not share one server')
    } finally {
      await Promise.all([a.end(), b.end(), c.end()])
    }
  })

  test('options: other parameters and other forms are refused with PgBouncer 1.20+ texts', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const unknown = await refusal(pooler, { options: '-c work_mem=1MB' })
    assert.equal(unknown.message, 'unsupported startup parameter in options: work_mem')
    assert.equal(unknown.code, '08P01')
    const form = await refusal(pooler, { options: '-X' })
    assert.equal(
      form.message,
      "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed",
    )
  })

  test('psql passes PGOPTIONS the same way: a tracked parameter is taken, another refused', {
    timeout: TEST_TIMEOUT,
    skip: skipWithout('psql', PSQL),
  }, async () => {
    const psql = PSQL
    const env = { ...process.env, PGOPTIONS: '--IntervalStyle=postgres_verbose' }
    const { stdout } = await run(
      psql!,
      [
        '-h',
        pooler.host,
        '-p',
        String(pooler.port),
        '-U',
        'postgres',
        '-Atc',
        'SHOW IntervalStyle',
        'app',
      ],
      { env },
    )
    assert.equal(stdout.trim(), 'postgres_verbose')
    const refused = await run(
      psql!,
      ['-h', pooler.host, '-p', String(pooler.port), '-U', 'postgres', '-Atc', 'SELECT 1', 'app'],
      { env: { ...process.env, PGOPTIONS: '-c search_path=elsewhere' } },
    ).then(
      () => null,
      (e: { stderr: string }) => e.stderr,
    )
    assert.match(refused ?? '', /unsupported startup parameter in options: search_path/)
  })
})

describe('track_extra_parameters set', () => {
  let pooler: Pooler
  before(async () => {
    pooler = await startPooler(writeIni(spec({ track_extra_parameters: 'search_path' })), {
      workers: 1,
    })
  })
  after(() => pooler.stop())

  test('a list without IntervalStyle stops tracking it; the listed ones are taken from options', {
    timeout: TEST_TIMEOUT,
  }, async () => {
    const err = await refusal(pooler, { options: '-c IntervalStyle=iso_8601' })
    assert.equal(err.message, 'unsupported startup parameter in options: IntervalStyle')
    const c = await connect(pooler, { options: '-c search_path=public' })
    await c.end()
  })
})

// application_name_add_host exists in PgBouncer 1.18 too: both give the same name.
for (const target of ['pgbouncer-cluster', 'PgBouncer 1.18'] as const) {
  describe(`application_name_add_host (${target})`, {
    skip: target !== 'pgbouncer-cluster' && NO_PGBOUNCER,
  }, () => {
    let pooler: Pooler
    before(async () => {
      const s = spec({ application_name_add_host: 1 })
      pooler =
        target === 'pgbouncer-cluster'
          ? await startPooler(writeIni(s), { workers: 1 })
          : await startPgBouncer(s)
    })
    after(() => pooler.stop())

    test('the server sees "<name> - <address>:<port>", "app" when the client gave none', {
      timeout: TEST_TIMEOUT,
    }, async () => {
      const named = await connect(pooler, { application_name: 'billing' })
      const anonymous = await connect(pooler)
      try {
        for (const [c, name] of [
          [named, 'billing'],
          [anonymous, 'app'],
        ] as const) {
          const port = (c as unknown as { connection: { stream: { localPort: number } } })
            .connection.stream.localPort
          const { rows } = await c.query("SELECT current_setting('application_name') AS a")
          assert.equal(rows[0].a, `${name} - 127.0.0.1:${port}`)
        }
      } finally {
        await Promise.all([named.end(), anonymous.end()])
      }
    })
  })
}
