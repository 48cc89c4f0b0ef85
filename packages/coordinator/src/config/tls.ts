// client_tls_* and server_tls_*: the files are read and checked here, once
// per load or reload, so a missing file or a key that does not match its
// certificate stops the start (exit 2) or keeps a reload out, naming the key.
// Workers get the PEM text and build their secure contexts from it.

import { readFileSync } from 'node:fs'
import { createSecureContext, type SecureVersion } from 'node:tls'
import type { TlsMaterial, TlsSide } from '@pgbouncer-cluster/worker'
import { ConfigError, errText, resolveConfigPath } from './ini.ts'
import type { Settings, SslMode } from './settings.ts'

interface Place {
  file: string
  line: number
}

const VERSIONS: Record<string, SecureVersion> = {
  'tlsv1.0': 'TLSv1',
  'tlsv1.1': 'TLSv1.1',
  'tlsv1.2': 'TLSv1.2',
  'tlsv1.3': 'TLSv1.3',
}
const ORDER: readonly SecureVersion[] = ['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3']

// PgBouncer's cipher keywords name its own lists; Node's default list is the
// modern one ("secure"/"default"). Anything else is an OpenSSL cipher string.
const CIPHER_KEYWORDS = new Set([
  'default',
  'secure',
  'fast',
  'normal',
  'compat',
  'legacy',
  'insecure',
  'all',
])

/**
 * PgBouncer's tls_protocols: a list of tlsv1.0 … tlsv1.3, or "secure"
 * (tlsv1.2,tlsv1.3), "all" or "legacy". Node takes a range: the lowest and
 * the highest named.
 */
export function protocolRange(value: string): {
  minVersion: SecureVersion
  maxVersion: SecureVersion
} {
  const named: SecureVersion[] = []
  for (const word of value
    .toLowerCase()
    .split(/[\s,:]+/)
    .filter(Boolean)) {
    if (word === 'secure') named.push('TLSv1.2', 'TLSv1.3')
    else if (word === 'all' || word === 'legacy') named.push(...ORDER)
    else if (VERSIONS[word] !== undefined) named.push(VERSIONS[word])
    else throw new Error(`unknown TLS protocol "${word}"`)
  }
  if (named.length === 0) throw new Error('no TLS protocol named')
  const indexes = named.map((v) => ORDER.indexOf(v))
  return { minVersion: ORDER[Math.min(...indexes)]!, maxVersion: ORDER[Math.max(...indexes)]! }
}

/**
 * `file` is the main ini: an error about a key the file does not set names it,
 * with no line.
 */
export function loadTls(
  settings: Settings,
  origins: Map<string, Place>,
  file: string | null,
): TlsMaterial {
  const s = settings
  return {
    client:
      s.clientTlsSslmode === 'disable'
        ? null
        : side('client', origins, file, {
            sslmode: s.clientTlsSslmode,
            key_file: s.clientTlsKeyFile,
            cert_file: s.clientTlsCertFile,
            ca_file: s.clientTlsCaFile,
            protocols: s.clientTlsProtocols,
            ciphers: s.clientTlsCiphers,
          }),
    server:
      s.serverTlsSslmode === 'disable'
        ? null
        : side('server', origins, file, {
            sslmode: s.serverTlsSslmode,
            key_file: s.serverTlsKeyFile,
            cert_file: s.serverTlsCertFile,
            ca_file: s.serverTlsCaFile,
            protocols: s.serverTlsProtocols,
            ciphers: s.serverTlsCiphers,
          }),
  }
}

interface SideSettings {
  sslmode: SslMode
  key_file: string
  cert_file: string
  ca_file: string
  protocols: string
  ciphers: string
}

function side(
  which: 'client' | 'server',
  origins: Map<string, Place>,
  file: string | null,
  set: SideSettings,
): TlsSide {
  const name = (key: keyof SideSettings) => `${which}_tls_${key}`
  const where = (key: keyof SideSettings) => ({
    ...(origins.get(name(key)) ?? (file === null ? {} : { file })),
    key: name(key),
  })
  const read = (key: 'key_file' | 'cert_file' | 'ca_file'): string | undefined => {
    const value = set[key]
    if (value === '') return undefined
    const path = resolveConfigPath(value, origins.get(name(key))?.file ?? null)
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      throw new ConfigError(`cannot read ${name(key)} "${value}": ${errText(err)}`, where(key))
    }
  }
  const key = read('key_file')
  const cert = read('cert_file')
  const ca = read('ca_file')
  // We present a certificate to clients always, to PostgreSQL only if given one.
  if (which === 'client' && (key === undefined || cert === undefined)) {
    throw new ConfigError(
      `client_tls_sslmode = ${set.sslmode} needs client_tls_key_file and client_tls_cert_file`,
      where(key === undefined ? 'key_file' : 'cert_file'),
    )
  }
  if ((key === undefined) !== (cert === undefined)) {
    throw new ConfigError(
      `${name('key_file')} and ${name('cert_file')} go together`,
      where(key === undefined ? 'key_file' : 'cert_file'),
    )
  }
  const verifies = set.sslmode === 'verify-ca' || set.sslmode === 'verify-full'
  if (which === 'client' && verifies && ca === undefined) {
    throw new ConfigError(
      `client_tls_sslmode = ${set.sslmode} checks client certificates against client_tls_ca_file, which is not set`,
      where('ca_file'),
    )
  }
  let range: ReturnType<typeof protocolRange>
  try {
    range = protocolRange(set.protocols)
  } catch (err) {
    throw new ConfigError((err as Error).message, where('protocols'))
  }
  const ciphers = CIPHER_KEYWORDS.has(set.ciphers.toLowerCase()) ? undefined : set.ciphers
  const material: TlsSide = { sslmode: set.sslmode, key, cert, ca, ciphers, ...range }
  try {
    createSecureContext(material)
  } catch (err) {
    const culprit = ciphers !== undefined ? 'ciphers' : key !== undefined ? 'key_file' : 'ca_file'
    throw new ConfigError(`TLS setup refused: ${errText(err)}`, where(culprit))
  }
  return material
}
