import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { test } from 'node:test'
import { isMd5Hash, md5Hash, md5Response, md5Verify } from './md5.ts'

const md5hex = (s: string | Buffer) => createHash('md5').update(s).digest('hex')
const SALT = Buffer.from([0x01, 0x02, 0xfe, 0xff])

test('md5Hash matches the pg_authid form', () => {
  assert.equal(md5Hash('postgres', 'postgres'), 'md53175bce1d3201d16594cebf9d7eb3f9d')
  assert.equal(md5Hash('md5user', 'secret'), `md5${md5hex('secretmd5user')}`)
  // user and password are not interchangeable: the order of concatenation matters
  assert.notEqual(md5Hash('a', 'bc'), md5Hash('bc', 'a'))
})

test('isMd5Hash accepts only md5 + 32 lowercase hex digits', () => {
  assert.equal(isMd5Hash(md5Hash('u', 'p')), true)
  assert.equal(isMd5Hash('md53175bce1d3201d16594cebf9d7eb3f9'), false)
  assert.equal(isMd5Hash('md53175bce1d3201d16594cebf9d7eb3f9dd'), false)
  assert.equal(isMd5Hash('md53175BCE1d3201d16594cebf9d7eb3f9d'), false)
  assert.equal(isMd5Hash('3175bce1d3201d16594cebf9d7eb3f9d'), false)
  assert.equal(isMd5Hash(''), false)
})

test('md5Response is md5(hex(stored) + salt), from a password or from the hash', () => {
  const stored = md5Hash('md5user', 'secret')
  const expected = `md5${md5hex(Buffer.concat([Buffer.from(stored.slice(3)), SALT]))}`
  assert.equal(md5Response('md5user', 'secret', SALT), expected)
  assert.equal(md5Response('md5user', stored, SALT), expected)
  assert.notEqual(md5Response('md5user', 'secret', Buffer.from([1, 2, 3, 4])), expected)
})

test('md5Verify accepts the right answer against plaintext and hash, rejects others', () => {
  const user = 'md5user'
  const right = md5Response(user, 'secret', SALT)
  assert.equal(md5Verify(user, 'secret', SALT, right), true)
  assert.equal(md5Verify(user, md5Hash(user, 'secret'), SALT, right), true)
  assert.equal(md5Verify(user, 'wrong', SALT, right), false)
  assert.equal(md5Verify('other', 'secret', SALT, right), false)
  assert.equal(md5Verify(user, 'secret', Buffer.from([0, 0, 0, 0]), right), false)
  assert.equal(md5Verify(user, 'secret', SALT, right.toUpperCase()), false)
  assert.equal(md5Verify(user, 'secret', SALT, right.slice(0, -1)), false)
  assert.equal(md5Verify(user, 'secret', SALT, ''), false)
  assert.equal(md5Verify(user, 'secret', SALT, `${right.slice(0, -1)}é`), false)
  // a SCRAM secret cannot answer an MD5 challenge
  const scram = `SCRAM-SHA-256$4096:${'A'.repeat(22)}==$${'B'.repeat(43)}=:${'C'.repeat(43)}=`
  assert.equal(md5Verify(user, scram, SALT, right), false)
})
