import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { addSummaries, EMPTY_TAP, formatSummary, parseTapSummary } from './tap-summary.ts'
import { matchingTestGlobs } from './test-files.ts'

const nodeTest = fileURLToPath(new URL('./node-test.ts', import.meta.url))

function runNodeTest(cwd: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [nodeTest], { cwd }, (err, stdout) => {
      resolve({ code: err ? Number(err.code ?? 1) : 0, stdout })
    })
  })
}

describe('parseTapSummary', () => {
  it('reads the trailing summary, ignoring earlier look-alike comment lines', () => {
    const tap = [
      'TAP version 13',
      '# tests 999',
      'ok 1 - a',
      'not ok 2 - b',
      '1..2',
      '# tests 2',
      '# suites 1',
      '# pass 1',
      '# fail 1',
      '# cancelled 0',
      '# skipped 0',
      '# todo 0',
      '# duration_ms 12.5',
      '',
    ].join('\n')
    assert.deepEqual(parseTapSummary(tap), {
      tests: 2,
      suites: 1,
      pass: 1,
      fail: 1,
      cancelled: 0,
      skipped: 0,
      todo: 0,
    })
  })

  it('returns null for a file without a summary', () => {
    assert.equal(parseTapSummary('TAP version 13\nok 1 - a\n'), null)
  })

  it('adds and formats summaries as one `# key n` line each', () => {
    const a = parseTapSummary(EMPTY_TAP)!
    const b = { ...a, tests: 3, pass: 2, fail: 1 }
    assert.equal(
      formatSummary(addSummaries(b, b)),
      '# tests 6\n# suites 0\n# pass 4\n# fail 2\n# cancelled 0\n# skipped 0\n# todo 0\n',
    )
  })
})

describe('node-test.ts', () => {
  const dirs: string[] = []
  const tempPackage = () => {
    const dir = mkdtempSync(join(tmpdir(), 'node-test-'))
    dirs.push(dir)
    return dir
  }
  after(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  })

  it('writes an empty but valid TAP summary when there are no test files', async () => {
    const dir = tempPackage()
    assert.deepEqual(matchingTestGlobs(dir), [])
    const { code } = await runNodeTest(dir)
    assert.equal(code, 0)
    const summary = parseTapSummary(readFileSync(join(dir, 'test-results/tap.txt'), 'utf8'))
    assert.deepEqual(summary, parseTapSummary(EMPTY_TAP))
    assert.equal(summary?.tests, 0)
  })

  it('runs only the globs that match, records TAP, and fails when a test fails', async () => {
    const dir = tempPackage()
    mkdirSync(join(dir, 'test', 'deep'), { recursive: true })
    const ok = `import { test } from 'node:test'\ntest('ok', () => {})\n`
    const bad = `import { test } from 'node:test'\ntest('bad', () => { throw new Error('no') })\n`
    writeFileSync(join(dir, 'test', 'deep', 'a.test.ts'), ok)
    writeFileSync(join(dir, 'top.test.ts'), bad)
    assert.deepEqual(matchingTestGlobs(dir), ['test/**/*.test.ts', '*.test.ts'])
    const { code, stdout } = await runNodeTest(dir)
    assert.equal(code, 1)
    assert.match(stdout, /✖ bad/)
    const summary = parseTapSummary(readFileSync(join(dir, 'test-results/tap.txt'), 'utf8'))
    assert.equal(summary?.tests, 2)
    assert.equal(summary?.pass, 1)
    assert.equal(summary?.fail, 1)
  })
})
