// Micro benchmarks of the protocol package's hot paths (tinybench). Each
// module is imported by name at run time: one not written yet is reported as
// "not available" and the others still run. Standalone: node micro.ts [--quick]

import { Bench } from 'tinybench'

export interface MicroResult {
  name: string
  /** The headline figure, in `unit`; NaN when not available. */
  value: number
  unit: string
  extra?: string
  error?: string
}

// Local shapes of what is used, so this file type-checks whatever else the modules export.
type ScanHandler = (type: number, msg: Buffer | null, end: number) => boolean
interface FrameModule {
  FrameScanner: new (
    interest: Uint8Array,
  ) => { scan(chunk: Buffer, start: number, onMessage: ScanHandler): number }
  FrameReader: new () => {
    push(chunk: Buffer, onMessage: (type: number, msg: Buffer) => unknown): void
  }
}
interface SerializerModule {
  query(sql: string): Buffer
  rowDescription(columns: { name: string; typeOid?: number }[]): Buffer
  dataRow(values: (string | null)[]): Buffer
  commandComplete(tag: string): Buffer
  readyForQuery(status: number): Buffer
  parse(name: string, sql: string, paramTypes?: number[]): Buffer
  bind(portal: string, statement: string, params: (string | Buffer | null)[]): Buffer
  execute(portal: string, maxRows?: number): Buffer
  sync(): Buffer
  errorResponse(f: { severity: string; code: string; message: string }): Buffer
}
interface Sem {
  tryAcquire(limit: number, holder: number): boolean
  release(holder: number, n?: number): void
}
interface SharedMemoryModule {
  createSharedMemory(layout: {
    maxWorkers: number
    maxPools: number
    maxDatabases: number
    maxUsers: number
  }): SharedArrayBuffer
  SharedMemory: new (sab: SharedArrayBuffer) => { pool(slot: number): Sem }
}
interface ControlModule {
  encodeControl(msg: unknown): Uint8Array
  decodeControl(data: Uint8Array): unknown
}

const PROTOCOL = '@pgbouncer-cluster/protocol'

async function load<T>(name: string): Promise<T> {
  const spec = `${PROTOCOL}/${name}`
  return (await import(spec)) as T
}

/** Both directions of pgbench -S transactions (simple and extended), repeated to ~`size` bytes. */
export function pgbenchMix(s: SerializerModule, size: number): { buf: Buffer; messages: number } {
  const sql = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1;'
  const one = [
    s.query('SELECT abalance FROM pgbench_accounts WHERE aid = 48213;'),
    s.rowDescription([{ name: 'abalance', typeOid: 23 }]),
    s.dataRow(['0']),
    s.commandComplete('SELECT 1'),
    s.readyForQuery(0x49),
    s.parse('', sql, [23]),
    s.bind('', '', ['771234']),
    s.execute(''),
    s.sync(),
    s.dataRow(['0']),
    s.commandComplete('SELECT 1'),
    s.readyForQuery(0x49),
  ]
  const unit = Buffer.concat(one)
  const reps = Math.max(1, Math.floor(size / unit.length))
  return { buf: Buffer.concat(new Array(reps).fill(unit)), messages: reps * one.length }
}

const BATCH = 1000

