// The ini dialect of pgbouncer.ini, as PgBouncer's parser (libusual cfparser)
// reads it: one `key = value` or `[section]` per line, comment lines start with
// '#' or ';' (nowhere else: `x = 1 ; no` has the value "1 ; no"), values are
// taken literally up to the end of the line. Keys are `[A-Za-z0-9_.*-]+` or, as
// newer PgBouncers allow for database and user names, "double quoted" with ""
// for a quote. `%include FILE` splices another file in place; the section in
// force carries into it and out of it again, as in PgBouncer.
//
// This module only tokenizes; what sections and keys mean is config.ts's job.

import { readFileSync, realpathSync, statSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'

export interface ErrorPlace {
  file?: string | null
  line?: number | null
  key?: string | null
}

// Every problem with the configuration, found once at load time. The message
// reads `${file}:${line}: ${key}: ${reason}` with the parts that are known.
export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG'
  readonly file: string | null
  readonly line: number | null
  readonly key: string | null
  readonly reason: string

  constructor(reason: string, place: ErrorPlace = {}) {
    const file = place.file ?? null
    const line = place.line ?? null
    const key = place.key ?? null
    const where = file === null ? '' : line === null ? file : `${file}:${line}`
    super(
      [where, key ?? '']
        .filter((s) => s !== '')
        .concat(reason)
        .join(': '),
    )
    this.name = 'ConfigError'
    this.file = file
    this.line = line
    this.key = key
    this.reason = reason
  }
}

export type IniItem =
  | { kind: 'section'; name: string; file: string; line: number }
  | { kind: 'entry'; key: string; quoted: boolean; value: string; file: string; line: number }

// PgBouncer stops at this depth; a loop is reported before it is reached.
export const MAX_INCLUDE_DEPTH = 10

const KEY_CHARS = /^[A-Za-z0-9_.*-]+/

type RawItem = IniItem | { kind: 'include'; target: string; file: string; line: number }

// Tokenizes one file's text; `%include` lines are returned, not followed.
export function parseIniText(text: string, file: string): RawItem[] {
  const items: RawItem[] = []
  const lines = text.replace(/^\uFEFF/, '').split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1
    const s = lines[i]!.trim()
    if (s === '' || s[0] === '#' || s[0] === ';') continue
    const syntax = (what: string) => new ConfigError(`syntax error: ${what}`, { file, line })

    if (s[0] === '[') {
      const close = s.indexOf(']')
      if (close < 0) throw syntax('section header without closing "]"')
      if (s.slice(close + 1).trim() !== '') throw syntax('text after section header')
      items.push({ kind: 'section', name: s.slice(1, close).trim(), file, line })
      continue
    }

    if (s[0] === '%') {
      const m = /^%include(?:\s+(.*))?$/.exec(s)
      if (!m) throw syntax(`unknown directive "${s.split(/\s/)[0]}"`)
      const target = (m[1] ?? '').trim()
      if (target === '') throw syntax('%include without a file name')
      items.push({ kind: 'include', target, file, line })
      continue
    }

    let key: string
    let rest: string
    let quoted = false
    if (s[0] === '"') {
      const q = readQuoted(s, 0)
      if (q === null) throw syntax('unterminated "quoted" key')
      if (q.value === '') throw syntax('empty key')
      key = q.value
      rest = s.slice(q.end)
      quoted = true
    } else {
      const m = KEY_CHARS.exec(s)
      if (!m) throw syntax(`unexpected character "${s[0]}" at start of key`)
      key = m[0]
      rest = s.slice(key.length)
    }
    rest = rest.replace(/^[ \t]+/, '')
    if (rest[0] !== '=') throw syntax(`expected "=" after "${key}"`)
    items.push({ kind: 'entry', key, quoted, value: rest.slice(1).trim(), file, line })
  }
  return items
}

// Reads `file` and every file it includes, in order. A path in error messages
// is shown as the user wrote it (joined to the including file's directory when
// that is where it was found).
export function readIniFile(file: string): IniItem[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read config file: ${errText(err)}`, { file })
  }
  const out: IniItem[] = []
  expand(parseIniText(text, file), [realPath(file)], out)
  return out
}

function expand(items: RawItem[], stack: string[], out: IniItem[]): void {
  for (const item of items) {
    if (item.kind !== 'include') {
      out.push(item)
      continue
    }
    const place = { file: item.file, line: item.line, key: '%include' }
    const target = resolveConfigPath(item.target, item.file)
    let text: string
    try {
      text = readFileSync(target, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read included file "${item.target}": ${errText(err)}`, place)
    }
    const real = realPath(target)
    const seen = stack.indexOf(real)
    if (seen >= 0) {
      const chain = [...stack.slice(seen), real].join(' -> ')
      throw new ConfigError(`%include loop: ${chain}`, place)
    }
    if (stack.length >= MAX_INCLUDE_DEPTH) {
      throw new ConfigError(`%include nested deeper than ${MAX_INCLUDE_DEPTH} files`, place)
    }
    expand(parseIniText(text, target), [...stack, real], out)
  }
}

// PgBouncer resolves a relative %include or auth_file against the current
// directory. We do the same first, then try the directory of the file that
// names it, so a config started from elsewhere (a service, a test) still finds
// its neighbours; where PgBouncer finds the file, we find the same one.
export function resolveConfigPath(target: string, fromFile: string | null): string {
  if (isAbsolute(target)) return target
  const fromCwd = resolve(target)
  if (fromFile === null || exists(fromCwd)) return fromCwd
  const fromDir = resolve(dirname(fromFile), target)
  return exists(fromDir) ? fromDir : fromCwd
}

// A "quoted" string starting at s[start] with "" standing for one quote.
// Returns the unquoted text and the index after the closing quote.
export function readQuoted(s: string, start: number): { value: string; end: number } | null {
  let value = ''
  let i = start + 1
  for (;;) {
    const q = s.indexOf('"', i)
    if (q < 0) return null
    value += s.slice(i, q)
    if (s[q + 1] === '"') {
      value += '"'
      i = q + 2
      continue
    }
    return { value, end: q + 1 }
  }
}

function exists(p: string): boolean {
  try {
    statSync(p)
    return true
  } catch {
    return false
  }
}

function realPath(p: string): string {
  try {
    return realpathSync(p)
  } catch {
    return resolve(p)
  }
}

export function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException
  return e?.code
    ? `${e.code} (${e.message.replace(/^[A-Z]+: /, '').replace(/,.*$/, '')})`
    : String(err)
}
