import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { test } from 'node:test'
import {
  errorLines,
  parsePgbenchLog,
  parsePgbenchSummary,
  pgbenchArgs,
  withNofile,
} from './pgbench.ts'
import type { PgbenchWorkload } from './workloads.ts'

// Captured from pgbench 15.18
const SUMMARY = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 16384
number of failed transactions: 0 (0.000%)
latency average = 0.242 ms
initial connection time = 14.667 ms
tps = 16503.053025 (without initial connection time)
`

const SUMMARY_CONNECT = `transaction type: <builtin: select only>
number of transactions actually processed: 223
number of failed transactions: 2 (0.889%)
latency average = 18.225 ms
average connection time = 8.908 ms
tps = 219.479116 (including reconnection times)
`

test('parses tps, counts and latency from the summary', () => {
  const s = parsePgbenchSummary(SUMMARY)
  assert.equal(s.tps, 16503.053025)
  assert.equal(s.transactions, 16384)
  assert.equal(s.failed, 0)
  assert.equal(s.latencyAvgMs, 0.242)
  assert.ok(Number.isNaN(s.connectionTimeMs))
  assert.equal(s.abortedClients, 0)
})

test('parses the -C summary with its connection time and failures', () => {
  const s = parsePgbenchSummary(SUMMARY_CONNECT)
  assert.equal(s.tps, 219.479116)
  assert.equal(s.failed, 2)
  assert.equal(s.connectionTimeMs, 8.908)
})

test('counts aborted clients from stderr, old and new wording', () => {
  const stderr = [
    'pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" already exists',
    'pgbench: error: client 1 aborted in command 4 (SQL) of script 0; ERROR:  boom',
    'pgbench: warning: something else',
  ].join('\n')
  const s = parsePgbenchSummary('', stderr)
  assert.equal(s.abortedClients, 2)
  assert.ok(Number.isNaN(s.tps))
  const lines = errorLines(stderr)
  assert.equal(lines.length, 2)
  assert.match(lines[0]!, /client N script 0 aborted/)
})

test('errorLines folds repeated errors of different clients into one', () => {
  const stderr = Array.from(
    { length: 40 },
    (_, i) =>
      `pgbench: error: client ${i} aborted in command 1 query 0: ERROR:  prepared statement "P${i}_1" already exists`,
  ).join('\n')
  assert.equal(errorLines(stderr).length, 1)
})

test('reads latencies in µs from --log lines and counts failed ones', () => {
  const log = [
    '0 1 240 0 1700000000 123456',
    '0 2 310 0 1700000000 123789',
    '1 1 failed 0 1700000000 124000',
    '1 2 skipped 0 1700000000 124001',
    '2 1 1999 0 1700000000 124500 0 0',
    '',
  ].join('\n')
  const out: number[] = []
  const failed = parsePgbenchLog(log, out)
  assert.deepEqual(out, [240, 310, 1999])
  assert.equal(failed, 2)
})

test('a log without a trailing newline still yields its last line', () => {
  const out: number[] = []
  parsePgbenchLog('0 1 42 0 1 2', out)
  assert.deepEqual(out, [42])
})

test('builds the pgbench command for a workload', () => {
  const w: PgbenchWorkload = {
    kind: 'pgbench',
    name: 'x',
    title: 'x',
    clients: 32,
    threads: 2,
    mode: 'prepared',
    reconnect: true,
    tls: false,
    durationS: 5,
  }
  const args = pgbenchArgs(
    w,
    { host: '127.0.0.1', port: 6432, user: 'postgres', database: 'db' },
    '/tmp/l',
  )
  const joined = args.join(' ')
  assert.match(joined, /-S -M prepared -c 32 -j 2 -T 5 -h 127\.0\.0\.1 -p 6432 -U postgres/)
  assert.ok(args.includes('-C'))
  assert.ok(args.includes('--log-prefix=/tmp/l'))
  assert.equal(args.at(-1), 'db')
  assert.ok(
    !pgbenchArgs(
      { ...w, reconnect: false },
      { host: 'h', port: 1, user: 'u', database: 'd' },
      'p',
    ).includes('-C'),
  )
})

test('withNofile wraps the command in bash without reinterpreting its arguments', () => {
  const [cmd, args] = withNofile(4096, '/bin/echo', ['a b', '$HOME'])
  assert.equal(cmd, 'bash')
  assert.match(args[1]!, /ulimit -n 4096/)
  assert.deepEqual(args.slice(2), ['/bin/echo', 'a b', '$HOME'])
  assert.equal(execFileSync(cmd, args, { encoding: 'utf8' }), 'a b $HOME\n')
  const [c2, a2] = withNofile(1000, 'bash', ['-c', 'ulimit -n'])
  assert.equal(execFileSync(c2, a2, { encoding: 'utf8' }).trim(), '1000')
})
