import { readFileSync } from 'node:fs'

/** This package's version, from its package.json (beside src/ and lib/ alike). */
export const VERSION: string = JSON.parse(
  readFileSync(new URL('../package.json', import.meta.url), 'utf8'),
).version

/**
 * What `--version` prints and SHOW VERSION answers, word for word: the
 * PgBouncer whose console and settings this one follows first, then our own.
 */
export const VERSION_TEXT = `PgBouncer 1.18.0 (pgbouncer-cluster ${VERSION})`
