// auth_file (userlist.txt): one `"user" "secret"` per line, "" standing for a
// quote inside a field, the rest of the line ignored. The secret is a
// plain-text password, an MD5 hash ("md5" + 32 hex digits) or a SCRAM secret.
// PgBouncer skips lines starting with ';'; we also skip '#', which PgBouncer
// would stop reading at ("broken auth file") and silently drop later users.
// Anything else that is not a pair of quoted fields is an error here.

import { readFileSync } from 'node:fs'
import { ConfigError, errText, readQuoted } from './ini.ts'

export function parseUserlist(text: string, file: string): Record<string, string> {
  const users: Record<string, string> = Object.create(null)
  const lines = text.replace(/^\uFEFF/, '').split('\n')
  for (let i = 0; i < lines.length; i++) {
    const s = lines[i]!.trim()
    if (s === '' || s[0] === ';' || s[0] === '#') continue
    const fail = (what: string) => new ConfigError(what, { file, line: i + 1 })
    if (s[0] !== '"') throw fail('expected "user" "password" (each in double quotes)')
    const user = readQuoted(s, 0)
    if (user === null) throw fail('unterminated quoted user name')
    if (user.value === '') throw fail('empty user name')
    const rest = s.slice(user.end)
    const gap = /^[ \t]*/.exec(rest)![0].length
    if (rest[gap] !== '"') throw fail(`expected a quoted password after user "${user.value}"`)
    const secret = readQuoted(rest, gap)
    if (secret === null) throw fail(`unterminated quoted password for user "${user.value}"`)
    users[user.value] = secret.value
  }
  return users
}

// `display` is the path for messages (as written in the config).
export function loadUserlist(path: string, display = path): Record<string, string> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read auth_file: ${errText(err)}`, { file: display })
  }
  return parseUserlist(text, display)
}
