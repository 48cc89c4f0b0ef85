/**
 * `HOST:PORT`, `[v6]:PORT` or `PORT` (host 127.0.0.1), as `--listen` and `--metrics` take
 * it; null when the port is missing or out of range. Callers raise their own error type.
 */
export function splitHostPort(value: string): { host: string; port: number } | null {
  const i = value.lastIndexOf(':')
  const host = i < 0 ? '127.0.0.1' : value.slice(0, i).replace(/^\[(.*)\]$/, '$1') || '127.0.0.1'
  const port = Number(i < 0 ? value : value.slice(i + 1))
  if (value.trim() === '' || !Number.isInteger(port) || port < 0 || port > 65535) return null
  return { host, port }
}
