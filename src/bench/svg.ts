/**
 * Hand-written SVG charts (no dependency): one figure per run with three panels (space reduction,
 * throughput, bytes added per snapshot epoch) and one per sweep (reduction and ingest speed against the
 * swept knob). Plain shapes and text only, so any browser or rsvg-convert renders them.
 */
import type { BenchResult, SweepResult } from './run.js';
import { bytesH } from './report.js';

const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';
const WIDTH = 960;
const INK = '#222';
const GRID = '#e3e3e3';

const COLORS: Record<string, string> = {
  'ideal (a)': '#c7c7c7',
  'ideal (b)': '#8c8c8c',
  'ideal (c)': '#6b6b6b',
  'ideal (d)': '#4d4d4d',
  vnstore: '#1f6fd1',
  restic: '#e8830c',
  borg: '#2e9e44',
  'borg-fixed4k': '#8fd19e',
  casync: '#8e5cc7',
  ingest: '#1f6fd1',
  restore: '#e8830c',
};
const color = (k: string) => COLORS[k] ?? '#555';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function text(x: number, y: number, s: string, attrs = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`;
}

function rect(x: number, y: number, w: number, h: number, fill: string, extra = ''): string {
  return `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(0, w).toFixed(1)}" height="${Math.max(0, h).toFixed(1)}" fill="${fill}" ${extra}/>`;
}

function line(x1: number, y1: number, x2: number, y2: number, stroke: string, extra = ''): string {
  return `<line x1="${x1.toFixed(1)}" y1="${y1.toFixed(1)}" x2="${x2.toFixed(1)}" y2="${y2.toFixed(1)}" stroke="${stroke}" ${extra}/>`;
}

/** "Nice" axis maximum and tick step for a linear axis from 0. */
function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) as number;
  const ticks: number[] = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

interface Bar {
  label: string;
  key: string;
  value: number;
  note: string;
}

/** Horizontal bars, one per row, value labels at the bar ends. Returns [svg, height]. */
function hbarPanel(y0: number, title: string, subtitle: string, bars: Bar[], unit: (v: number) => string): [string, number] {
  const left = 250;
  const right = WIDTH - 190;
  const rowH = 30;
  const top = y0 + 52;
  const max = Math.max(...bars.map((b) => b.value), 0);
  const ticks = niceTicks(max);
  const scale = (v: number) => left + ((right - left) * v) / ticks[ticks.length - 1];
  const parts = [
    text(24, y0 + 22, title, `${FONT} font-size="17" font-weight="bold" fill="${INK}"`),
    text(24, y0 + 40, subtitle, `${FONT} font-size="12" fill="#666"`),
  ];
  const bottom = top + rowH * bars.length;
  for (const t of ticks) {
    parts.push(line(scale(t), top - 4, scale(t), bottom, GRID));
    parts.push(text(scale(t), bottom + 15, unit(t), `${FONT} font-size="11" fill="#666" text-anchor="middle"`));
  }
  bars.forEach((b, k) => {
    const y = top + k * rowH;
    const bold = b.key === 'vnstore' ? 'font-weight="bold"' : '';
    parts.push(text(left - 10, y + 19, b.label, `${FONT} font-size="13" fill="${INK}" text-anchor="end" ${bold}`));
    if (b.value > 0) parts.push(rect(left, y + 5, scale(b.value) - left, rowH - 10, color(b.key)));
    parts.push(text((b.value > 0 ? scale(b.value) : left) + 6, y + 19, b.note, `${FONT} font-size="12" fill="${INK}" ${bold}`));
  });
  return [parts.join('\n'), bottom + 30 - y0];
}

