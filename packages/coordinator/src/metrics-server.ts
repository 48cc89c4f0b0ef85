import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from '@pgbouncer-cluster/worker/log'
import { CONTENT_TYPE, type Format, type Metrics } from './metrics.ts'

/** A scrape that takes longer than this is answered 503 rather than held open. */
const SCRAPE_TIMEOUT_MS = 10_000

export interface MetricsServerOptions {
  host: string
  port: number
  metrics: Metrics
  log: Logger
  /** True while the pooler accepts clients: /ready answers 200, else 503. */
  ready(): boolean
}

/**
 * `--metrics HOST:PORT`: GET /metrics, /health and /ready on the coordinator
 * (main thread). Workers never see a request; a scrape reads what they
 * already publish, so a slow or stuck scraper costs the client path nothing.
 */
export class MetricsServer {
  private readonly options: MetricsServerOptions
  private readonly server: http.Server

  constructor(options: MetricsServerOptions) {
    this.options = options
    this.server = http.createServer(this.onRequest)
    // A scraper that stops reading is dropped, never accumulated.
    this.server.requestTimeout = SCRAPE_TIMEOUT_MS
    this.server.headersTimeout = SCRAPE_TIMEOUT_MS
    this.server.keepAliveTimeout = 5_000
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.options
    return new Promise((resolve, reject) => {
      const fail = (err: NodeJS.ErrnoException) =>
        reject(
          Object.assign(
            new Error(
              `cannot listen on ${host}:${port} for --metrics: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`,
            ),
            { code: err.code },
          ),
        )
      this.server.once('error', fail)
      this.server.listen({ host, port }, () => {
        this.server.off('error', fail)
        this.server.on('error', (err) =>
          this.options.log.error({ err: err.message }, 'metrics server error'),
        )
        resolve(this.server.address() as AddressInfo)
      })
    })
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }

  private readonly onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0]
    const method = req.method ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') {
      if (path === '/metrics' || path === '/health' || path === '/ready') {
        reply(res, 405, 'method not allowed\n', { allow: 'GET, HEAD' })
      } else reply(res, 404, 'not found\n')
      return
    }
    switch (path) {
      case '/health':
        reply(res, 200, 'ok\n')
        return
      case '/ready':
        if (this.options.ready()) reply(res, 200, 'ready\n')
        else reply(res, 503, 'not ready: shutting down\n')
        return
      case '/metrics':
        this.scrape(req, res)
        return
      default:
        reply(res, 404, 'not found\n')
    }
  }

  private scrape(req: http.IncomingMessage, res: http.ServerResponse): void {
    const format: Format = wantsOpenMetrics(req.headers.accept) ? 'openMetrics' : 'prometheus'
    this.options.metrics.render(format).then(
      (body) => reply(res, 200, body, { 'content-type': CONTENT_TYPE[format] }),
      (err: Error) => {
        this.options.log.error({ err: err.message }, 'metrics: scrape failed')
        reply(res, 500, 'scrape failed\n')
      },
    )
  }
}

/** Prometheus asks `application/openmetrics-text; version=1.0.0,...;q=0.5,...` when it wants it. */
function wantsOpenMetrics(accept: string | undefined): boolean {
  return accept !== undefined && /application\/openmetrics-text/i.test(accept)
}

function reply(
  res: http.ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  if (res.destroyed) return
  const bytes = Buffer.from(body)
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': bytes.length,
    ...headers,
  })
  res.end(res.req.method === 'HEAD' ? undefined : bytes)
}
