// auth_hba_file: PgBouncer's subset of pg_hba.conf, read and checked once here
// (at start and on reload). A line this version cannot honour stops the start
// with file, line and what is wrong; PgBouncer 1.18 only logs such a line and
// skips it, which leaves a rule silently missing.

import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, resolve } from 'node:path'
import {
  type HbaConnType,
  type HbaMethod,
  type HbaNames,
  type HbaRule,
  parseIpv4,
  parseIpv6,
} from '@pgbouncer-cluster/worker/hba'
import { ConfigError, errText } from './ini.ts'

const CONN_TYPES: readonly string[] = ['local', 'host', 'hostssl', 'hostnossl']
const METHODS: readonly string[] = ['trust', 'reject', 'md5', 'password', 'scram-sha-256', 'cert']

interface Token {
  text: string
  quoted: boolean
  /** A comma follows: the list goes on. */
  comma: boolean
}

/** One line's fields: whitespace separates them, commas join the items of a list. */
function tokenize(line: string, fail: (why: string) => never): Token[][] {
  const fields: Token[][] = []
  let field: Token[] | null = null
  let i = 0
  for (;;) {
    while (i < line.length && /\s/.test(line[i]!)) i++
    if (i >= line.length || line[i] === '#') break
    let text = ''
    let quoted = false
    if (line[i] === '"') {
      quoted = true
      i++
      for (;;) {
        if (i >= line.length) fail('unterminated quoted name')
        if (line[i] === '"') {
          if (line[i + 1] !== '"') break
          i++
        }
        text += line[i++]
      }
      i++
    } else {
      while (i < line.length && !/[\s,#"]/.test(line[i]!)) text += line[i++]
      if (text === '') fail(`unexpected "${line[i]}"`)
    }
    let comma = false
    if (line[i] === ',') {
      comma = true
      i++
    }
    const token = { text, quoted, comma }
    if (field === null) {
      field = [token]
      fields.push(field)
    } else field.push(token)
    if (!comma) field = null
  }
  if (field !== null) fail('a list ends with a comma')
  return fields
}

function keyword(t: Token, word: string): boolean {
  return !t.quoted && t.text === word
}

function names(
  field: Token[],
  isDatabase: boolean,
  fromFile: string,
  fail: (why: string) => never,
  depth = 0,
): HbaNames {
  const out: HbaNames = { all: false, sameuser: false, replication: false, names: [] }
  const column = isDatabase ? 'database' : 'user'
  for (const t of field) {
    if (keyword(t, 'all')) out.all = true
    else if (isDatabase && keyword(t, 'sameuser')) out.sameuser = true
    else if (isDatabase && keyword(t, 'replication')) out.replication = true
    else if (isDatabase && (keyword(t, 'samerole') || keyword(t, 'samegroup')))
      fail(`${t.text} is not supported (PgBouncer does not support it either)`)
    else if (!t.quoted && t.text.startsWith('+'))
      fail(`group names (${t.text}) are not supported (PgBouncer does not support them either)`)
    else if (!t.quoted && t.text.startsWith('@')) {
      const name = t.text.slice(1)
      if (name === '') fail(`"@" without a file name in the ${column} column`)
      const path = isAbsolute(name) ? name : resolve(dirname(fromFile), name)
      if (depth > 10) fail(`${t.text}: @ files nested too deep`)
      let text: string
      try {
        text = readFileSync(path, 'utf8')
      } catch (err) {
        fail(`cannot read ${t.text} (${path}): ${errText(err)}`)
      }
      const lines = text.split(/\r?\n/)
      for (let n = 0; n < lines.length; n++) {
        const failIn = (why: string): never => {
          throw new ConfigError(why, { file: path, line: n + 1 })
        }
        for (const f of tokenize(lines[n]!, failIn)) {
          const inner = names(f, isDatabase, path, failIn, depth + 1)
          out.all ||= inner.all
          out.sameuser ||= inner.sameuser
          out.replication ||= inner.replication
          out.names.push(...inner.names)
        }
      }
    } else out.names.push(t.text)
  }
  return out
}

/** A prefix length as a mask of `bytes` bytes. */
function prefixMask(bits: number, bytes: number): number[] {
  const mask: number[] = []
  for (let i = 0; i < bytes; i++) {
    const b = Math.max(0, Math.min(8, bits - i * 8))
    mask.push(b === 0 ? 0 : (0xff << (8 - b)) & 0xff)
  }
  return mask
}

function address(
  tokens: Token[][],
  at: number,
  fail: (why: string) => never,
): { address: HbaRule['address']; next: number } {
  const field = tokens[at]
  if (field === undefined) fail('no address')
  if (field.length > 1) fail('one address per line')
  const text = field[0]!.text
  const slash = text.indexOf('/')
  const host = slash >= 0 ? text.slice(0, slash) : text
  const bytes = parseIpv4(host) ?? parseIpv6(host)
  if (bytes === null) {
    if (['all', 'samehost', 'samenet'].includes(host) || /^[.a-z]/i.test(host))
      fail(`address "${host}": only IPv4 and IPv6 addresses are supported, as in PgBouncer`)
    fail(`invalid address "${host}"`)
  }
  if (slash >= 0) {
    const bitsText = text.slice(slash + 1)
    const bits = Number(bitsText)
    if (!/^[0-9]+$/.test(bitsText) || bits > bytes.length * 8)
      fail(`invalid mask length "/${bitsText}" for ${host}`)
    return { address: { bytes, mask: prefixMask(bits, bytes.length) }, next: at + 1 }
  }
  const maskField = tokens[at + 1]
  if (maskField === undefined) fail(`no mask after address ${host} (give /bits or a mask)`)
  const maskText = maskField[0]!.text
  const mask = bytes.length === 4 ? parseIpv4(maskText) : parseIpv6(maskText)
  if (mask === null) fail(`invalid mask "${maskText}" for ${host}`)
  return { address: { bytes, mask }, next: at + 2 }
}

/**
 * Parses an auth_hba_file's text. `file` names it in errors and anchors
 * relative @file names.
 */
export function parseHba(text: string, file: string): HbaRule[] {
  const rules: HbaRule[] = []
  const lines = text.split(/\r?\n/)
  for (let n = 0; n < lines.length; n++) {
    const line = n + 1
    const fail = (why: string): never => {
      throw new ConfigError(why, { file, line })
    }
    const tokens = tokenize(lines[n]!, fail)
    if (tokens.length === 0) continue
    const typeText = tokens[0]![0]!.text
    if (!CONN_TYPES.includes(typeText) || tokens[0]!.length > 1) {
      fail(`unknown connection type "${typeText}" (local, host, hostssl or hostnossl)`)
    }
    const type = typeText as HbaConnType
    if (tokens.length < 2) fail('no database column')
    const databases = names(tokens[1]!, true, file, fail)
    if (tokens.length < 3) fail('no user column')
    const users = names(tokens[2]!, false, file, fail)
    let at = 3
    let addr: HbaRule['address'] = null
    if (type !== 'local') {
      const parsed = address(tokens, at, fail)
      addr = parsed.address
      at = parsed.next
    }
    const methodField = tokens[at]
    if (methodField === undefined) fail('no authentication method')
    const method = methodField[0]!.text
    if (!METHODS.includes(method) || methodField.length > 1) {
      if (method === 'peer')
        fail('method peer is not supported by this version (Node.js cannot read peer credentials)')
      fail(`unsupported method "${method}" (${METHODS.join(', ')})`)
    }
    if (tokens.length > at + 1) {
      const option = tokens[at + 1]![0]!.text
      if (option.startsWith('map='))
        fail(`${option}: user name maps (auth_ident_file) are not supported by this version`)
      fail(`unsupported option "${option}"`)
    }
    if (method === 'cert' && type === 'local') fail('method cert needs a TLS connection, not local')
    rules.push({ file, line, type, databases, users, address: addr, method: method as HbaMethod })
  }
  return rules
}

/** Reads and parses auth_hba_file; errors name the file (and line). */
export function loadHba(path: string, place: { file?: string; line?: number }): HbaRule[] {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read auth_hba_file "${path}": ${errText(err)}`, {
      ...place,
      key: 'auth_hba_file',
    })
  }
  return parseHba(text, path)
}
