import { parentPort, workerData } from 'node:worker_threads'
import { PoolerWorker, type WorkerData } from './worker.ts'

// Entry of a worker thread, started by the coordinator with `new Worker(<this file>)`.
if (parentPort === null) throw new Error('the pooler worker must run in a worker thread')
const worker = new PoolerWorker(workerData as WorkerData, parentPort)
await worker.start()
