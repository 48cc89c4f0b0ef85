import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { RunSample } from './measure.ts'
import { aggregate } from './report.ts'
import { escapeXml, renderSvg } from './svg.ts'

/** Tags balance and every attribute is quoted: enough to know a browser will parse it. */
function assertWellFormed(svg: string): void {
  const stack: string[] = []
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g
  let last = 0
  for (let m = tag.exec(svg); m; m = tag.exec(svg)) {
    const between = svg.slice(last, m.index)
    assert.ok(!/[<>]/.test(between), `stray markup before ${m[0]}: ${between}`)
    assert.ok(!/&(?!(amp|lt|gt|quot|apos);)/.test(between), `unescaped & in ${between}`)
    last = tag.lastIndex
    const [, close, name, , selfClose] = m
    if (close) assert.equal(stack.pop(), name, `closing ${name}`)
    else if (!selfClose) stack.push(name!)
  }
  assert.equal(svg.slice(last).trim(), '')
  assert.deepEqual(stack, [])
}

function sample(workload: string, target: string, tps: number): RunSample {
  return {
    workload,
    target,
    round: 1,
    elapsedS: 1,
    tps,
    transactions: tps,
    failed: 0,
    abortedClients: 0,
    errors: [],
    latency: { avg: 1, p50: 1, p95: 1, p99: 2, p999: 3, max: 4 },
    poolerCpuS: 1,
    cpuUsPerTx: 1,
    peakRssBytes: 1,
    allocBytesPerTx: Number.NaN,
    gcMsPer100kTx: Number.NaN,
    histogramUs: [],
  }
}

test('renderSvg produces well-formed SVG with escaped text', () => {
  const svg = renderSvg({
    title: 'A <b> & "c"',
    subtitle: "PgBouncer 1.18 & Node's",
    rows: aggregate([
      sample('w1', 'direct', 100),
      sample('w1', 'pgbouncer', 50),
      sample('w2', 'pgbouncer', 5),
    ]),
    workloads: [
      { name: 'w1', title: 'pgbench -S <32>' },
      { name: 'w2', title: 'w & 2' },
    ],
    targets: [
      { id: 'direct', label: 'PostgreSQL' },
      { id: 'pgbouncer', label: 'PgBouncer' },
      { id: 'cluster-1', label: 'cluster ×1' },
    ],
  })
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
  assertWellFormed(svg)
  assert.match(svg, /A &lt;b&gt; &amp; &quot;c&quot;/)
  // The chart's own title, for screen readers and for linters of a copy kept in docs/.
  assert.match(
    svg,
    /^<svg [^>]*>\n<title>A &lt;b&gt; &amp; &quot;c&quot;: PgBouncer 1\.18 &amp; Node&apos;s<\/title>/,
  )
  // one bar per measured (workload, target) per panel: 3 rows × 2 panels, plus legend swatches
  assert.equal((svg.match(/<rect [^>]*><title>/g) ?? []).length, 6)
  assert.equal((svg.match(/>not run</g) ?? []).length, 2 * 3)
})

test('the well-formedness check itself catches broken markup', () => {
  assert.throws(() => assertWellFormed('<svg><g></svg>'))
  assert.throws(() => assertWellFormed('<svg><text>a & b</text></svg>'))
  assert.throws(() => assertWellFormed('<svg><rect x=1/></svg>'))
})

test('escapeXml escapes the five XML specials', () => {
  assert.equal(escapeXml(`<&>"'`), '&lt;&amp;&gt;&quot;&apos;')
})
