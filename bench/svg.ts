// A self-contained SVG chart of one run: for every workload, throughput and
// p99 latency per target as horizontal bars, each panel on its own scale
// (one client and 1000 clients differ by orders of magnitude).

import { fmtNumber, type Row } from './report.ts'

const PALETTE = ['#6b7280', '#2563eb', '#f59e0b', '#16a34a', '#db2777', '#7c3aed']

export interface ChartInput {
  title: string
  subtitle: string
  rows: readonly Row[]
  workloads: readonly { name: string; title: string }[]
  targets: readonly { id: string; label: string }[]
}

export function escapeXml(s: string): string {
  return s
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&apos;')
}

const LABEL_W = 170
const PANEL_W = 330
const BAR_H = 14
const BAR_GAP = 5
const MARGIN = 20

export function renderSvg(input: ChartInput): string {
  const nT = input.targets.length
  const blockH = 26 + nT * (BAR_H + BAR_GAP) + 14
  const top = 86
  const width = MARGIN * 2 + LABEL_W + PANEL_W * 2 + 40
  const height = top + input.workloads.length * blockH + MARGIN
  const out: string[] = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    // What a screen reader says of the chart, and what linters ask of a committed copy.
    `<title>${escapeXml(`${input.title}: ${input.subtitle}`)}</title>`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${MARGIN}" y="26" font-size="17" font-weight="bold">${escapeXml(input.title)}</text>`,
    `<text x="${MARGIN}" y="44" fill="#4b5563">${escapeXml(input.subtitle)}</text>`,
  )
  // legend
  let lx = MARGIN
  input.targets.forEach((t, i) => {
    out.push(
      `<rect x="${lx}" y="56" width="12" height="12" fill="${PALETTE[i % PALETTE.length]}"/>`,
      `<text x="${lx + 16}" y="66">${escapeXml(t.label)}</text>`,
    )
    lx += 28 + t.label.length * 7
  })
  const panels = [
    { metric: 'tps' as const, title: 'throughput (tps, higher is better)', x: MARGIN + LABEL_W },
    {
      metric: 'p99Ms' as const,
      title: 'p99 latency (ms, lower is better)',
      x: MARGIN + LABEL_W + PANEL_W + 40,
    },
  ]
  input.workloads.forEach((w, wi) => {
    const y0 = top + wi * blockH
    out.push(
      `<line x1="${MARGIN}" y1="${y0}" x2="${width - MARGIN}" y2="${y0}" stroke="#e5e7eb"/>`,
      `<text x="${MARGIN}" y="${y0 + 17}" font-weight="bold">${escapeXml(w.name)}</text>`,
      `<text x="${MARGIN + LABEL_W}" y="${y0 + 17}" fill="#4b5563">${escapeXml(w.title)}</text>`,
    )
    for (const p of panels) {
      const values = input.targets.map(
        (t) => input.rows.find((r) => r.workload === w.name && r.target === t.id)?.median[p.metric],
      )
      const max = Math.max(
        0,
        ...values.filter((v): v is number => v !== undefined && Number.isFinite(v)),
      )
      if (wi === 0) {
        out.push(`<text x="${p.x}" y="${top - 4}" fill="#111827">${escapeXml(p.title)}</text>`)
      }
      values.forEach((v, ti) => {
        const y = y0 + 26 + ti * (BAR_H + BAR_GAP)
        if (v === undefined || !Number.isFinite(v)) {
          out.push(`<text x="${p.x}" y="${y + 11}" fill="#9ca3af">not run</text>`)
          return
        }
        const len = max > 0 ? Math.max(1, (v / max) * (PANEL_W - 80)) : 1
        out.push(
          `<rect x="${p.x}" y="${y}" width="${len.toFixed(1)}" height="${BAR_H}" fill="${PALETTE[ti % PALETTE.length]}"><title>${escapeXml(`${input.targets[ti]!.label}: ${fmtNumber(v)}`)}</title></rect>`,
          `<text x="${(p.x + len + 4).toFixed(1)}" y="${y + 11}">${escapeXml(fmtNumber(v))}</text>`,
        )
      })
    }
  })
  out.push('</svg>')
  return `${out.join('\n')}\n`
}
