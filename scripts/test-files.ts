// Where a package's tests live; shared by node-test.ts (what to run) and run-tests.ts (which
// packages must have produced results).

import { globSync } from 'node:fs'

export const TEST_GLOBS = ['src/**/*.test.ts', 'test/**/*.test.ts', '*.test.ts'] as const

/** The globs that match at least one file under `dir`: `node --test` fails on an empty glob. */
export function matchingTestGlobs(dir: string): string[] {
  return TEST_GLOBS.filter(
    (pattern) =>
      globSync(pattern, { cwd: dir, exclude: (name) => name === 'node_modules' }).length > 0,
  )
}
