// What `pgbouncer-cluster --check` prints about a configuration that loaded:
// where it listens, what each database entry sends clients to, and the
// warnings (what is accepted but not honoured), so an operator sees the
// effect of a file before serving with it.

import { describeAddress, serverAddress } from '@pgbouncer-cluster/worker/address'
import type { Config } from './config.ts'

export function describeConfig(config: Config, workers: number): string[] {
  const s = config.settings
  const lines = [
    `${config.file ?? 'built-in defaults'}: configuration is good`,
    `listen: ${s.listenAddr}:${s.listenPort}${s.unixSocketDir ? ` and ${s.unixSocketDir}/.s.PGSQL.${s.listenPort}` : ''}, ${workers} worker${workers === 1 ? '' : 's'}`,
    `pool_mode ${s.poolMode}, auth_type ${s.authType}, max_client_conn ${s.maxClientConn}, default_pool_size ${s.defaultPoolSize}`,
  ]
  if (s.sessionStatePolicy !== 'allow')
    lines.push(`session_state_policy ${s.sessionStatePolicy} (transaction and statement pools)`)
  if (s.user)
    lines.push(`user ${s.user}: started as root, the pooler switches to it once it listens`)
  const users = Object.keys(config.authUsers).length
  if (s.authFile !== null)
    lines.push(`auth_file ${s.authFile}: ${users} user${users === 1 ? '' : 's'}`)
  const entries = Object.values(config.databases)
  if (config.fallbackDatabase !== null) entries.push(config.fallbackDatabase)
  lines.push(`databases (${entries.length}):`)
  for (const d of entries) {
    const where = d.hosts.map((h) => {
      const address = serverAddress(h.host, h.port, s.unixSocketDir)
      if (address === null) return 'unix_socket_dir (empty: no server)'
      return address.path === undefined
        ? describeAddress(address)
        : `unix socket ${describeAddress(address)}`
    })
    const target = `${where.join(', ')}, dbname ${d.dbname === '*' ? '<the name asked for>' : d.dbname}`
    const extra = [
      d.user === undefined ? '' : `user ${d.user}`,
      d.poolMode === undefined ? '' : `pool_mode ${d.poolMode}`,
      d.poolSize === undefined ? '' : `pool_size ${d.poolSize}`,
      d.sessionStatePolicy === undefined ? '' : `session_state_policy ${d.sessionStatePolicy}`,
    ].filter((x) => x !== '')
    lines.push(`  ${d.name} -> ${target}${extra.length > 0 ? ` (${extra.join(', ')})` : ''}`)
  }
  const named = Object.keys(config.users)
  if (named.length > 0) lines.push(`[users] entries: ${named.join(', ')}`)
  for (const w of config.warnings) lines.push(`warning: ${w}`)
  return lines
}
