// A package's `npm test`: node:test over its test files, spec output to stdout and a TAP copy
// in test-results/tap.txt for scripts/run-tests.ts to total up.
//   usage (from a package directory): node ../../scripts/node-test.ts

import { spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { EMPTY_TAP } from './tap-summary.ts'
import { matchingTestGlobs } from './test-files.ts'

const cwd = process.cwd()
const resultsDir = join(cwd, 'test-results')
mkdirSync(resultsDir, { recursive: true })

const globs = matchingTestGlobs(cwd)
if (globs.length === 0) {
  writeFileSync(join(resultsDir, 'tap.txt'), EMPTY_TAP)
  console.log(`${basename(cwd)}: no test files`)
  process.exit(0)
}

// Inside another node:test run (e.g. our own tests), NODE_TEST_CONTEXT would turn this run into
// that runner's child, which reports through stdout instead of its reporters and exit code.
function runnerEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NODE_TEST_CONTEXT
  return env
}

const child = spawn(
  process.execPath,
  [
    '--test',
    '--test-timeout=120000',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    '--test-reporter=tap',
    '--test-reporter-destination=test-results/tap.txt',
    ...globs,
  ],
  { cwd, stdio: 'inherit', env: runnerEnv() },
)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => child.kill(signal))
}
child.on('exit', (code, signal) => {
  process.exit(code ?? (signal ? 1 : 0))
})
