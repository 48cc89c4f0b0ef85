import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { LoginFailureKind, loginFailureKind, retrySoon } from './server-restart.ts'

const { restarting, unreachable, refused } = LoginFailureKind

describe('what a failed server login says of its server', () => {
  test('PostgreSQL starting, stopping or recovering is restarting', () => {
    for (const [code, message] of [
      ['57P03', 'the database system is starting up'],
      ['57P03', 'the database system is shutting down'],
      ['57P03', 'the database system is in recovery mode'],
      ['57P01', 'terminating connection due to administrator command'],
      ['57P02', 'terminating connection because of crash of another server process'],
    ]) {
      assert.equal(
        loginFailureKind({ code: code!, message: message!, fromServer: true }),
        restarting,
      )
    }
  })

  test('a server that went away in the middle of the login is restarting', () => {
    for (const message of [
      'read ECONNRESET',
      'write EPIPE',
      'server closed the connection during login',
    ]) {
      assert.equal(loginFailureKind({ code: '08006', message, fromServer: false }), restarting)
    }
  })

  test('nothing answering is unreachable', () => {
    for (const message of [
      'connect ECONNREFUSED 127.0.0.1:5432',
      'connect EHOSTUNREACH 10.0.0.1:5432',
      'getaddrinfo ENOTFOUND db.example',
      'connect ENOENT /var/run/postgresql/.s.PGSQL.5432',
      'server connect timeout after 15s',
    ]) {
      assert.equal(loginFailureKind({ code: '08006', message, fromServer: false }), unreachable)
    }
  })

  test('a refused login is refused, and only it waits the whole server_login_retry', () => {
    for (const failure of [
      { code: '28P01', message: 'password authentication failed for user "x"', fromServer: true },
      { code: '3D000', message: 'database "x" does not exist', fromServer: true },
      { code: '08006', message: 'server refused SSL', fromServer: false },
      { code: '28000', message: 'no password known for user "x"', fromServer: false },
    ]) {
      assert.equal(loginFailureKind(failure), refused)
    }
    assert.deepEqual([restarting, unreachable, refused].map(retrySoon), [true, true, false])
  })
})
