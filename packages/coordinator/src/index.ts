// The package's entry: `import { startPooler } from 'pgbouncer-cluster'`.
export { ConfigError } from './config/ini.ts'
export type {
  LogLevel,
  Pooler,
  PoolerConfig,
  PoolerLogger,
  PoolerStats,
  PoolMode,
  PoolStats,
  StartPoolerOptions,
} from './pooler.ts'
export { startPooler } from './pooler.ts'
