// The yardstick of the pooler's speed targets: a bare Node relay with no
// features. Every client gets its own PostgreSQL connection and the bytes are
// piped both ways, as a first Node proxy would be written. What the pooler
// spends per transaction beyond this is the price of pooling; what this costs
// beside PgBouncer is the price of Node's socket layer on this machine.
//
//   node node-relay.ts LISTEN_PORT PG_HOST PG_PORT

import { connect, createServer } from 'node:net'

const [listenPort, pgHost, pgPort] = process.argv.slice(2)
if (!listenPort || !pgHost || !pgPort) {
  process.stderr.write('usage: node node-relay.ts LISTEN_PORT PG_HOST PG_PORT\n')
  process.exit(2)
}

const server = createServer({ noDelay: true }, (client) => {
  const upstream = connect({ host: pgHost, port: Number(pgPort), noDelay: true })
  const closeBoth = () => {
    client.destroy()
    upstream.destroy()
  }
  client.on('error', closeBoth).on('close', closeBoth)
  upstream.on('error', closeBoth).on('close', closeBoth)
  client.pipe(upstream)
  upstream.pipe(client)
})

server.listen(Number(listenPort), '127.0.0.1', () => {
  process.stdout.write(`node relay listening on 127.0.0.1:${listenPort}\n`)
})
process.on('SIGTERM', () => process.exit(0))
