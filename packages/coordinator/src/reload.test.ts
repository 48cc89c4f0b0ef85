import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { loadConfig } from './config/config.ts'
import { nextConfig, sameServer } from './reload.ts'

const dir = mkdtempSync(join(tmpdir(), 'reload-test-'))
after(() => rmSync(dir, { recursive: true, force: true }))
let n = 0

function load(text: string) {
  const file = join(dir, `p${n++}.ini`)
  writeFileSync(file, text)
  return loadConfig(file)
}

const BASE = `[databases]
app = host=127.0.0.1 port=5432 dbname=app pool_size=2
gone = host=127.0.0.1 port=5432 dbname=gone

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
pidfile = /tmp/a.pid
default_pool_size = 20
`

describe('nextConfig', () => {
  it('takes the new file but keeps the settings only a restart changes', () => {
    const running = load(BASE)
    const loaded = load(
      BASE.replace('listen_port = 6432', 'listen_port = 7000')
        .replace('pidfile = /tmp/a.pid', 'pidfile = /tmp/b.pid')
        .replace('default_pool_size = 20', 'default_pool_size = 30'),
    )
    const { config, ignored } = nextConfig(running, loaded)
    assert.equal(config.settings.defaultPoolSize, 30)
    assert.equal(config.settings.listenPort, 6432)
    assert.equal(config.settings.pidfile, '/tmp/a.pid')
    assert.deepEqual(ignored.sort(), ['listen_port', 'pidfile'])
    assert.equal(loaded.settings.listenPort, 7000, 'the loaded config was changed in place')
  })

  it('names databases that now reach another server or went away, not those resized', () => {
    const running = load(BASE)
    const loaded = load(
      BASE.replace('dbname=app pool_size=2', 'dbname=app pool_size=5')
        .replace('gone = host=127.0.0.1 port=5432 dbname=gone\n', '')
        .replace('[databases]\n', '[databases]\nnew = host=127.0.0.1 dbname=new\n'),
    )
    const { config, changedDatabases } = nextConfig(running, loaded, ['app'])
    assert.equal(config.databases.app!.poolSize, 5)
    assert.deepEqual(changedDatabases.sort(), ['gone', 'new'])
    const moved = load(BASE.replace('port=5432 dbname=app', 'port=5433 dbname=app'))
    assert.deepEqual(nextConfig(running, moved).changedDatabases, ['app'])
  })

  it('sameServer compares how a server is reached, not the pool limits', () => {
    const a = {
      name: 'a',
      host: 'h,i',
      port: 1,
      hosts: [
        { host: 'h', port: 1 },
        { host: 'i', port: 1 },
      ],
      dbname: 'd',
      user: 'u',
      password: 'p',
      line: 2,
    }
    assert.equal(sameServer(a, { ...a, poolSize: 9 }), true)
    assert.equal(sameServer(a, { ...a, loadBalanceHosts: 'disable' }), true)
    const otherPort = [a.hosts[0]!, { host: 'i', port: 2 }]
    assert.equal(sameServer(a, { ...a, hosts: otherPort }), false, 'the second host moved')
    assert.equal(sameServer(a, { ...a, password: 'q' }), false)
    assert.equal(sameServer(a, null), false)
    assert.equal(sameServer(null, null), true)
  })
})
