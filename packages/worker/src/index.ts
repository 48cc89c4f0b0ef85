export type * from './config-types.ts'

/**
 * The worker thread's entry file, for `new Worker(workerEntry)`: thread.ts
 * beside this source, or thread.js beside the compiled file this code is built
 * into (the published package, where Node does not strip types).
 */
export const workerEntry = new URL(
  import.meta.url.endsWith('.ts') ? './thread.ts' : './thread.js',
  import.meta.url,
)