export async function runMicro(opts: { quick: boolean }): Promise<MicroResult[]> {
  const time = opts.quick ? 250 : 1000
  const bench = new Bench({ time, warmupTime: Math.min(200, time) })
  const results: MicroResult[] = []
  /** tasks that ran: name → how to turn the mean call time into the result */
  const pending = new Map<string, (meanMs: number) => MicroResult>()
  const unavailable = (name: string, unit: string, err: unknown) =>
    results.push({
      name,
      value: Number.NaN,
      unit,
      error: `not available: ${(err as Error).message.split('\n')[0]}`,
    })

  let serializer: SerializerModule | undefined
  try {
    serializer = await load<SerializerModule>('serializer')
  } catch (err) {
    unavailable('builders', 'ns/op', err)
  }

  try {
    if (!serializer) throw new Error('serializer module missing (needed to build the message mix)')
    const frames = await load<FrameModule>('frame-reader')
    const { buf, messages } = pgbenchMix(serializer, 64 * 1024)
    const interest = new Uint8Array(256)
    interest[0x5a] = 1 // Z: ReadyForQuery is what a transaction-mode pooler waits for
    const scanner = new frames.FrameScanner(interest)
    let seen = 0
    const onScan: ScanHandler = () => {
      seen++
      return false
    }
    const mbps = (name: string, bytes: number, msgs: number, extra: string) =>
      pending.set(name, (ms) => ({
        name,
        value: bytes / 2 ** 20 / (ms / 1000),
        unit: 'MB/s',
        extra: `${(msgs / (ms / 1000) / 1e6).toFixed(1)} M msgs/s; ${extra}`,
      }))
    bench.add('frame scan, 64 KiB chunks', () => {
      scanner.scan(buf, 0, onScan)
    })
    mbps('frame scan, 64 KiB chunks', buf.length, messages, 'FrameScanner, ReadyForQuery reported')
    const chunks: Buffer[] = []
    for (let off = 0; off < buf.length; off += 1460) chunks.push(buf.subarray(off, off + 1460))
    bench.add('frame scan, 1460-byte chunks', () => {
      for (const c of chunks) scanner.scan(c, 0, onScan)
    })
    mbps('frame scan, 1460-byte chunks', buf.length, messages, 'messages split across TCP segments')
    const reader = new frames.FrameReader()
    let delivered = 0
    bench.add('frame reader, 64 KiB chunks', () => {
      reader.push(buf, () => {
        delivered++
      })
    })
    mbps(
      'frame reader, 64 KiB chunks',
      buf.length,
      messages,
      'FrameReader, every message delivered',
    )
    void seen
    void delivered
  } catch (err) {
    unavailable('frame scanning', 'MB/s', err)
  }

  if (serializer) {
    const s = serializer
    const nsop = (name: string, extra: string) =>
      pending.set(name, (ms) => ({ name, value: (ms * 1e6) / BATCH, unit: 'ns/op', extra }))
    const builders: [string, () => Buffer][] = [
      ['build DataRow (1 column)', () => s.dataRow(['12345'])],
      ['build CommandComplete', () => s.commandComplete('SELECT 1')],
      ['build ReadyForQuery', () => s.readyForQuery(0x49)],
      ['build Bind (1 param)', () => s.bind('', '', ['771234'])],
      [
        'build ErrorResponse',
        () =>
          s.errorResponse({
            severity: 'ERROR',
            code: '08P01',
            message: 'no more connections allowed (max_client_conn)',
          }),
      ],
    ]
    for (const [name, fn] of builders) {
      bench.add(name, () => {
        for (let i = 0; i < BATCH; i++) fn()
      })
      nsop(name, 'builders')
    }
  }

  try {
    const shm = await load<SharedMemoryModule>('shared-memory')
    await load<unknown>('semaphore')
    const mem = new shm.SharedMemory(
      shm.createSharedMemory({ maxWorkers: 2, maxPools: 1, maxDatabases: 1, maxUsers: 1 }),
    )
    const sem = mem.pool(0)
    const name = 'semaphore tryAcquire+release'
    bench.add(name, () => {
      for (let i = 0; i < BATCH; i++) {
        if (sem.tryAcquire(20, 0)) sem.release(0)
      }
    })
    pending.set(name, (ms) => ({
      name,
      value: (ms * 1e6) / BATCH,
      unit: 'ns/op',
      extra: 'uncontended, one thread',
    }))
  } catch (err) {
    unavailable('semaphore tryAcquire+release', 'ns/op', err)
  }

  try {
    const ctl = await load<ControlModule>('control')
    const msgs: [string, unknown][] = [
      [
        'control encode+decode (cancel)',
        { type: 'cancel', pid: 4242, secret: 123456789, ref: 7, from: 1 },
      ],
      [
        'control encode+decode (pool-slot)',
        {
          type: 'pool-slot',
          database: 'postgres',
          user: 'postgres',
          pool: 3,
          databaseSlot: 1,
          userSlot: 2,
        },
      ],
    ]
    for (const [name, msg] of msgs) {
      ctl.decodeControl(ctl.encodeControl(msg)) // fail here, not inside the bench, if the shape is off
      bench.add(name, () => {
        for (let i = 0; i < BATCH / 10; i++) ctl.decodeControl(ctl.encodeControl(msg))
      })
      pending.set(name, (ms) => ({
        name,
        value: (ms * 1e6) / (BATCH / 10),
        unit: 'ns/op',
        extra: 'msgpackr records',
      }))
    }
  } catch (err) {
    unavailable('control encode+decode', 'ns/op', err)
  }

  await bench.run()
  for (const task of bench.tasks) {
    const make = pending.get(task.name)
    if (!make) continue
    const r = task.result
    if (r.state === 'completed') results.push(make(r.latency.mean))
    else if (r.state === 'errored')
      results.push({
        name: task.name,
        value: Number.NaN,
        unit: '',
        error: String(r.error?.message ?? r.error),
      })
  }
  return results
}

export function microTable(results: readonly MicroResult[]): string {
  const lines = ['| micro benchmark | result | notes |', '| --- | ---: | --- |']
  for (const r of results) {
    const value = Number.isFinite(r.value)
      ? `${r.value >= 100 ? Math.round(r.value).toLocaleString('en-US') : r.value.toFixed(1)} ${r.unit}`
      : '–'
    lines.push(`| ${r.name} | ${value} | ${(r.error ?? r.extra ?? '').replaceAll('|', '\\|')} |`)
  }
  return lines.join('\n')
}

if (import.meta.main) {
  const results = await runMicro({ quick: process.argv.includes('--quick') })
  process.stdout.write(`${microTable(results)}\n`)
}
