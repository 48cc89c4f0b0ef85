// PostgreSQL's MD5 password scheme (AuthenticationMD5Password, R/5).
//
// Stored form (pg_authid.rolpassword, userlist.txt): 'md5' + hex(md5(password + user)).
// Wire response to a 4-byte salt:  'md5' + hex(md5(hex-part-of-stored + salt)).
// The response depends only on the stored hash, so a pooler holding the hash can log in to
// PostgreSQL on a client's behalf without ever knowing the password.

import { createHash, timingSafeEqual } from 'node:crypto'

const MD5_HASH_RE = /^md5[0-9a-f]{32}$/

export function md5Hash(user: string, password: string): string {
  return `md5${createHash('md5').update(password).update(user).digest('hex')}`
}

export function isMd5Hash(s: string): boolean {
  return MD5_HASH_RE.test(s)
}

// A plaintext password that happens to look like an md5 hash is taken as the hash, which is
// what PostgreSQL itself does when such a string is given to CREATE/ALTER ROLE ... PASSWORD.
export function md5Response(user: string, passwordOrHash: string, salt: Buffer): string {
  const stored = isMd5Hash(passwordOrHash) ? passwordOrHash : md5Hash(user, passwordOrHash)
  return `md5${createHash('md5').update(stored.slice(3)).update(salt).digest('hex')}`
}

// `stored` is what the auth source holds for the user: a plaintext password or an md5 hash.
// A SCRAM secret cannot answer an MD5 challenge (the hash is not derivable from it), so it
// never verifies; callers should have offered SCRAM instead.
export function md5Verify(user: string, stored: string, salt: Buffer, response: string): boolean {
  if (stored.startsWith('SCRAM-SHA-256$')) return false
  const expected = Buffer.from(md5Response(user, stored, salt), 'utf8')
  const got = Buffer.from(response, 'utf8')
  // Length is not secret (always 35 for a well-formed answer); compare contents in constant time.
  if (got.length !== expected.length) return false
  return timingSafeEqual(got, expected)
}
