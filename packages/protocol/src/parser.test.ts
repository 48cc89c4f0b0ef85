import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import fc from 'fast-check'
import { allMessages } from '../test/wire-fixtures.ts'
import { ProtocolError } from './errors.ts'
import { AuthCode, TxStatus } from './messages.ts'
import * as p from './parser.ts'
import * as s from './serializer.ts'

const hex = (b: Buffer) => b.toString('hex')

// CopyInResponse / CopyOutResponse, which the pooler only reads.
function copyResponse(type: number, format: number, cols: number[]): Buffer {
  const b = Buffer.alloc(5 + 3 + 2 * cols.length)
  b[0] = type
  b.writeInt32BE(b.length - 1, 1)
  b[5] = format
  b.writeInt16BE(cols.length, 6)
  for (const [i, c] of cols.entries()) b.writeInt16BE(c, 8 + 2 * i)
  return b
}

describe('serializer: exact bytes', () => {
  it('builds the fixed messages', () => {
    assert.equal(hex(s.readyForQuery(TxStatus.Idle)), '5a0000000549')
    assert.equal(hex(s.readyForQuery(TxStatus.InTransaction)), '5a0000000554')
    assert.equal(hex(s.readyForQuery(TxStatus.Failed)), '5a0000000545')
    assert.equal(hex(s.sync()), '5300000004')
    assert.equal(hex(s.flush()), '4800000004')
    assert.equal(hex(s.terminate()), '5800000004')
    assert.equal(hex(s.copyDone()), '6300000004')
    assert.equal(hex(s.emptyQueryResponse()), '4900000004')
    assert.equal(hex(s.authenticationOk()), '520000000800000000')
    assert.equal(hex(s.authenticationCleartextPassword()), '520000000800000003')
    assert.equal(hex(s.sslRequest()), '0000000804d2162f')
    assert.throws(() => s.readyForQuery(0x58), RangeError)
  })

  it('builds variable messages', () => {
    assert.equal(hex(s.query('SELECT 1')), `510000000d${hex(Buffer.from('SELECT 1'))}00`)
    assert.equal(hex(s.cancelRequest(7, -2)), '0000001004d2162e00000007fffffffe')
    assert.equal(hex(s.backendKeyData(7, 0xfffffffe)), '4b0000000c00000007fffffffe')
    assert.equal(
      hex(s.authenticationMD5Password(Buffer.from('abcd'))),
      '520000000c0000000561626364',
    )
    assert.equal(hex(s.authenticationSASL(['X'])), '520000000b0000000a580000')
    assert.equal(hex(s.describe('S', 'a')), '4400000007' + '53' + '6100')
    assert.equal(hex(s.execute('', 5)), '45000000090000000005')
    assert.equal(hex(s.parse('', 'q', [23])), '500000000d' + '00' + '7100' + '0001' + '00000017')
    assert.equal(
      hex(s.bind('', 's', ['1', null])),
      // B  length=22  ''  's'   0 formats  2 params  '1'           NULL      0 formats
      '42' + '00000016' + '00' + '7300' + '0000' + '0002' + '0000000131' + 'ffffffff' + '0000',
    )
    assert.equal(
      hex(s.errorResponse({ severity: 'E', code: 'X', message: 'm' })),
      '4500000011' + '534500' + '564500' + '435800' + '4d6d00' + '00',
    )
    assert.equal(
      hex(s.negotiateProtocolVersion(0, ['_pq_.a'])),
      '76' + '00000013' + '00030000' + '00000001' + '5f70715f2e6100',
    )
    assert.equal(
      hex(s.dataRow(['ab', null])),
      '44' + '00000010' + '0002' + '000000026162' + 'ffffffff',
    )
    assert.equal(
      hex(s.startupMessage({ user: 'u' })),
      '00000010' + '00030000' + '7573657200' + '7500' + '00',
    )
  })

  it('describes columns with their type size and text format', () => {
    const m = s.rowDescription([{ name: 'n', typeOid: 20 }])
    //        T  len       cnt  n\0   table     attnum oid       size typmod    format
    assert.equal(
      hex(m),
      '540000001a' +
        '0001' +
        '6e00' +
        '00000000' +
        '0000' +
        '00000014' +
        '0008' +
        'ffffffff' +
        '0000',
    )
    assert.equal(m.readInt16BE(5 + 2 + 2 + 10), 8)
    assert.equal(s.rowDescription([{ name: 't' }]).readUInt32BE(5 + 2 + 2 + 6), 25)
  })
})

