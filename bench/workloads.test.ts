import assert from 'node:assert/strict'
import { test } from 'node:test'
import { type LoadJob, rampConcurrency, splitJob } from './loadgen-task.ts'
import { planRuns, skipReason } from './measure.ts'
import type { Target } from './targets.ts'
import { allWorkloads, QUICK_WORKLOADS, selectWorkloads } from './workloads.ts'

test('the full plan has every workload of the brief', () => {
  const names = allWorkloads({ quick: false }).map((w) => w.name)
  for (const n of [
    'select-simple',
    'select-extended',
    'select-prepared',
    'select-connect',
    'select-tls',
    'select-connect-tls',
    'single-client',
    'clients-1000',
    'pg-churn',
    'pg-dynamic',
  ]) {
    assert.ok(names.includes(n), n)
  }
  assert.equal(new Set(names).size, names.length)
})

test('--quick runs the quick subset with short runs; --duration overrides', () => {
  const quick = selectWorkloads({ quick: true }, undefined)
  assert.deepEqual(
    quick.map((w) => w.name),
    QUICK_WORKLOADS,
  )
  for (const w of quick) if (w.kind === 'pgbench') assert.equal(w.durationS, 2)
  const only = selectWorkloads({ quick: false, durationS: 4 }, ['clients-1000'])
  assert.equal(only.length, 1)
  assert.equal(only[0]!.kind === 'pgbench' && only[0]!.durationS, 4)
  assert.equal(only[0]!.kind === 'pgbench' && only[0]!.clients, 1000)
})

test('an unknown workload name is an error that lists the known ones', () => {
  assert.throws(
    () => selectWorkloads({ quick: true }, ['nope']),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'BENCH_UNKNOWN_WORKLOAD')
      assert.match(err.message, /select-simple/)
      return true
    },
  )
})

test('the dynamic ramp goes min → max → min', () => {
  const p = { min: 5, max: 100, periods: 1 }
  assert.equal(rampConcurrency(p, 0), 5)
  assert.equal(rampConcurrency(p, 0.25), 53)
  assert.equal(rampConcurrency(p, 0.5), 100)
  assert.equal(rampConcurrency(p, 0.75), 53)
  assert.equal(rampConcurrency(p, 0.999), 5)
  assert.equal(rampConcurrency({ ...p, periods: 2 }, 0.25), 100)
  assert.equal(rampConcurrency(p, 7), 5) // clamped past the end
})

test('splitJob deals every lane and every iteration out exactly once', () => {
  const job: LoadJob = {
    mode: 'churn',
    endpoint: { host: 'h', port: 1, user: 'u', database: 'd' },
    lanes: 50,
    iterations: 1001,
    durationMs: 0,
    profile: { min: 0, max: 0, periods: 0 },
  }
  const tasks = splitJob(job, 3, 123)
  assert.equal(tasks.length, 3)
  const lanes = tasks.flatMap((t) => t.lanes).sort((a, b) => a - b)
  assert.deepEqual(
    lanes,
    Array.from({ length: 50 }, (_, i) => i),
  )
  assert.equal(
    tasks.reduce((n, t) => n + t.iterations, 0),
    1001,
  )
  assert.ok(tasks.every((t) => t.startAt === 123))
  // never more tasks than lanes
  assert.equal(splitJob({ ...job, lanes: 1 }, 4, 0).length, 1)
})

test('direct PostgreSQL skips what exceeds max_connections, poolers never do', () => {
  const [w1000] = selectWorkloads({ quick: false }, ['clients-1000'])
  const [w32] = selectWorkloads({ quick: false }, ['select-simple'])
  const direct = { kind: 'direct' } as Target
  const pooler = { kind: 'pgbouncer' } as Target
  assert.match(skipReason(w1000!, direct, 200)!, /max_connections \(200\)/)
  assert.equal(skipReason(w32!, direct, 200), null)
  assert.equal(skipReason(w1000!, pooler, 200), null)
})

test('the TLS workloads are the select ones over client TLS, run by the poolers that offer it', () => {
  const [plain, tls, connectTls] = selectWorkloads({ quick: false }, [
    'select-simple',
    'select-tls',
    'select-connect-tls',
  ])
  assert.ok(plain!.kind === 'pgbench' && !plain!.tls)
  assert.ok(tls!.kind === 'pgbench' && tls!.tls && !tls!.reconnect && tls!.clients === 32)
  assert.ok(connectTls!.kind === 'pgbench' && connectTls!.tls && connectTls!.reconnect)
  const pooler = { kind: 'pgbouncer', clientTls: true } as Target
  assert.equal(skipReason(tls!, pooler, 200), null)
  assert.match(skipReason(tls!, { kind: 'direct' } as Target, 200)!, /without TLS/)
  assert.match(skipReason(tls!, { ...pooler, clientTls: false }, 200)!, /no client TLS/)
  assert.equal(skipReason(plain!, { ...pooler, clientTls: false }, 200), null)
})

test('planRuns alternates the targets round by round and lists every skip', () => {
  const ws = selectWorkloads({ quick: false }, ['select-simple', 'clients-1000'])
  const t = (
    id: string,
    kind: Target['kind'],
    status: Target['status'] = 'ready',
    reason?: string,
  ) => ({ id, kind, status, reason }) as Target
  const targets = [
    t('direct', 'direct'),
    t('pgbouncer', 'pgbouncer'),
    t('cluster-1', 'cluster', 'failed', 'failed to start: exited with code 2\nlog tail'),
  ]
  const { plan, skips } = planRuns(ws, targets, 3, 200)
  const order = plan.map((p) => `${p.w.name}/${p.t.id}/${p.round}`)
  assert.deepEqual(order, [
    'select-simple/direct/1',
    'select-simple/pgbouncer/1',
    'select-simple/direct/2',
    'select-simple/pgbouncer/2',
    'select-simple/direct/3',
    'select-simple/pgbouncer/3',
    'clients-1000/pgbouncer/1',
    'clients-1000/pgbouncer/2',
    'clients-1000/pgbouncer/3',
  ])
  assert.deepEqual(
    skips.map((s) => `${s.workload}/${s.target}`),
    ['select-simple/cluster-1', 'clients-1000/direct', 'clients-1000/cluster-1'],
  )
  assert.equal(skips[0]!.reason, 'failed: failed to start: exited with code 2')
})

test('the bare Node relay runs only the workloads the speed targets name, with no skip listed', () => {
  const ws = selectWorkloads({ quick: false }, ['select-simple', 'select-connect', 'clients-1000'])
  const targets = [
    { id: 'pgbouncer', kind: 'pgbouncer', status: 'ready' },
    { id: 'node-relay', kind: 'relay', status: 'ready' },
  ] as Target[]
  const { plan, skips } = planRuns(ws, targets, 1, 200)
  assert.deepEqual(
    plan.map((p) => `${p.w.name}/${p.t.id}`),
    [
      'select-simple/pgbouncer',
      'select-simple/node-relay',
      'select-connect/pgbouncer',
      'clients-1000/pgbouncer',
    ],
  )
  assert.deepEqual(skips, [])
})
