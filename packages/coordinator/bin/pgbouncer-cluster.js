#!/usr/bin/env node
// The command. This file is plain JavaScript that any Node.js parses, so that
// an old Node gets one line saying what is needed instead of a syntax error or
// a stack trace; everything else is imported only after the check.
// In the repository it runs the TypeScript sources (Node strips the types);
// the published package's copy imports the compiled ../lib/cli.js instead.

const NEEDS = [22, 12]
const [major, minor] = process.versions.node.split('.').map(Number)
if (major < NEEDS[0] || (major === NEEDS[0] && minor < NEEDS[1])) {
  process.stderr.write(
    `pgbouncer-cluster needs Node.js >= ${NEEDS.join('.')} (this is ${process.versions.node})\n`,
  )
  process.exit(1)
}

// SIGUSR1 is PAUSE and SIGUSR2 RESUME, as in PgBouncer, and neither may stop
// the process. Until the cluster answers them (cluster.ts), these listeners
// keep Node's defaults away: SIGUSR2 would end the process, and SIGUSR1 would
// open Node's inspector, which a listener of SIGUSR1 turns off.
process.on('SIGUSR1', () => {})
process.on('SIGUSR2', () => {})

// A 1 MB semi-space for the worker threads: V8 lets a young generation grow
// while the modules load and keeps it, though a worker allocates little once
// started (see cluster.ts). Set here, before any worker exists, because
// flags hold for every thread created after them; the main thread's heap is
// sized already, and gives back its start-up growth once the workers are ready
// (startup-memory.ts).
const v8 = await import('node:v8')
v8.setFlagsFromString('--max-semi-space-size=1')

// An install that lost a dependency (npm install --omit, a pruned node_modules):
// name the package rather than print the loader's stack. yargs is loaded only
// when it is needed (--help, a bad command line), so this can come from main too.
function cannotLoad(err) {
  const missing = /Cannot find (?:package|module) '([^']+)'/.exec(String(err?.message))
  process.stderr.write(
    missing
      ? `pgbouncer-cluster: cannot load ${missing[1]}, which it needs: reinstall pgbouncer-cluster with its dependencies\n`
      : `pgbouncer-cluster: cannot load: ${err?.message ?? err}\n`,
  )
  process.exit(1)
}

let cli
try {
  cli = await import('../src/cli.ts')
} catch (err) {
  cannotLoad(err)
}
try {
  process.exitCode = await cli.main(process.argv.slice(2))
} catch (err) {
  if (err?.code === 'ERR_MODULE_NOT_FOUND' || err?.code === 'MODULE_NOT_FOUND') cannotLoad(err)
  throw err
}
