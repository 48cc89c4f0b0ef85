// `npm start`: see the pooler work without setting anything up. A throwaway
// PostgreSQL (the test harness: the system's binaries, else the embedded ones
// from node_modules) with pgbouncer-cluster in front of it in transaction mode,
// the default number of workers, on 127.0.0.1:6432 (or a free port when that one is
// taken). Prints one line to connect with. SIGINT or SIGTERM stops both and
// deletes the data directory.

import { startPooler } from 'pgbouncer-cluster'
import { type PgServer, startPostgres } from './pg-harness.ts'

const PORT = 6432

let postgres: PgServer | null = null
let stopping = false

// Installed before the harness adds its own, which kills its server at once
// and raises the signal again: that second delivery finds `stopping` set.
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => void stop(0))

async function stop(code: number): Promise<void> {
  if (stopping) return
  stopping = true
  try {
    await pooler?.close()
  } finally {
    await postgres?.stop()
    process.exit(code)
  }
}

let pooler: Awaited<ReturnType<typeof startPooler>> | null = null
try {
  postgres = await startPostgres({ quiet: true })
  const config = {
    databases: { '*': { host: postgres.host, port: postgres.port } },
    pgbouncer: { auth_type: 'trust' },
  }
  const start = (port: number) =>
    startPooler({ config, listen: `127.0.0.1:${port}`, poolMode: 'transaction', logLevel: 'warn' })
  pooler = await start(PORT).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EADDRINUSE') throw err
    return start(0)
  })
  if (stopping) await pooler.close()
  else {
    const url = `postgresql://postgres@${pooler.host}:${pooler.port}/postgres`
    process.stdout.write(
      `pgbouncer-cluster ready at ${url} | connect: psql '${url}' | Ctrl-C stops it and its PostgreSQL\n`,
    )
  }
} catch (err) {
  process.stderr.write(`npm start: ${(err as Error).message}\n`)
  await stop(1)
}
