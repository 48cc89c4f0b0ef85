import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startupMessage } from './idle-conns.ts'
import { poolerIni, userlist } from './pooler-config.ts'

const OPTS = {
  pgHost: '127.0.0.1',
  pgPort: 5432,
  authFile: '/tmp/u.txt',
  maxClientConn: 12000,
  poolSize: 20,
}

test('the poolers get the same ini but for listen_port', () => {
  const a = poolerIni(OPTS, 6001).split('\n')
  const b = poolerIni(OPTS, 6002).split('\n')
  const differing = a.filter((line, i) => line !== b[i])
  assert.deepEqual(differing, ['listen_port = 6001'])
})

test('the ini asks for what the benchmark compares', () => {
  const ini = poolerIni(OPTS, 6001)
  assert.match(ini, /^\* = host=127\.0\.0\.1 port=5432$/m)
  assert.match(ini, /^pool_mode = transaction$/m)
  assert.match(ini, /^default_pool_size = 20$/m)
  assert.match(ini, /^max_client_conn = 12000$/m)
  assert.match(ini, /^auth_type = trust$/m)
  assert.match(ini, /^listen_addr = 127\.0\.0\.1$/m)
})

test('PgBouncer ×N: each process shares the port and its part of the pool', () => {
  const a = poolerIni({ ...OPTS, poolSize: 10, soReuseport: true }, 6001)
  assert.match(a, /^so_reuseport = 1$/m)
  assert.match(a, /^default_pool_size = 10$/m)
  assert.doesNotMatch(poolerIni(OPTS, 6001), /so_reuseport/)
})

test('userlist quotes names PgBouncer-style', () => {
  assert.equal(userlist(['postgres', 'a"b']), '"postgres" ""\n"a""b" ""\n')
})

test('startupMessage is a protocol 3.0 StartupMessage', () => {
  const m = startupMessage('postgres', 'db')
  assert.equal(m.readInt32BE(0), m.length)
  assert.equal(m.readInt32BE(4), 196608)
  assert.equal(m.subarray(8).toString(), 'user\0postgres\0database\0db\0\0')
})

test("a scenario's settings and '*' keys come after the common ones", () => {
  const ini = poolerIni(
    { ...OPTS, fallback: 'dbname=postgres', settings: { autodb_idle_timeout: 2 } },
    6001,
  )
  assert.match(ini, /^\* = host=127\.0\.0\.1 port=5432 dbname=postgres$/m)
  assert.match(ini, /^autodb_idle_timeout = 2$/m)
})

test("client TLS: allow, with the certificate and key, in every pooler's ini alike", () => {
  const tls = { ...OPTS, clientTls: { certFile: '/tmp/c.crt', keyFile: '/tmp/c.key' } }
  const ini = poolerIni(tls, 6001)
  assert.match(ini, /^client_tls_sslmode = allow$/m)
  assert.match(ini, /^client_tls_cert_file = \/tmp\/c\.crt$/m)
  assert.match(ini, /^client_tls_key_file = \/tmp\/c\.key$/m)
  assert.doesNotMatch(poolerIni(OPTS, 6001), /client_tls/)
  const differing = ini
    .split('\n')
    .filter((line, i) => line !== poolerIni(tls, 6002).split('\n')[i])
  assert.deepEqual(differing, ['listen_port = 6001'])
})
