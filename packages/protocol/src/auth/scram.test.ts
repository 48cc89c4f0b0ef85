import assert from 'node:assert/strict'
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto'
import { describe, test } from 'node:test'
import fc from 'fast-check'
import {
  isScramSecret,
  parseScramSecret,
  ScramClient,
  ScramError,
  ScramServer,
  scramSecret,
} from './scram.ts'

// RFC 7677 section 3
const RFC = {
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst:
    'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,' +
    'p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
}

const b = (s: string) => Buffer.from(s, 'latin1')
const hmac = (key: Buffer, data: string) => createHmac('sha256', key).update(data).digest()
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest()

// An independent, minimal SCRAM client over crypto, to build messages our ScramClient never sends.
function referenceFinal(password: string, clientFirst: string, serverFirst: string, cbind: string) {
  const attrs = Object.fromEntries(serverFirst.split(',').map((p) => [p[0], p.slice(2)]))
  const salted = pbkdf2Sync(
    password,
    Buffer.from(attrs.s!, 'base64'),
    Number(attrs.i),
    32,
    'sha256',
  )
  const clientKey = hmac(salted, 'Client Key')
  const bare = clientFirst.slice(clientFirst.indexOf(',', clientFirst.indexOf(',') + 1) + 1)
  const withoutProof = `c=${cbind},r=${attrs.r}`
  const authMessage = `${bare},${serverFirst},${withoutProof}`
  const sig = hmac(sha256(clientKey), authMessage)
  const proof = Buffer.from(clientKey.map((x, i) => x ^ sig[i]!))
  return { message: `${withoutProof},p=${proof.toString('base64')}`, clientKey }
}

function rfcSecret() {
  return parseScramSecret(scramSecret(RFC.password, { salt: RFC.salt, iterations: 4096 }))!
}

function scramError(sqlstate = '08P01') {
  return (err: unknown) => {
    assert.ok(err instanceof ScramError, `expected ScramError, got ${String(err)}`)
    assert.equal(err.code, 'ERR_SCRAM')
    assert.equal(err.sqlstate, sqlstate)
    return true
  }
}

describe('RFC 7677 test vector', () => {
  test('client produces the proof and accepts the server signature', () => {
    const client = new ScramClient({ password: RFC.password, nonce: RFC.clientNonce, user: 'user' })
    assert.equal(client.clientFirstMessage().toString(), RFC.clientFirst)
    assert.equal(client.clientFinalMessage(b(RFC.serverFirst)).toString(), RFC.clientFinal)
    client.verifyServerFinal(b(RFC.serverFinal))
  })

  test('client rejects a wrong server signature and a server error', () => {
    const forged = 'v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='
    for (const final of [forged, 'e=invalid-proof']) {
      const client = new ScramClient({
        password: RFC.password,
        nonce: RFC.clientNonce,
        user: 'user',
      })
      client.clientFirstMessage()
      client.clientFinalMessage(b(RFC.serverFirst))
      assert.throws(() => client.verifyServerFinal(b(final)), scramError('28P01'))
    }
  })

  test('server answers with the RFC server-first and signature, and recovers ClientKey', () => {
    const server = new ScramServer(rfcSecret(), { nonce: RFC.serverNonce })
    assert.equal(server.handleClientFirst(b(RFC.clientFirst)).toString(), RFC.serverFirst)
    const result = server.handleClientFinal(b(RFC.clientFinal))
    assert.equal(result.ok, true)
    assert.ok(result.ok)
    assert.equal(result.serverFinal.toString(), RFC.serverFinal)
    const salted = pbkdf2Sync(RFC.password, RFC.salt, 4096, 32, 'sha256')
    assert.deepEqual(result.clientKey, hmac(salted, 'Client Key'))
  })
})

