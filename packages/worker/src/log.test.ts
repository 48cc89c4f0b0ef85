import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { describe, test } from 'node:test'
import { censorSecrets } from './log.ts'

describe('log lines', () => {
  test('a password or secret, on the line or one level down, is censored', () => {
    const line = { user: 'app', password: 'hunter2', auth: { secret: 's3', method: 'md5' } }
    assert.deepEqual(censorSecrets(line), {
      user: 'app',
      password: '[redacted]',
      auth: { secret: '[redacted]', method: 'md5' },
    })
    assert.equal(line.password, 'hunter2', "the caller's object is left as it was")
    assert.equal(line.auth.secret, 's3')
  })

  test('a line without secrets is passed on as it is', () => {
    const line = {
      client: 7,
      remote: '127.0.0.1:5432',
      db: 'app',
      user: 'app',
      err: new Error('x'),
    }
    assert.equal(censorSecrets(line), line)
  })

  test("the thread's logger writes no secret to stdout", () => {
    const script = [
      `const { createLogger } = await import(${JSON.stringify(new URL('./log.ts', import.meta.url).href)})`,
      `const log = createLogger({ level: 'info', worker: 0 })`,
      `log.info({ user: 'app', password: 'hunter2', auth: { secret: 's3' } }, 'login')`,
      `log.flush()`,
    ].join('\n')
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
    })
    const line = JSON.parse(out.trim())
    assert.equal(line.msg, 'login')
    assert.equal(line.user, 'app')
    assert.equal(line.password, '[redacted]')
    assert.deepEqual(line.auth, { secret: '[redacted]' })
    assert.doesNotMatch(out, /hunter2|s3/)
  })
})
