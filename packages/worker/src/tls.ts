// TLS on both sides, as PgBouncer does it: a client that sends SSLRequest is
// answered 'S' and the handshake runs on the same socket (client_tls_*); a
// server connection starts with SSLRequest and goes on in TLS when PostgreSQL
// answers 'S' (server_tls_*). The files were read and checked by the
// coordinator; a worker builds its secure contexts once per configuration.

import type net from 'node:net'
import { isIP } from 'node:net'
import tls from 'node:tls'
import type { SslMode, TlsMaterial, TlsSide } from './config-types.ts'

export interface TlsSetup {
  mode: SslMode
  context: tls.SecureContext
  /** verify-ca or verify-full: the peer's certificate is checked. */
  verify: boolean
  /** verify-full: and it must name the host (server side). */
  checkName: boolean
}

export interface TlsSetups {
  client: TlsSetup | null
  server: TlsSetup | null
}

function setup(side: TlsSide | null): TlsSetup | null {
  if (side === null) return null
  const { sslmode, ...options } = side
  return {
    mode: sslmode,
    context: tls.createSecureContext(options),
    verify: sslmode === 'verify-ca' || sslmode === 'verify-full',
    checkName: sslmode === 'verify-full',
  }
}

export function tlsSetups(material: TlsMaterial): TlsSetups {
  return { client: setup(material.client), server: setup(material.server) }
}

/** require, verify-ca and verify-full refuse to go on in plain text. */
export function tlsRequired(mode: SslMode): boolean {
  return mode === 'require' || mode === 'verify-ca' || mode === 'verify-full'
}

/** The server side of a client's handshake, on the socket that sent SSLRequest. */
export function acceptTls(socket: net.Socket, s: TlsSetup): tls.TLSSocket {
  return new tls.TLSSocket(socket, {
    isServer: true,
    secureContext: s.context,
    requestCert: s.verify,
    rejectUnauthorized: s.verify,
  })
}

/** The client side of a handshake with PostgreSQL, after it answered 'S'. */
export function connectTls(socket: net.Socket, s: TlsSetup, host: string): tls.TLSSocket {
  return tls.connect({
    socket,
    host, // what the certificate is checked against
    secureContext: s.context,
    // SNI takes a name, never an address.
    servername: isIP(host) === 0 ? host : undefined,
    rejectUnauthorized: s.verify,
    // verify-ca checks the chain only; verify-full also the name.
    checkServerIdentity: s.checkName ? tls.checkServerIdentity : () => undefined,
  })
}

/**
 * The tls column of SHOW CLIENTS / SHOW SERVERS, as PgBouncer writes it:
 * protocol/cipher[/ECDH=curve]; empty for a connection in plain text.
 */
export function tlsInfo(socket: net.Socket): string {
  if (!(socket instanceof tls.TLSSocket)) return ''
  const protocol = socket.getProtocol()
  const cipher = socket.getCipher()
  if (protocol === null || cipher === undefined) return ''
  const key = socket.getEphemeralKeyInfo()
  const curve = key !== null && 'name' in key && key.name ? `/ECDH=${key.name}` : ''
  return `${protocol}/${cipher.name}${curve}`
}