describe('parsers: round trips through the builders', () => {
  it('backend messages', () => {
    assert.equal(p.readyForQueryStatus(s.readyForQuery(TxStatus.Failed)), TxStatus.Failed)
    assert.deepEqual(p.parseParameterStatus(s.parameterStatus('TimeZone', 'Europe/Zürich')), {
      name: 'TimeZone',
      value: 'Europe/Zürich',
    })
    assert.deepEqual(p.parseBackendKeyData(s.backendKeyData(123, -5)), { pid: 123, secret: -5 })
    assert.deepEqual(p.parseBackendKeyData(s.backendKeyData(1, 0xdeadbeef)), {
      pid: 1,
      secret: 0xdeadbeef | 0,
    })
    assert.equal(p.commandCompleteTag(s.commandComplete('INSERT 0 5')), 'INSERT 0 5')

    const full = {
      severity: 'FATAL',
      code: '53300',
      message: 'no more connections',
      detail: 'd',
      hint: 'h',
    }
    assert.deepEqual(p.parseErrorFields(s.errorResponse(full)), {
      ...full,
      fields: { S: 'FATAL', V: 'FATAL', C: '53300', M: 'no more connections', D: 'd', H: 'h' },
    })
    const notice = p.parseErrorFields(
      s.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hi' }),
    )
    assert.equal(notice.message, 'hi')
    assert.equal('detail' in notice, false)
    assert.equal('hint' in notice, false)

    assert.deepEqual(p.parseAuthentication(s.authenticationOk()), { code: AuthCode.Ok })
    assert.deepEqual(p.parseAuthentication(s.authenticationCleartextPassword()), {
      code: AuthCode.CleartextPassword,
    })
    assert.deepEqual(
      p.parseAuthentication(s.authenticationMD5Password(Buffer.from([9, 8, 7, 6]))),
      {
        code: AuthCode.MD5Password,
        salt: Buffer.from([9, 8, 7, 6]),
      },
    )
    assert.deepEqual(
      p.parseAuthentication(s.authenticationSASL(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS'])),
      {
        code: AuthCode.SASL,
        mechanisms: ['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS'],
      },
    )
    assert.deepEqual(p.parseAuthentication(s.authenticationSASLContinue(Buffer.from('r=1'))), {
      code: AuthCode.SASLContinue,
      data: Buffer.from('r=1'),
    })
    assert.deepEqual(p.parseAuthentication(s.authenticationSASLFinal(Buffer.from('v=2'))), {
      code: AuthCode.SASLFinal,
      data: Buffer.from('v=2'),
    })
    assert.deepEqual(p.parseCopyResponse(copyResponse(0x47, 0, [0, 0, 0])), {
      format: 0,
      columnFormats: [0, 0, 0],
    })
    assert.deepEqual(p.parseCopyResponse(copyResponse(0x48, 1, [1])), {
      format: 1,
      columnFormats: [1],
    })
    assert.deepEqual(p.parseCopyResponse(copyResponse(0x57, 0, [])), {
      format: 0,
      columnFormats: [],
    })
  })

  it('frontend messages', () => {
    assert.equal(p.parseQuery(s.query('SELECT ☃')), 'SELECT ☃')
    assert.deepEqual(p.parseParse(s.parse('s1', 'SELECT $1, $2', [23, 4294967295])), {
      name: 's1',
      query: 'SELECT $1, $2',
      paramTypes: [23, 4294967295],
    })
    assert.deepEqual(p.parseParse(s.parse('', 'x')), { name: '', query: 'x', paramTypes: [] })
    assert.deepEqual(p.parseBind(s.bind('p1', 's1', ['a', null, Buffer.from([0])])), {
      portal: 'p1',
      statement: 's1',
    })
    assert.deepEqual(p.parseDescribe(s.describe('S', 's1')), { kind: 'S', name: 's1' })
    assert.deepEqual(p.parseDescribe(s.describe('P', '')), { kind: 'P', name: '' })
    assert.deepEqual(p.parseClose(s.close('P', 'p1')), { kind: 'P', name: 'p1' })
    assert.deepEqual(p.parseClose(s.close('S', '')), { kind: 'S', name: '' })
    assert.deepEqual(p.parseExecute(s.execute('p1', 100)), { portal: 'p1', maxRows: 100 })
    assert.deepEqual(p.parseExecute(s.execute('')), { portal: '', maxRows: 0 })
    assert.equal(p.parsePasswordMessage(s.passwordMessage('pw')), 'pw')
    assert.deepEqual(
      p.parseSASLInitialResponse(s.saslInitialResponse('SCRAM-SHA-256', Buffer.from('n,,n=,r=x'))),
      {
        mechanism: 'SCRAM-SHA-256',
        data: Buffer.from('n,,n=,r=x'),
      },
    )
    assert.deepEqual(
      p.parseSASLResponse(s.saslResponse(Buffer.from('c=biws'))),
      Buffer.from('c=biws'),
    )
  })

  it('reads a SASLInitialResponse without initial data (length -1)', () => {
    const m = Buffer.from('70000000126d65636800ffffffff', 'hex')
    m.writeInt32BE(m.length - 1, 1)
    assert.deepEqual(p.parseSASLInitialResponse(m), { mechanism: 'mech', data: Buffer.alloc(0) })
  })
})

describe('parsers: malformed bodies', () => {
  const parsers: ((m: Buffer) => unknown)[] = [
    p.readyForQueryStatus,
    p.parseParameterStatus,
    p.parseErrorFields,
    p.parseBackendKeyData,
    p.parseAuthentication,
    p.parseParse,
    p.parseBind,
    p.parseDescribe,
    p.parseClose,
    p.parseExecute,
    p.parseQuery,
    p.commandCompleteTag,
    p.parseCopyResponse,
    p.parsePasswordMessage,
    p.parseSASLInitialResponse,
    p.parseSASLResponse,
  ]
  const samples = [...allMessages(), copyResponse(0x47, 0, [0, 1]), copyResponse(0x48, 0, [])]

  const onlyProtocolErrors = (m: Buffer) => {
    for (const parse of parsers) {
      try {
        parse(m)
      } catch (e) {
        if (!(e instanceof ProtocolError)) {
          throw new Error(`${parse.name} threw ${String(e)} on ${hex(m)}`)
        }
      }
    }
  }

  it('explain what is wrong', () => {
    assert.throws(() => p.parseQuery(Buffer.from('510000000541', 'hex')), {
      code: 'ERR_PG_PROTOCOL',
      message: "invalid 'Q' message: missing string terminator",
    })
    assert.throws(() => p.parseQuery(s.sync()), { message: "expected message type 'Q', got 'S'" })
    assert.throws(() => p.readyForQueryStatus(Buffer.from('5a0000000649', 'hex')), {
      message: "invalid message length for type 'Z'",
    })
    assert.throws(() => p.parseBackendKeyData(Buffer.from('4b00000008000000ff', 'hex')), {
      message: "invalid 'K' message: message too short",
    })
    assert.throws(() => p.parseDescribe(Buffer.from('440000000658' + '00', 'hex')), ProtocolError)
    assert.throws(
      () => p.parseParse(Buffer.from('5000000008000000ff', 'hex').subarray(0, 9)),
      ProtocolError,
    )
    assert.throws(
      () => p.parseCopyResponse(copyResponse(0x47, 0, [0]).subarray(0, 9)),
      ProtocolError,
    )
  })

  it('truncated bodies with a matching length only raise ProtocolError', () => {
    for (const m of samples) {
      for (let n = 0; n < m.length; n++) {
        const t = Buffer.from(m.subarray(0, n))
        if (n >= 5) t.writeInt32BE(n - 1, 1)
        onlyProtocolErrors(t)
      }
    }
  })

  it('mutated and random bodies only raise ProtocolError', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...samples),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.uint8Array({ maxLength: 40 }),
        (m, flips, tail) => {
          const b = Buffer.concat([m, tail])
          for (const [at, v] of flips) b[5 + (at % Math.max(1, b.length - 5))] = v
          b.writeInt32BE(b.length - 1, 1)
          onlyProtocolErrors(b)
        },
      ),
      { numRuns: 300 },
    )
  })
})
