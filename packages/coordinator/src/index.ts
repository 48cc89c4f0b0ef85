export { main, parseArgs } from './cli.ts'
export { Cluster } from './cluster.ts'
