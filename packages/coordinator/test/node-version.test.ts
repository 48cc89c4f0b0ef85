import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { test } from 'node:test'

const BIN = new URL('../bin/pgbouncer-cluster.js', import.meta.url).pathname

// The host's own `node` (Node 20 on this project's machines) is what `#!/usr/bin/env node`
// finds for most users; the command must refuse it in one line, before loading anything.
function systemNode(): { path: string; version: string } | null {
  for (const path of ['/usr/bin/node', '/usr/local/bin/node']) {
    try {
      const version = execFileSync(path, ['--version'], { encoding: 'utf8' }).trim().slice(1)
      return { path, version }
    } catch {}
  }
  return null
}

const old = systemNode()
const tooOld =
  old !== null &&
  (() => {
    const [major, minor] = old.version.split('.').map(Number)
    return major < 22 || (major === 22 && minor < 12)
  })()

test('an unsupported Node gets one line and exit 1, no stack trace', {
  skip: tooOld ? false : 'no Node older than 22.12 on this host',
}, () => {
  const r = spawnSync(old!.path, [BIN, '--version'], { encoding: 'utf8' })
  assert.equal(r.status, 1)
  assert.equal(r.stdout, '')
  assert.equal(r.stderr, `pgbouncer-cluster needs Node.js >= 22.12 (this is ${old!.version})\n`)
})

test('the supported Node gets past the check', () => {
  const r = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  // The words SHOW VERSION answers.
  assert.match(r.stdout.trim(), /^PgBouncer 1\.18\.0 \(pgbouncer-cluster \d+\.\d+\.\d+\)$/)
})