/** Horizontal grouped bars: per row, one bar per series. */
function hgroupPanel(
  y0: number,
  title: string,
  subtitle: string,
  rows: { label: string; key: string; values: (number | null)[] }[],
  series: string[],
): [string, number] {
  const left = 250;
  const right = WIDTH - 190;
  const barH = 13;
  const rowH = series.length * barH + 12;
  const top = y0 + 52;
  const max = Math.max(0, ...rows.flatMap((r) => r.values.map((v) => v ?? 0)));
  const ticks = niceTicks(max);
  const scale = (v: number) => left + ((right - left) * v) / ticks[ticks.length - 1];
  const parts = [
    text(24, y0 + 22, title, `${FONT} font-size="17" font-weight="bold" fill="${INK}"`),
    text(24, y0 + 40, subtitle, `${FONT} font-size="12" fill="#666"`),
  ];
  series.forEach((s, k) => {
    const x = right + 20;
    parts.push(rect(x, y0 + 10 + k * 18, 12, 12, color(s)));
    parts.push(text(x + 18, y0 + 21 + k * 18, s, `${FONT} font-size="12" fill="${INK}"`));
  });
  const bottom = top + rowH * rows.length;
  for (const t of ticks) {
    parts.push(line(scale(t), top - 4, scale(t), bottom, GRID));
    parts.push(text(scale(t), bottom + 15, String(t), `${FONT} font-size="11" fill="#666" text-anchor="middle"`));
  }
  rows.forEach((r, k) => {
    const y = top + k * rowH;
    const bold = r.key === 'vnstore' ? 'font-weight="bold"' : '';
    parts.push(text(left - 10, y + rowH / 2 + 4, r.label, `${FONT} font-size="13" fill="${INK}" text-anchor="end" ${bold}`));
    r.values.forEach((v, s) => {
      const by = y + 6 + s * barH;
      if (v !== null && v > 0) parts.push(rect(left, by, scale(v) - left, barH - 2, color(series[s])));
      const label = v === null ? 'n/a' : v.toFixed(v >= 100 ? 0 : 1);
      parts.push(text((v ?? 0) > 0 ? scale(v as number) + 5 : left + 5, by + barH - 3, label, `${FONT} font-size="11" fill="${INK}"`));
    });
  });
  return [parts.join('\n'), bottom + 30 - y0];
}

/** Vertical grouped bars on a log axis: one group per x label, one bar per series. */
function vgroupLogPanel(
  y0: number,
  title: string,
  subtitle: string,
  groups: string[],
  series: { key: string; label: string; values: number[] }[],
): [string, number] {
  const left = 90;
  const right = WIDTH - 190;
  const top = y0 + 56;
  const height = 250;
  const bottom = top + height;
  const positive = series.flatMap((s) => s.values).filter((v) => v > 0);
  const lo = Math.floor(Math.log10(Math.min(...positive, 1e6)));
  // One decade of headroom above the tallest bar for its label.
  const hi = Math.ceil(Math.log10(Math.max(...positive, 1e6 * 10))) + 1;
  const y = (v: number) => bottom - ((Math.log10(v) - lo) / (hi - lo)) * height;
  const parts = [
    text(24, y0 + 22, title, `${FONT} font-size="17" font-weight="bold" fill="${INK}"`),
    text(24, y0 + 40, subtitle, `${FONT} font-size="12" fill="#666"`),
  ];
  // Gridlines at 1, 10, 100 of each binary unit, matching the bar labels' units.
  for (const unit of [1, 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40]) {
    for (const m of [1, 10, 100]) {
      const v = m * unit;
      if (Math.log10(v) < lo || Math.log10(v) > hi) continue;
      parts.push(line(left, y(v), right, y(v), GRID));
      parts.push(
        text(
          left - 8,
          y(v) + 4,
          bytesH(v).replace('.00 ', ' ').replace('.0 ', ' '),
          `${FONT} font-size="11" fill="#666" text-anchor="end"`,
        ),
      );
    }
  }
  const groupW = (right - left) / groups.length;
  const barW = Math.min(34, (groupW - 16) / series.length);
  groups.forEach((g, k) => {
    const gx = left + k * groupW + (groupW - barW * series.length) / 2;
    series.forEach((s, j) => {
      const v = s.values[k];
      const x = gx + j * barW;
      if (v > 0) {
        parts.push(rect(x, y(v), barW - 2, bottom - y(v), color(s.key)));
        // Value above the bar, vertical, so neighbouring labels never collide.
        const tx = x + barW / 2 + 3;
        const ty = y(v) - 5;
        parts.push(
          text(tx, ty, bytesH(v), `${FONT} font-size="10" fill="${INK}" transform="rotate(-90 ${tx.toFixed(1)} ${ty.toFixed(1)})"`),
        );
      } else parts.push(text(x + barW / 2, bottom - 4, '0', `${FONT} font-size="10" fill="#666" text-anchor="middle"`));
    });
    parts.push(text(left + k * groupW + groupW / 2, bottom + 18, g, `${FONT} font-size="13" fill="${INK}" text-anchor="middle"`));
  });
  parts.push(line(left, bottom, right, bottom, '#999'));
  series.forEach((s, k) => {
    const x = right + 20;
    parts.push(rect(x, top + k * 18, 12, 12, color(s.key)));
    parts.push(text(x + 18, top + 11 + k * 18, s.label, `${FONT} font-size="12" fill="${INK}"`));
  });
  return [parts.join('\n'), bottom + 36 - y0];
}

