// The root `npm test`: every workspace's tests through turbo, then one total over all of them,
// printed last as TAP comment lines (`# tests 12`, `# pass 12`, `# fail 0`, ...).

import { spawn } from 'node:child_process'
import { existsSync, globSync, readFileSync, rmSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  addSummaries,
  emptySummary,
  formatSummary,
  parseTapSummary,
  SUMMARY_KEYS,
  type TapSummary,
} from './tap-summary.ts'
import { matchingTestGlobs } from './test-files.ts'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')

function workspaceDirs(): string[] {
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const patterns: string[] = Array.isArray(manifest.workspaces)
    ? manifest.workspaces
    : (manifest.workspaces?.packages ?? [])
  return patterns
    .flatMap((pattern) => globSync(pattern, { cwd: root }))
    .map((dir) => join(root, dir))
}

function packageName(dir: string): string {
  try {
    return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).name ?? dir
  } catch {
    return dir
  }
}

function runTurbo(): Promise<number> {
  const local = join(root, 'node_modules', '.bin', 'turbo')
  const child = spawn(
    existsSync(local) ? local : 'turbo',
    ['run', 'test', '--continue', '--concurrency=2'],
    {
      cwd: root,
      stdio: 'inherit',
      env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TURBO_NO_UPDATE_NOTIFIER: '1' },
    },
  )
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => child.kill(signal))
  }
  return new Promise((done) => {
    child.on('error', (err) => {
      console.error(`run-tests: could not run turbo: ${err.message}`)
      done(127)
    })
    child.on('exit', (code, signal) => done(code ?? (signal ? 1 : 0)))
  })
}

function describe(name: string, s: TapSummary): string {
  const extras = SUMMARY_KEYS.filter((k) => k !== 'tests' && k !== 'pass' && k !== 'suites')
    .filter((k) => s[k] > 0)
    .map((k) => `, ${s[k]} ${k}`)
  return `${name}: ${s.tests} tests, ${s.pass} pass${extras.join('')}`
}

const dirs = workspaceDirs()
for (const dir of dirs) rmSync(join(dir, 'test-results'), { recursive: true, force: true })

const turboCode = await runTurbo()

let total = emptySummary()
const report: string[] = []
const problems: string[] = []
for (const dir of dirs) {
  const name = packageName(dir)
  const hasTests = matchingTestGlobs(dir).length > 0
  const tapPath = join(dir, 'test-results', 'tap.txt')
  if (!existsSync(tapPath)) {
    if (hasTests) problems.push(`${name}: has tests but wrote no ${tapPath}`)
    continue
  }
  const summary = parseTapSummary(readFileSync(tapPath, 'utf8'))
  if (!summary) {
    if (hasTests) problems.push(`${name}: ${tapPath} has no summary (run interrupted?)`)
    continue
  }
  report.push(describe(name, summary))
  total = addSummaries(total, summary)
}
if (turboCode !== 0) problems.push(`turbo exited with code ${turboCode}`)

console.log(`\nTest results by package:\n${report.map((line) => `  ${line}`).join('\n')}`)
for (const problem of problems) console.error(`run-tests: ${problem}`)
process.stdout.write(formatSummary(total))
process.exitCode = problems.length > 0 || total.fail > 0 || total.cancelled > 0 ? 1 : 0
