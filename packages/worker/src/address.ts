// Where a server connection goes, by PgBouncer's rule (dns_connect in its
// objects.c): a host starting with '/' is the directory of PostgreSQL's unix
// socket, one starting with '@' names a socket in Linux's abstract namespace,
// and an entry without a host uses the socket in unix_socket_dir. A
// CancelRequest for a server goes the same way as the server did.

/** A unix socket by its path, or a TCP host and port. */
export type ServerAddress =
  | { readonly path: string; readonly host?: undefined; readonly port?: undefined }
  | { readonly path?: undefined; readonly host: string; readonly port: number }

/**
 * The address of one host of a database entry: `host` as written ('' when
 * the entry has none). Null when it means unix_socket_dir and that is empty:
 * PgBouncer then fails the connection ("unix socket dir not configured").
 */
export function serverAddress(
  host: string,
  port: number,
  unixSocketDir: string,
): ServerAddress | null {
  if (host !== '' && !isSocketDir(host)) return { host, port }
  const dir = host === '' ? unixSocketDir : host
  if (dir === '') return null
  const path = `${dir}/.s.PGSQL.${port}`
  // Node names an abstract socket with a leading NUL, as the kernel does.
  return { path: path.startsWith('@') ? `\u0000${path.slice(1)}` : path }
}

/** A host that names a unix socket's directory rather than a machine. */
export function isSocketDir(host: string): boolean {
  return host.startsWith('/') || host.startsWith('@')
}

/** An address as a person reads it: the socket's path, or host:port. */
export function describeAddress(address: ServerAddress): string {
  if (address.path === undefined) {
    const { host, port } = address
    return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
  }
  return address.path.startsWith('\u0000') ? `@${address.path.slice(1)}` : address.path
}
