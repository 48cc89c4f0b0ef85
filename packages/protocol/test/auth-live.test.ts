// The auth math against a real PostgreSQL: raw wire protocol over node:net (StartupMessage,
// the Authentication exchange answered by md5Response / ScramClient, then `SELECT 1`), so that
// nothing but our own code computes the answers.

import assert from 'node:assert/strict'
import net from 'node:net'
import { describe, test } from 'node:test'
import { usePostgres } from '@pgbouncer-cluster/scripts/pg-harness'
import { md5Response } from '../src/auth/md5.ts'
import { parseScramSecret, SCRAM_SHA_256, ScramClient, ScramServer } from '../src/auth/scram.ts'
import {
  passwordMessage,
  query,
  saslInitialResponse,
  saslResponse,
  startupMessage,
  terminate,
} from '../src/serializer.ts'

// ｐａｓｓ<NBSP>wo<COMBINING DIAERESIS>rd: SASLprep makes it 'pass wörd' on both sides.
const UNICODE_PASSWORD = '\uff50\uff41\uff53\uff53\u00a0wo\u0308rd'
// Not valid SASLprep input (control character in a non-ASCII string): used raw by both sides.
const RAW_PASSWORD = '\uff50\u0007x'

const db = usePostgres({
  roles: [
    { name: 'scram_user', password: 'scram-pw', auth: 'scram-sha-256' },
    { name: 'md5_user', password: 'md5-pw', auth: 'md5' },
    { name: 'clear_user', password: 'clear-pw', auth: 'password' },
    { name: 'uni_user', password: UNICODE_PASSWORD, auth: 'scram-sha-256' },
    { name: 'raw_user', password: RAW_PASSWORD, auth: 'scram-sha-256' },
  ],
})

type Auth = { md5: string } | { scram: ScramClient } | { cleartext: string }
type Outcome = { ok: true; value: string } | { ok: false; sqlstate: string; message: string }

const AUTH_OK = 0
const AUTH_CLEARTEXT = 3
const AUTH_MD5 = 5
const AUTH_SASL = 10
const AUTH_SASL_CONTINUE = 11
const AUTH_SASL_FINAL = 12

function cstrings(body: Buffer): string[] {
  return body.toString('utf8').split('\0').slice(0, -1)
}

// Logs in as `user`, runs SELECT 1 and returns its value, or PostgreSQL's ErrorResponse.
function login(user: string, auth: Auth): Promise<Outcome> {
  const { host, port } = db.server
  return new Promise<Outcome>((resolve, reject) => {
    const sock = net.connect({ host, port })
    let pending: Buffer = Buffer.alloc(0)
    let queried = false
    let value: string | undefined
    const timer = setTimeout(() => fail(new Error(`login as ${user} timed out`)), 10_000)
    const finish = (outcome: Outcome) => {
      clearTimeout(timer)
      if (outcome.ok) sock.end(terminate())
      else sock.destroy()
      resolve(outcome)
    }
    function fail(err: Error) {
      clearTimeout(timer)
      sock.destroy()
      reject(err)
    }

    function onMessage(type: string, body: Buffer): void {
      switch (type) {
        case 'R':
          onAuth(body.readInt32BE(0), body.subarray(4))
          return
        case 'E': {
          const fields = new Map(cstrings(body).map((f) => [f[0], f.slice(1)]))
          finish({ ok: false, sqlstate: fields.get('C')!, message: fields.get('M')! })
          return
        }
        case 'D': {
          assert.equal(body.readInt16BE(0), 1)
          value = body.toString('utf8', 6, 6 + body.readInt32BE(2))
          return
        }
        case 'Z':
          if (!queried) {
            queried = true
            sock.write(query('SELECT 1'))
          } else {
            finish({ ok: true, value: value! })
          }
          return
        default: // S, K, T, C, N: nothing to check here
      }
    }

    function onAuth(code: number, data: Buffer): void {
      if (code === AUTH_OK) return
      if (code === AUTH_MD5 && 'md5' in auth) {
        sock.write(passwordMessage(md5Response(user, auth.md5, data.subarray(0, 4))))
      } else if (code === AUTH_CLEARTEXT && 'cleartext' in auth) {
        sock.write(passwordMessage(auth.cleartext))
      } else if (code === AUTH_SASL && 'scram' in auth) {
        assert.ok(cstrings(data).includes(SCRAM_SHA_256))
        sock.write(saslInitialResponse(SCRAM_SHA_256, auth.scram.clientFirstMessage()))
      } else if (code === AUTH_SASL_CONTINUE && 'scram' in auth) {
        sock.write(saslResponse(auth.scram.clientFinalMessage(data)))
      } else if (code === AUTH_SASL_FINAL && 'scram' in auth) {
        auth.scram.verifyServerFinal(data)
      } else {
        throw new Error(`unexpected authentication request ${code}`)
      }
    }

    sock.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
      try {
        while (pending.length >= 5) {
          const end = 1 + pending.readInt32BE(1)
          if (pending.length < end) break
          const type = String.fromCharCode(pending[0]!)
          const body = pending.subarray(5, end)
          pending = pending.subarray(end)
          onMessage(type, body)
        }
      } catch (err) {
        fail(err as Error)
      }
    })
    sock.on('error', fail)
    sock.on('close', () => fail(new Error(`connection closed during login as ${user}`)))
    sock.write(startupMessage({ user, database: 'postgres' }))
  })
}