function wrap(body: string[], height: number, title: string): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${Math.ceil(height)}" viewBox="0 0 ${WIDTH} ${Math.ceil(height)}">`,
    `<title>${esc(title)}</title>`,
    rect(0, 0, WIDTH, height, '#fff'),
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

/** The figure of one run: reduction, throughput, bytes added per snapshot epoch. */
export function benchSvg(r: BenchResult): string {
  const i = r.ideal;
  const tools = r.tools.filter((t) => !t.error);
  const body: string[] = [];
  let y = 10;
  // Bounds (c) and (d) exist only where native zstd ran.
  const zstdBounds = [
    { label: `ideal (c): dedup + page zstd-${i.zstdLevel}`, key: 'ideal (c)', bytes: i.dedupZstdPageBytes },
    { label: `ideal (d): dedup + zstd-${i.zstdLevel} 64 KiB`, key: 'ideal (d)', bytes: i.dedupZstdContainerBytes },
  ].filter((z): z is { label: string; key: string; bytes: number } => z.bytes !== null);
  const bars: Bar[] = [
    { label: 'ideal (a): page dedup', key: 'ideal (a)', value: i.logicalBytes / i.dedupBytes, note: '' },
    { label: 'ideal (b): dedup + page LZ4', key: 'ideal (b)', value: i.logicalBytes / i.dedupLz4Bytes, note: '' },
    ...zstdBounds.map((z) => ({ label: z.label, key: z.key, value: i.logicalBytes / z.bytes, note: '' })),
    ...tools.map((t) => ({ label: t.tool, key: t.tool, value: t.reduction, note: '' })),
  ];
  const sizes = [i.dedupBytes, i.dedupLz4Bytes, ...zstdBounds.map((z) => z.bytes), ...tools.map((t) => t.repoBytes)];
  bars.forEach((b, k) => (b.note = `${b.value.toFixed(2)}×  (${bytesH(sizes[k])})`));
  const [p1, h1] = hbarPanel(
    y,
    'Space: logical bytes ÷ bytes on disk (higher is better)',
    `${bytesH(i.logicalBytes)} of memory images: ${i.images} images of ${i.vms.length} VMs; ${describeShort(r)}`,
    bars,
    (v) => `${v}×`,
  );
  body.push(p1);
  y += h1;
  const [p2, h2] = hgroupPanel(
    y,
    'Speed: MB/s of memory image, whole commands (higher is better)',
    `ingest: all images; restore: ${r.sample.vm}/${r.sample.snap} (${bytesH(r.sample.bytes)}), verified byte for byte`,
    tools.map((t) => ({ label: t.tool, key: t.tool, values: [t.ingest.mbPerSec, t.restoreSample.mbPerSec] })),
    ['ingest', 'restore'],
  );
  body.push(p2);
  y += h2;
  const epochs = [...new Set(i.perImage.map((p) => p.snap))].sort((a, b) => a - b);
  const perEpoch = (vals: { snap: number; v: number }[]) =>
    epochs.map((e) => vals.filter((x) => x.snap === e).reduce((s, x) => s + x.v, 0));
  const [p3, h3] = vgroupLogPanel(
    y,
    'Bytes added per snapshot epoch (all VMs, log scale; lower is better)',
    'growth of each repository when the epoch is stored; snapshot 0 is the first full copy',
    epochs.map((e) => `snapshot ${e}`),
    [
      { key: 'ideal (b)', label: 'ideal (b)', values: perEpoch(i.perImage.map((p) => ({ snap: p.snap, v: p.newLz4Bytes }))) },
      ...tools.map((t) => ({ key: t.tool, label: t.tool, values: perEpoch(t.perImage.map((p) => ({ snap: p.snap, v: p.addedBytes }))) })),
    ],
  );
  body.push(p3);
  y += h3;
  return wrap(body, y, 'vnstore bench');
}

