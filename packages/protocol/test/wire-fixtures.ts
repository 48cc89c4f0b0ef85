// One of every typed message the serializer builds, for framing and parser tests.

import fc from 'fast-check'
import * as s from '../src/serializer.ts'

const E = 0x45
const I = 0x49
const T = 0x54

export function backendMessages(): Buffer[] {
  return [
    s.authenticationOk(),
    s.authenticationCleartextPassword(),
    s.authenticationMD5Password(Buffer.from([1, 2, 3, 4])),
    s.authenticationSASL(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']),
    s.authenticationSASLContinue(Buffer.from('r=abc,s=c2FsdA==,i=4096')),
    s.authenticationSASLFinal(Buffer.from('v=c2lnbmF0dXJl')),
    s.parameterStatus('server_version', '15.4'),
    s.parameterStatus('application_name', 'ünïcödé'),
    s.backendKeyData(4242, -123456789),
    s.readyForQuery(I),
    s.readyForQuery(T),
    s.readyForQuery(E),
    s.errorResponse({
      severity: 'FATAL',
      code: '08P01',
      message: 'bad',
      detail: 'some detail',
      hint: 'a hint',
    }),
    s.noticeResponse({ severity: 'WARNING', code: '01000', message: 'careful' }),
    s.rowDescription([{ name: 'id', typeOid: 23 }, { name: 'name' }]),
    s.rowDescription([]),
    s.dataRow(['1', null, '', 'x'.repeat(300)]),
    s.commandComplete('SELECT 1'),
    s.emptyQueryResponse(),
    s.negotiateProtocolVersion(0, ['_pq_.foo', '_pq_.bar']),
  ]
}

export function frontendMessages(): Buffer[] {
  return [
    s.passwordMessage('secret'),
    s.saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=,r=nonce')),
    s.saslResponse(Buffer.from('c=biws,r=nonce,p=proof')),
    s.query('SELECT 1'),
    s.query(''),
    s.parse('s1', 'SELECT $1::int', [23]),
    s.parse('', 'SELECT 1'),
    s.bind('', 's1', ['42', null, Buffer.from('raw')]),
    s.describe('S', 's1'),
    s.describe('P', ''),
    s.close('S', 's1'),
    s.close('P', 'p1'),
    s.execute('', 0),
    s.execute('p1', 10),
    s.sync(),
    s.flush(),
    s.copyData(Buffer.from('1\tone\n')),
    s.copyData(Buffer.alloc(0)),
    s.copyDone(),
    s.copyFail('client gave up'),
    s.terminate(),
  ]
}

export function allMessages(): Buffer[] {
  return [...backendMessages(), ...frontendMessages()]
}

/** Cuts `buf` at the given sorted, distinct offsets (each in 1..length-1). */
export function cut(buf: Buffer, offsets: number[]): Buffer[] {
  const out: Buffer[] = []
  let prev = 0
  for (const o of offsets) {
    out.push(buf.subarray(prev, o))
    prev = o
  }
  out.push(buf.subarray(prev))
  return out
}

// Typed messages whose length fields mostly tell the truth (4..70) and
// sometimes lie (negative, under 4, over a cap of 64, or off by a few).
export const lyingStreamArb = fc
  .array(
    fc.record({
      type: fc.integer({ min: 0, max: 255 }),
      body: fc.uint8Array({ maxLength: 70 }),
      lie: fc.oneof(
        { weight: 8, arbitrary: fc.constant(0) },
        { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) },
        { weight: 1, arbitrary: fc.constantFrom(-1, -2147483648, 2147483647, 65) },
      ),
    }),
    { maxLength: 30 },
  )
  .map((recs) =>
    Buffer.concat(
      recs.map(({ type, body, lie }) => {
        const b = Buffer.alloc(5 + body.length)
        b[0] = type
        const length = Math.abs(lie) > 3 ? lie : 4 + body.length + lie
        b.writeInt32BE(length, 1)
        b.set(body, 5)
        return b
      }),
    ),
  )

/** Records the size of every Buffer.allocUnsafe call made while `fn` runs. */
export function allocSizes(fn: () => void): number[] {
  const orig = Buffer.allocUnsafe
  const sizes: number[] = []
  Buffer.allocUnsafe = (n: number) => {
    sizes.push(n)
    return orig(n)
  }
  try {
    fn()
  } finally {
    Buffer.allocUnsafe = orig
  }
  return sizes
}