describe('stored secrets', () => {
  test('scramSecret builds the pg_authid form and parseScramSecret reads it back', () => {
    const s = scramSecret('pencil', { salt: RFC.salt, iterations: 4096 })
    const salted = pbkdf2Sync('pencil', RFC.salt, 4096, 32, 'sha256')
    const stored = sha256(hmac(salted, 'Client Key')).toString('base64')
    const serverKey = hmac(salted, 'Server Key').toString('base64')
    assert.equal(s, `SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$${stored}:${serverKey}`)
    const parsed = parseScramSecret(s)!
    assert.equal(parsed.iterations, 4096)
    assert.deepEqual(parsed.salt, RFC.salt)
    assert.equal(parsed.storedKey.toString('base64'), stored)
    assert.equal(parsed.serverKey.toString('base64'), serverKey)
    assert.equal(isScramSecret(s), true)
  })

  test('defaults: 4096 iterations, 16-byte random salt', () => {
    const a = parseScramSecret(scramSecret('x'))!
    const c = parseScramSecret(scramSecret('x'))!
    assert.equal(a.iterations, 4096)
    assert.equal(a.salt.length, 16)
    assert.notDeepEqual(a.salt, c.salt)
  })

  test('malformed secrets are rejected', () => {
    const good = scramSecret('pencil', { salt: RFC.salt, iterations: 4096 })
    const [, keys] = good.split('$4096:W22ZaJ0SNY7soEsUEjb6gQ==$')
    const bad = [
      '',
      'md53175bce1d3201d16594cebf9d7eb3f9d',
      good.replace('SCRAM-SHA-256', 'SCRAM-SHA-1'),
      good.replace('$4096:', '$0:'),
      good.replace('$4096:', '$99999999999:'),
      good.replace('$4096:', '$-1:'),
      good.replace('W22ZaJ0SNY7soEsUEjb6gQ==', ''),
      good.replace('W22ZaJ0SNY7soEsUEjb6gQ==', 'W22ZaJ0SNY7soEsUEjb6gQ='),
      `SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$${keys!.split(':')[0]}`,
      `SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:${keys!.split(':')[1]}`,
      `${good} `,
    ]
    for (const s of bad) {
      assert.equal(parseScramSecret(s), null, s)
      assert.equal(isScramSecret(s), false)
    }
    assert.throws(() => scramSecret('x', { iterations: 0 }), scramError())
    assert.throws(() => scramSecret('x', { salt: Buffer.alloc(0) }), scramError())
  })
})

describe('round trips', () => {
  function login(server: ScramServer, client: ScramClient) {
    const serverFirst = server.handleClientFirst(client.clientFirstMessage())
    const result = server.handleClientFinal(client.clientFinalMessage(serverFirst))
    if (result.ok) client.verifyServerFinal(result.serverFinal)
    return result
  }

  test('password against a stored secret and against fromPassword', () => {
    const secret = parseScramSecret(scramSecret('s3cret', { iterations: 1000 }))!
    assert.equal(login(new ScramServer(secret), new ScramClient({ password: 's3cret' })).ok, true)
    const server = ScramServer.fromPassword('s3cret')
    assert.equal(login(server, new ScramClient({ password: 's3cret' })).ok, true)
  })

  test('wrong password → ok:false', () => {
    const secret = parseScramSecret(scramSecret('s3cret', { iterations: 1000 }))!
    assert.deepEqual(login(new ScramServer(secret), new ScramClient({ password: 's3creT' })), {
      ok: false,
    })
    const server = ScramServer.fromPassword('s3cret')
    assert.deepEqual(login(server, new ScramClient({ password: '' })), { ok: false })
  })

  test('SASLprep applies: equivalent Unicode passwords log in', () => {
    const secret = parseScramSecret(
      scramSecret('\uff50\uff41\uff53\uff53\u00a0w', { iterations: 100 }),
    )!
    assert.equal(login(new ScramServer(secret), new ScramClient({ password: 'pass w' })).ok, true)
  })

  test('pass-through: recovered ClientKey + ServerKey log in to a server with the same secret', () => {
    const secret = parseScramSecret(scramSecret('s3cret', { iterations: 1000 }))!
    const first = login(new ScramServer(secret), new ScramClient({ password: 's3cret' }))
    assert.ok(first.ok)
    const keys = { clientKey: first.clientKey, serverKey: secret.serverKey }
    const second = login(new ScramServer(secret), new ScramClient(keys))
    assert.equal(second.ok, true)
    assert.ok(second.ok)
    assert.deepEqual(second.clientKey, first.clientKey)
    // same password, another salt: the keys are worthless there
    const resalted = parseScramSecret(scramSecret('s3cret', { iterations: 1000 }))!
    assert.equal(login(new ScramServer(resalted), new ScramClient(keys)).ok, false)
    // and a wrong ServerKey cannot verify the server's signature
    const wrongServerKey = { clientKey: first.clientKey, serverKey: resalted.serverKey }
    assert.throws(
      () => login(new ScramServer(secret), new ScramClient(wrongServerKey)),
      scramError('28P01'),
    )
  })

  test("gs2 flag 'y' is accepted with its own channel-binding echo 'eSws'", () => {
    const secret = parseScramSecret(scramSecret('pw', { iterations: 100 }))!
    const clientFirst = 'y,,n=,r=abcdef'
    const server = new ScramServer(secret)
    const serverFirst = server.handleClientFirst(b(clientFirst)).toString()
    const { message, clientKey } = referenceFinal('pw', clientFirst, serverFirst, 'eSws')
    const result = server.handleClientFinal(b(message))
    assert.ok(result.ok)
    assert.deepEqual(result.clientKey, clientKey)
    // 'y' with the 'n' echo is a channel-binding mismatch
    const server2 = new ScramServer(secret)
    const serverFirst2 = server2.handleClientFirst(b(clientFirst)).toString()
    const wrong = referenceFinal('pw', clientFirst, serverFirst2, 'biws')
    assert.throws(() => server2.handleClientFinal(b(wrong.message)), scramError())
  })

  test('client and server reject calls out of order', () => {
    const client = new ScramClient({ password: 'x' })
    assert.throws(() => client.clientFinalMessage(b(RFC.serverFirst)), scramError())
    assert.throws(() => client.verifyServerFinal(b(RFC.serverFinal)), scramError())
    client.clientFirstMessage()
    assert.throws(() => client.clientFirstMessage(), scramError())
    const server = new ScramServer(rfcSecret())
    assert.throws(() => server.handleClientFinal(b(RFC.clientFinal)), scramError())
    server.handleClientFirst(b(RFC.clientFirst))
    assert.throws(() => server.handleClientFirst(b(RFC.clientFirst)), scramError())
  })
})

