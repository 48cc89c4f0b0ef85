// The counters node:test's TAP reporter writes at the end of a run, e.g. `# tests 12`.

export const SUMMARY_KEYS = [
  'tests',
  'suites',
  'pass',
  'fail',
  'cancelled',
  'skipped',
  'todo',
] as const

export type TapSummary = Record<(typeof SUMMARY_KEYS)[number], number>

export function emptySummary(): TapSummary {
  return { tests: 0, suites: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0, todo: 0 }
}

/**
 * The trailing summary block of a TAP file, or null when it has none (an interrupted run).
 * Only the last block counts: a test's own output can also show up as `# ...` comment lines.
 */
export function parseTapSummary(text: string): TapSummary | null {
  const lines = text.split(/\r?\n/)
  let start = -1
  for (let i = lines.length - 1; i >= 0; i--) {
    if (/^# tests \d+$/.test(lines[i]!)) {
      start = i
      break
    }
  }
  if (start < 0) return null
  const summary = emptySummary()
  for (const line of lines.slice(start)) {
    const match = /^# (\w+) (\d+)$/.exec(line)
    if (match && (SUMMARY_KEYS as readonly string[]).includes(match[1]!)) {
      summary[match[1] as keyof TapSummary] = Number(match[2])
    }
  }
  return summary
}

export function addSummaries(a: TapSummary, b: TapSummary): TapSummary {
  const sum = emptySummary()
  for (const key of SUMMARY_KEYS) sum[key] = a[key] + b[key]
  return sum
}

export function formatSummary(summary: TapSummary): string {
  return SUMMARY_KEYS.map((key) => `# ${key} ${summary[key]}\n`).join('')
}

/** What node-test.ts writes for a package without test files. */
export const EMPTY_TAP = `TAP version 13\n1..0\n${formatSummary(emptySummary())}# duration_ms 0\n`
