import { parentPort, workerData } from 'node:worker_threads'
import { startAllocStats } from './alloc-stats.ts'
import type { WorkerData } from './config-types.ts'
import { PoolerWorker } from './worker.ts'

// Entry of a worker thread, started by the coordinator with `new Worker(<this file>)`.
if (parentPort === null) throw new Error('the pooler worker must run in a worker thread')
startAllocStats(process.env.PGBC_ALLOC_STATS, `worker-${(workerData as WorkerData).id}`)
const worker = new PoolerWorker(workerData as WorkerData, parentPort)
await worker.start()