async function authid(role: string): Promise<string> {
  const sql = 'SELECT rolpassword FROM pg_authid WHERE rolname = $1'
  const { rows } = await db.server.query<{ rolpassword: string }>(sql, [role])
  return rows[0]!.rolpassword
}

const SUCCESS: Outcome = { ok: true, value: '1' }

describe('SCRAM-SHA-256 against PostgreSQL', () => {
  test('password login succeeds', async () => {
    assert.deepEqual(
      await login('scram_user', { scram: new ScramClient({ password: 'scram-pw' }) }),
      SUCCESS,
    )
  })

  test('wrong password → 28P01', async () => {
    const outcome = await login('scram_user', { scram: new ScramClient({ password: 'scram-PW' }) })
    assert.equal(outcome.ok, false)
    assert.ok(!outcome.ok)
    assert.equal(outcome.sqlstate, '28P01')
    assert.match(outcome.message, /password authentication failed for user "scram_user"/)
  })

  test('pass-through: keys recovered by ScramServer(pg_authid secret) log in', async () => {
    const secret = parseScramSecret(await authid('scram_user'))
    assert.ok(secret)
    // the pooler's side: a client proves the password to us
    const server = new ScramServer(secret)
    const client = new ScramClient({ password: 'scram-pw' })
    const serverFirst = server.handleClientFirst(client.clientFirstMessage())
    const result = server.handleClientFinal(client.clientFinalMessage(serverFirst))
    assert.ok(result.ok)
    client.verifyServerFinal(result.serverFinal)
    // PostgreSQL's side: no password, only the recovered keys
    const keys = { clientKey: result.clientKey, serverKey: secret.serverKey }
    assert.deepEqual(await login('scram_user', { scram: new ScramClient(keys) }), SUCCESS)
    // a ClientKey off by one bit is refused by PostgreSQL
    const flipped = Buffer.from(result.clientKey)
    flipped[0]! ^= 1
    const bad = await login('scram_user', {
      scram: new ScramClient({ clientKey: flipped, serverKey: secret.serverKey }),
    })
    assert.equal(bad.ok ? 'ok' : bad.sqlstate, '28P01')
    // the right ClientKey with a foreign ServerKey gets in, but PostgreSQL's signature fails
    const other = parseScramSecret(await authid('uni_user'))!
    const foreign = { clientKey: result.clientKey, serverKey: other.serverKey }
    await assert.rejects(login('scram_user', { scram: new ScramClient(foreign) }), {
      code: 'ERR_SCRAM',
      message: 'invalid SCRAM server signature',
    })
  })

  test('SASLprep matches PostgreSQL: an equivalent Unicode password logs in', async () => {
    const scram = new ScramClient({ password: 'pass w\u00f6rd' })
    assert.deepEqual(await login('uni_user', { scram }), SUCCESS)
  })

  test('invalid SASLprep input is used raw, as PostgreSQL does', async () => {
    assert.deepEqual(
      await login('raw_user', { scram: new ScramClient({ password: RAW_PASSWORD }) }),
      SUCCESS,
    )
    const normalised = await login('raw_user', { scram: new ScramClient({ password: 'p\u0007x' }) })
    assert.equal(normalised.ok ? 'ok' : normalised.sqlstate, '28P01')
  })
})

describe('MD5 against PostgreSQL', () => {
  test('password login succeeds', async () => {
    assert.deepEqual(await login('md5_user', { md5: 'md5-pw' }), SUCCESS)
  })

  test('the md5 hash from pg_authid logs in without the password', async () => {
    const stored = await authid('md5_user')
    assert.match(stored, /^md5[0-9a-f]{32}$/)
    assert.deepEqual(await login('md5_user', { md5: stored }), SUCCESS)
  })

  test('wrong password → 28P01', async () => {
    const outcome = await login('md5_user', { md5: 'md5-PW' })
    assert.equal(outcome.ok ? 'ok' : outcome.sqlstate, '28P01')
  })

  test('cleartext method still works with the same plumbing', async () => {
    assert.deepEqual(await login('clear_user', { cleartext: 'clear-pw' }), SUCCESS)
  })
})