function describeShort(r: BenchResult): string {
  if (r.workload.source === 'images') return 'given images';
  const p = r.workload.params;
  return `zero ${p.zeroFraction}, shared ${p.sharedFraction}, random ${p.randomFraction}, dirty ${p.dirtyFraction}`;
}

/** Line chart panel: x = knob values (evenly spaced), one line per series. */
function linePanel(
  y0: number,
  title: string,
  subtitle: string,
  xs: string[],
  series: { key: string; label: string; values: (number | null)[]; dashed?: boolean }[],
  unit: (v: number) => string,
): [string, number] {
  const left = 90;
  const right = WIDTH - 190;
  const top = y0 + 56;
  const height = 240;
  const bottom = top + height;
  const max = Math.max(0, ...series.flatMap((s) => s.values.map((v) => v ?? 0)));
  const ticks = niceTicks(max);
  const y = (v: number) => bottom - (v / ticks[ticks.length - 1]) * height;
  const x = (k: number) => (xs.length === 1 ? (left + right) / 2 : left + 30 + (k * (right - left - 60)) / (xs.length - 1));
  const parts = [
    text(24, y0 + 22, title, `${FONT} font-size="17" font-weight="bold" fill="${INK}"`),
    text(24, y0 + 40, subtitle, `${FONT} font-size="12" fill="#666"`),
  ];
  for (const t of ticks) {
    parts.push(line(left, y(t), right, y(t), GRID));
    parts.push(text(left - 8, y(t) + 4, unit(t), `${FONT} font-size="11" fill="#666" text-anchor="end"`));
  }
  xs.forEach((v, k) => parts.push(text(x(k), bottom + 18, v, `${FONT} font-size="13" fill="${INK}" text-anchor="middle"`)));
  series.forEach((s, j) => {
    const pts = s.values
      .map((v, k) => (v === null ? null : `${x(k).toFixed(1)},${y(v).toFixed(1)}`))
      .filter((p): p is string => p !== null);
    const width = s.key === 'vnstore' ? 3.5 : 2.2;
    parts.push(
      `<polyline points="${pts.join(' ')}" fill="none" stroke="${color(s.key)}" stroke-width="${width}" ${s.dashed ? 'stroke-dasharray="6 4"' : ''}/>`,
    );
    for (const p of pts) {
      const [px, py] = p.split(',');
      parts.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${color(s.key)}"/>`);
    }
    const lx = right + 20;
    parts.push(rect(lx, top + j * 18, 12, 12, color(s.key)));
    parts.push(text(lx + 18, top + 11 + j * 18, s.label, `${FONT} font-size="12" fill="${INK}"`));
  });
  parts.push(line(left, bottom, right, bottom, '#999'));
  return [parts.join('\n'), bottom + 36 - y0];
}

/** The figure of a sweep: reduction and ingest speed against the swept knob. */
export function sweepSvg(s: SweepResult): string {
  const xs = s.values.map(String);
  const toolIds = [...new Set(s.runs.flatMap((r) => r.tools.filter((t) => !t.error).map((t) => t.tool)))];
  const pick = (f: (r: BenchResult, tool: string) => number | null) =>
    toolIds.map((id) => ({ key: id, label: id, values: s.runs.map((r) => f(r, id)) }));
  const find = (r: BenchResult, id: string) => r.tools.find((t) => t.tool === id && !t.error);
  const body: string[] = [];
  let y = 10;
  const [p1, h1] = linePanel(
    y,
    `Space: logical ÷ bytes on disk, by ${s.knob} (higher is better)`,
    `each point is a full bench run on a freshly generated workload; dashed: ideal (b) = page dedup + per-page LZ4`,
    xs,
    [
      { key: 'ideal (b)', label: 'ideal (b)', values: s.runs.map((r) => r.ideal.logicalBytes / r.ideal.dedupLz4Bytes), dashed: true },
      ...pick((r, id) => find(r, id)?.reduction ?? null),
    ],
    (v) => `${v}×`,
  );
  body.push(p1);
  y += h1;
  const [p2, h2] = linePanel(
    y,
    `Ingest speed by ${s.knob}: MB/s, whole commands (higher is better)`,
    'all images of the run, one command per image, start-up included',
    xs,
    pick((r, id) => find(r, id)?.ingest.mbPerSec ?? null),
    (v) => String(v),
  );
  body.push(p2);
  y += h2;
  return wrap(body, y, `vnstore bench sweep ${s.knob}`);
}