describe('malformed input is a ScramError, never a crash', () => {
  const badClientFirst = [
    '',
    'n',
    'n,,',
    'n,,n=',
    'n,,n=user',
    'n,,n=user,x=abc',
    'n,,n=user,r=',
    'n,,r=abc',
    'n,,n=user,r=ab,c', // extension without '='
    'n,,n=user,r=abc,',
    'n,,n=user,r=ab\u0001c',
    'n,,n=user,r=ab\u00ffc',
    'p=tls-server-end-point,,n=,r=abc',
    'p,,n=,r=abc',
    'x,,n=,r=abc',
    'n,a=admin,n=,r=abc',
    'n,x,n=,r=abc',
    'n,,m=ext,n=,r=abc',
    'n,,n=,r=abc\u0000',
  ]
  for (const input of badClientFirst) {
    test(`client-first ${JSON.stringify(input)}`, () => {
      const server = new ScramServer(rfcSecret())
      assert.throws(() => server.handleClientFirst(b(input)), scramError())
      // a failed exchange cannot be continued
      assert.throws(() => server.handleClientFinal(b(RFC.clientFinal)), scramError())
    })
  }

  const nonce = `${RFC.clientNonce}${RFC.serverNonce}`
  const proof = 'dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ='
  const badClientFinal = [
    '',
    'c=biws',
    `c=biws,p=${proof}`, // missing r=
    `c=biws,r=${nonce}`, // missing p=
    `r=${nonce},c=biws,p=${proof}`,
    `c=biws,r=${nonce},p=`,
    `c=biws,r=${nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ`, // no padding
    `c=biws,r=${nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV!=`, // bad alphabet
    `c=biws,r=${nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7An`, // 30 bytes
    `c=biws,r=${nonce},p=${proof},x=trailing`,
    `c=biws,r=${nonce},p=${proof},`,
    `c=biws,r=${nonce},junk,p=${proof}`,
    `c=eSws,r=${nonce},p=${proof}`, // 'y' echo after 'n'
    `c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=${nonce},p=${proof}`, // p=tls-server-end-point
    `c=,r=${nonce},p=${proof}`,
    `c=biws,r=${RFC.clientNonce},p=${proof}`, // nonce without server part
    `c=biws,r=${nonce}x,p=${proof}`, // nonce mismatch
    `c=biws,r=${RFC.clientNonce}AAAA,p=${proof}`,
  ]
  for (const input of badClientFinal) {
    test(`client-final ${JSON.stringify(input)}`, () => {
      const server = new ScramServer(rfcSecret(), { nonce: RFC.serverNonce })
      server.handleClientFirst(b(RFC.clientFirst))
      assert.throws(() => server.handleClientFinal(b(input)), scramError())
    })
  }

  test('client-final extensions before p= are ignored', () => {
    const server = new ScramServer(rfcSecret(), { nonce: RFC.serverNonce })
    server.handleClientFirst(b(RFC.clientFirst))
    const withExt = RFC.clientFinal.replace(',p=', ',x=ext,p=')
    // the extension is part of the signed AuthMessage, so the RFC proof no longer verifies
    assert.deepEqual(server.handleClientFinal(b(withExt)), { ok: false })
  })

  const badServerFirst = [
    '',
    'r=',
    `r=${RFC.clientNonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`, // no server nonce
    `r=XX${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`, // not our prefix
    `r=${RFC.clientNonce}a\u0001b,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`,
    `r=${RFC.clientNonce}abc,i=4096`,
    `r=${RFC.clientNonce}abc,s=,i=4096`,
    `r=${RFC.clientNonce}abc,s=W22Za*0SNY7soEsUEjb6gQ==,i=4096`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096.5`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0x10`,
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001`, // over the cap
    `r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,`,
    `m=ext,r=${RFC.clientNonce}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096`,
  ]
  for (const input of badServerFirst) {
    test(`server-first ${JSON.stringify(input)}`, () => {
      const client = new ScramClient({ password: 'pencil', nonce: RFC.clientNonce })
      client.clientFirstMessage()
      assert.throws(() => client.clientFinalMessage(b(input)), scramError())
    })
  }

  for (const input of [
    '',
    'v=',
    'v=!!!!',
    'x=abc',
    'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4',
  ]) {
    test(`server-final ${JSON.stringify(input)}`, () => {
      const client = new ScramClient({
        password: RFC.password,
        nonce: RFC.clientNonce,
        user: 'user',
      })
      client.clientFirstMessage()
      client.clientFinalMessage(b(RFC.serverFirst))
      assert.throws(() => client.verifyServerFinal(b(input)), scramError())
    })
  }

  test('bad options are refused', () => {
    assert.throws(() => new ScramClient({ password: 'x', nonce: 'a,b' }), scramError())
    const key = Buffer.alloc(32)
    assert.throws(
      () => new ScramClient({ clientKey: key, serverKey: Buffer.alloc(31) }),
      scramError(),
    )
    assert.throws(
      () => new ScramServer({ ...rfcSecret(), storedKey: Buffer.alloc(1) }),
      scramError(),
    )
    assert.throws(() => new ScramServer({ ...rfcSecret(), iterations: 0 }), scramError())
  })

  test('fuzz: arbitrary bytes into every handler throw only ScramError', () => {
    const secret = parseScramSecret(scramSecret('pw', { iterations: 1 }))!
    const onlyScram = (fn: () => unknown) => {
      try {
        fn()
      } catch (err) {
        if (!(err instanceof ScramError)) throw err
      }
    }
    // bias towards near-valid messages: a valid prefix, then random attribute soup
    const attrSoup = fc
      .array(
        fc.oneof(
          fc.constantFrom('n', 'y', 'p', 'c=', 'r=', 's=', 'i=', 'p=', 'v=', 'e='),
          fc.string(),
        ),
        {
          maxLength: 8,
        },
      )
      .map((xs) => xs.join(','))
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
      attrSoup.map((s) => Buffer.from(s)),
    )
    fc.assert(
      fc.property(bytes, bytes, (first, final) => {
        const server = new ScramServer(secret)
        onlyScram(() => server.handleClientFirst(first))
        const server2 = new ScramServer(secret, { nonce: 'srv' })
        server2.handleClientFirst(b('n,,n=,r=cli'))
        onlyScram(() => server2.handleClientFinal(final))
        const client = new ScramClient({ password: 'pw', nonce: 'cli' })
        client.clientFirstMessage()
        onlyScram(() => client.clientFinalMessage(Buffer.concat([b('r=cli'), first])))
        onlyScram(() => client.verifyServerFinal(final))
      }),
      { numRuns: 2000 },
    )
  })
})
