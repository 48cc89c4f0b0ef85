export type * from './config-types.ts'
export type { WorkerData } from './worker.ts'

/** The worker thread's entry file, for `new Worker(workerEntry)`. */
export const workerEntry = new URL('./thread.ts', import.meta.url)
