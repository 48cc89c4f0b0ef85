// What a harness cluster is configured with: its options, postgresql.conf additions, pg_hba.conf
// and the self-signed TLS certificate.

import { chmod } from 'node:fs/promises'
import { join } from 'node:path'
import { cleanEnv, HarnessError, type OsUser, run } from './pg-process.ts'

export type AuthMethod = 'trust' | 'password' | 'md5' | 'scram-sha-256'
export type PasswordEncryption = 'md5' | 'scram-sha-256'

export interface RoleOptions {
  name: string
  password?: string
  /** pg_hba method for this role from 127.0.0.1; default 'trust'. */
  auth?: AuthMethod
  /** How the password is stored; default 'md5' for md5 auth, else 'scram-sha-256'. */
  passwordEncryption?: PasswordEncryption
  superuser?: boolean
}

export interface StartOptions {
  /**
   * The loopback address to listen on (default 127.0.0.1). Linux answers on all of
   * 127.0.0.0/8 without setup, so servers on 127.0.0.2, 127.0.0.3 ... stand for other hosts.
   */
  host?: string
  roles?: RoleOptions[]
  /** Created owned by postgres, with CONNECT and the public schema open to everyone. */
  databases?: string[]
  maxConnections?: number
  /** Extra server settings, as with `-c name=value`. */
  settings?: Record<string, string>
  /** Self-signed certificate (CN and SAN 127.0.0.1) and ssl=on. */
  tls?: boolean
  /** Raw pg_hba.conf lines placed before the role lines, so they take precedence. */
  hba?: string[]
  /** Runs `pgbench -i -q -s <scale>` as postgres (database default 'postgres'). */
  pgbenchInit?: { scale: number; database?: string }
  /** No "PostgreSQL x at host:port" line on stderr (npm start prints its own). */
  quiet?: boolean
}

export interface TlsFiles {
  certPath: string
  keyPath: string
}

const AUTH_METHODS: readonly string[] = ['trust', 'password', 'md5', 'scram-sha-256']

export function validateOptions(opts: StartOptions): void {
  const bad = (message: string) => new HarnessError('PG_HARNESS_BAD_OPTIONS', message)
  for (const role of opts.roles ?? []) {
    if (!role.name) throw bad('every role needs a name')
    const auth = role.auth ?? 'trust'
    if (!AUTH_METHODS.includes(auth)) throw bad(`role ${role.name}: unknown auth ${auth}`)
    if (auth !== 'trust' && role.password === undefined) {
      throw bad(`role ${role.name}: auth ${auth} needs a password`)
    }
  }
  for (const key of Object.keys(opts.settings ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(key)) throw bad(`bad setting name ${key}`)
  }
  if (opts.host !== undefined && !/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(opts.host)) {
    throw bad(`host must be a loopback address 127.x.y.z, got ${opts.host}`)
  }
  const scale = opts.pgbenchInit?.scale
  if (scale !== undefined && !(Number.isInteger(scale) && scale > 0)) {
    throw bad(`pgbenchInit.scale must be a positive integer, got ${scale}`)
  }
}

export function passwordEncryptionOf(role: RoleOptions): PasswordEncryption {
  return role.passwordEncryption ?? (role.auth === 'md5' ? 'md5' : 'scram-sha-256')
}

/**
 * Unix-socket connections are always trusted: the harness sets itself up through them.
 * A connection to another loopback address comes from 127.0.0.1, so both get the lines.
 */
export function hbaConf(opts: StartOptions, host: string): string {
  const lines = ['# written by pg-harness', 'local all all trust', ...(opts.hba ?? [])]
  const sources = host === '127.0.0.1' ? [host] : [host, '127.0.0.1']
  for (const role of opts.roles ?? []) {
    const name = `"${role.name.replaceAll('"', '""')}"`
    for (const from of sources) lines.push(`host all ${name} ${from}/32 ${role.auth ?? 'trust'}`)
  }
  for (const from of sources) lines.push(`host all all ${from}/32 trust`)
  lines.push('')
  return lines.join('\n')
}

function confValue(value: string): string {
  return `'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`
}

/** Appended to postgresql.conf; later lines win, so `settings` can override our defaults. */
export function serverConf(opts: StartOptions, host: string, socketDir: string): string {
  const settings: Record<string, string> = {
    listen_addresses: host,
    unix_socket_directories: socketDir,
    // A throwaway cluster needs no durability; these make DDL and pgbench -i much faster.
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    logging_collector: 'off',
  }
  if (opts.maxConnections !== undefined) settings.max_connections = String(opts.maxConnections)
  if (opts.tls) {
    Object.assign(settings, { ssl: 'on', ssl_cert_file: 'server.crt', ssl_key_file: 'server.key' })
  }
  Object.assign(settings, opts.settings)
  const lines = Object.entries(settings).map(([key, value]) => `${key} = ${confValue(value)}`)
  return `\n# pg-harness\n${lines.join('\n')}\n`
}

/** Writes server.crt/server.key into the data dir, owned by the server's OS user. */
export async function makeCert(
  dataDir: string,
  host: string,
  user: OsUser | null,
): Promise<TlsFiles> {
  const certPath = join(dataDir, 'server.crt')
  const keyPath = join(dataDir, 'server.key')
  // An EC key is generated instantly; RSA would add noticeably to every TLS test's start-up.
  const args = [
    'req',
    '-x509',
    '-nodes',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
  ]
  args.push('-keyout', keyPath, '-out', certPath, '-days', '7', '-subj', `/CN=${host}`)
  args.push('-addext', `subjectAltName=IP:${host}`)
  await run('openssl', args, { user, cwd: dataDir, env: cleanEnv() })
  // PostgreSQL refuses a key that group or others can read.
  await chmod(keyPath, 0o600)
  return { certPath, keyPath }
}
