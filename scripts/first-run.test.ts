// What a newcomer's first commands meet on a machine with Node.js and
// PostgreSQL only: `npm ci` under the host's own Node (20 on this project's
// machines; the scripts then run on the Node 24 of the `node` devDependency)
// says nothing about engines, and the test helpers find no tool that
// PGBC_TEST_WITHOUT hides, so the tests that need one skip.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..')
const run = promisify(execFile)
const MODULE = new URL('./optional-tools.ts', import.meta.url).href
const PG_BIN = new URL('./pg-bin.ts', import.meta.url).href

/** The environment of a user's shell: no npm_* variables, no node_modules/.bin on PATH. */
function shellEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key)) env[key] = value
  }
  env.PATH = (process.env.PATH ?? '')
    .split(':')
    .filter((dir) => !/node_modules[/\\](\.bin|node[/\\]bin)$/.test(dir))
    .join(':')
  return env
}

test('npm ci on the host Node warns about no engine', { timeout: 120_000 }, async () => {
  const env = shellEnv()
  const { stdout: version } = await run('node', ['--version'], { env })
  // A dry run resolves the lockfile and checks every package's engines, installing nothing.
  const { stdout, stderr } = await run(
    'npm',
    ['ci', '--dry-run', '--ignore-scripts', '--no-audit', '--no-fund'],
    { cwd: root, env, timeout: 100_000 },
  )
  assert.doesNotMatch(`${stdout}${stderr}`, /EBADENGINE/, `under Node ${version.trim()}`)
  // The root states what the host's Node must run (npm ci); the published package's own
  // range is written by the package build.
  const engines = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).engines
  assert.ok(engines?.node, 'the root says which Node runs npm ci')
})

test('PGBC_TEST_WITHOUT hides the tools it names from the test helpers', async () => {
  const script = `
    const { findTool, skipWithout } = await import(${JSON.stringify(MODULE)})
    const { findPgTool } = await import(${JSON.stringify(PG_BIN)})
    const found = {
      pgbouncer: findTool('pgbouncer'), haproxy: findTool('haproxy'), promtool: findTool('promtool'),
      psql: findPgTool('psql'), pgbench: findPgTool('pgbench'),
    }
    process.stdout.write(JSON.stringify({ found, skip: skipWithout('promtool', found.promtool) }))
  `
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, PGBC_TEST_WITHOUT: 'pgbouncer,haproxy,promtool,psql,pgbench' },
  })
  const { found, skip } = JSON.parse(stdout)
  assert.deepEqual(found, {
    pgbouncer: null,
    haproxy: null,
    promtool: null,
    psql: null,
    pgbench: null,
  })
  assert.equal(skip, 'promtool not installed (apt-get install -y prometheus)')
})
