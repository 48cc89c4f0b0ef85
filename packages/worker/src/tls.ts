// TLS on both sides, as PgBouncer does it: a client that sends SSLRequest is
// answered 'S' and the handshake runs on the same socket (client_tls_*); a
// server connection starts with SSLRequest and goes on in TLS when PostgreSQL
// answers 'S' (server_tls_*). The files were read and checked by the
// coordinator; a worker builds its secure contexts once per configuration.

import type net from 'node:net'
import { isIP } from 'node:net'
import tls from 'node:tls'
import type { SslMode, TlsMaterial, TlsSide } from './config-types.ts'
import { Texts } from './errors.ts'

export interface TlsSetup {
  mode: SslMode
  context: tls.SecureContext
  /**
   * Client side: a tls.Server that never listens. Accepted sockets are handed
   * to it, so Node checks client certificates as it does for its own servers.
   */
  acceptor: Acceptor | null
  /** verify-ca or verify-full: the peer's certificate is checked. */
  verify: boolean
  /** verify-full: and it must name the host (server side). */
  checkName: boolean
}

export interface TlsSetups {
  client: TlsSetup | null
  server: TlsSetup | null
}

type Secured = (socket: tls.TLSSocket | null) => void

interface Acceptor {
  server: tls.Server
  /** Handshakes under way, by the client's address and port. */
  pending: Map<string, Secured>
}

function acceptor(options: tls.SecureContextOptions, verify: boolean): Acceptor {
  const server = tls.createServer({ ...options, requestCert: verify, rejectUnauthorized: verify })
  const pending = new Map<string, Secured>()
  const settle = (socket: tls.TLSSocket, secured: boolean) => {
    const key = `${socket.remoteAddress}:${socket.remotePort}`
    const done = pending.get(key)
    pending.delete(key)
    done?.(secured ? socket : null)
  }
  server.on('secureConnection', (socket: tls.TLSSocket) => settle(socket, true))
  server.on('tlsClientError', (_err: Error, socket: tls.TLSSocket) => {
    settle(socket, false)
    socket.destroy()
  })
  return { server, pending }
}

function setup(side: TlsSide | null, acceptsClients: boolean): TlsSetup | null {
  if (side === null) return null
  const { sslmode, ...options } = side
  const context = tls.createSecureContext(options)
  const verify = sslmode === 'verify-ca' || sslmode === 'verify-full'
  return {
    mode: sslmode,
    context,
    acceptor: acceptsClients ? acceptor(options, verify) : null,
    verify,
    checkName: sslmode === 'verify-full',
  }
}

export function tlsSetups(material: TlsMaterial): TlsSetups {
  return { client: setup(material.client, true), server: setup(material.server, false) }
}

/** require, verify-ca and verify-full refuse to go on in plain text. */
export function tlsRequired(mode: SslMode): boolean {
  return mode === 'require' || mode === 'verify-ca' || mode === 'verify-full'
}

/**
 * The server side of a client's handshake, on the socket that sent
 * SSLRequest. `done` gets the TLS socket once the handshake (and, with
 * verify-ca/verify-full, the client's certificate) passed, or null; the
 * returned function forgets the handshake if the client goes first.
 */
export function acceptTls(socket: net.Socket, s: TlsSetup, done: Secured): () => void {
  const { server, pending } = s.acceptor!
  const key = `${socket.remoteAddress}:${socket.remotePort}`
  pending.set(key, done)
  server.emit('connection', socket)
  return () => {
    if (pending.get(key) === done) pending.delete(key)
  }
}

/**
 * PostgreSQL's one-byte answer to our SSLRequest, under server_tls_sslmode:
 * go on in TLS, go on in plain text, or give up (with why).
 */
export function sslAnswer(answer: Buffer, mode: SslMode): 'tls' | 'plain' | Error {
  const byte = answer.length === 1 ? answer[0] : -1
  if (byte === 0x53 /* S */) return 'tls'
  if (byte === 0x4e /* N */) return tlsRequired(mode) ? new Error(Texts.serverRefusedSsl) : 'plain'
  return new Error('unexpected answer to SSLRequest')
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
export function tlsInfo(socket: object): string {
  if (!(socket instanceof tls.TLSSocket)) return ''
  const protocol = socket.getProtocol()
  const cipher = socket.getCipher()
  if (protocol === null || cipher === undefined) return ''
  const key = socket.getEphemeralKeyInfo()
  const curve = key !== null && 'name' in key && key.name ? `/ECDH=${key.name}` : ''
  return `${protocol}/${cipher.name}${curve}`
}
