/** Markdown rendering of bench results (stdout and report.md). */
import type { BenchResult, SweepResult, ToolResult } from './run.js';
import type { StoreBreakdown } from './tools.js';
import { humanBytes } from '../util/units.js';
import { PAGE_SIZE } from '../sim/workload.js';

export function bytesH(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : humanBytes(n);
}

const ratio = (x: number) => (Number.isFinite(x) && x > 0 ? x.toFixed(2) : '–');
const times = (x: number) => (Number.isFinite(x) && x > 0 ? `${x.toFixed(x >= 10 ? 1 : 2)}×` : '–');
const rate = (x: number) => (x > 0 ? x.toFixed(x >= 100 ? 0 : 1) : '–');
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const int = (n: number) => n.toLocaleString('en-US');

function table(head: string[], rows: string[][], align?: ('l' | 'r')[]): string {
  const sep = head.map((_, i) => ((align?.[i] ?? (i === 0 ? 'l' : 'r')) === 'r' ? '---:' : '---'));
  return [head, sep, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

export function describeWorkload(r: BenchResult): string {
  if (r.workload.source === 'images') return `images from \`${r.workload.dir}\``;
  const p = r.workload.params;
  return (
    `generated: ${p.vms} VMs (${p.memMiB.slice(0, p.vms).join(', ')} MiB), ${p.snapshots} snapshots each, ` +
    `zero ${p.zeroFraction}, shared ${p.sharedFraction}, random ${p.randomFraction}, dirty ${p.dirtyFraction}, seed ${p.seed}` +
    (p.trailingBytes ? `, +${p.trailingBytes} trailing bytes` : '')
  );
}

function toolRow(t: ToolResult): string[] {
  if (t.error) return [t.tool, `failed: ${t.error}`, '', '', '', '', '', '', '', '', '', ''];
  const verified = t.restore.failed.length > 0 ? `NO (${t.restore.failed.join(', ')})` : `yes (${t.restore.verified})`;
  return [
    t.tool === 'vnstore' ? '**vnstore**' : t.tool,
    bytesH(t.repoBytes),
    times(t.reduction),
    ratio(t.vsDedup),
    ratio(t.vsDedupLz4),
    t.vsDedupZstdPage === null ? '–' : ratio(t.vsDedupZstdPage),
    t.vsDedupZstdContainer === null ? '–' : ratio(t.vsDedupZstdContainer),
    rate(t.ingest.mbPerSec),
    rate(t.restoreSample.mbPerSec),
    bytesH(t.ingest.peakRssBytes),
    bytesH(t.restoreSample.peakRssBytes),
    verified,
  ];
}

/** The row of vnstore's store after `vnstore compact` (ingest: the compact run's own speed). */
function compactRow(t: ToolResult): string[] {
  const c = t.afterCompact!;
  const verified = c.restore.failed.length > 0 ? `NO (${c.restore.failed.join(', ')})` : `yes (${c.restore.verified})`;
  return [
    '**vnstore after compact**',
    bytesH(c.repoBytes),
    times(c.reduction),
    ratio(c.vsDedup),
    ratio(c.vsDedupLz4),
    c.vsDedupZstdPage === null ? '–' : ratio(c.vsDedupZstdPage),
    c.vsDedupZstdContainer === null ? '–' : ratio(c.vsDedupZstdContainer),
    '–',
    rate(c.restoreSample.mbPerSec),
    bytesH(c.compactPeakRssBytes),
    bytesH(c.restoreSample.peakRssBytes),
    verified,
  ];
}

/** The issue-16 checks in one line: compacted bytes against bound (d), restore speed against LZ4's. */
function compactSummary(t: ToolResult): string {
  const c = t.afterCompact!;
  const logical = t.ingest.bytes;
  return (
    `vnstore compact took ${c.compactSeconds.toFixed(1)} s (${rate(logical / 1e6 / c.compactSeconds)} MB/s of logical data); ` +
    `store ${bytesH(t.repoBytes)} → ${bytesH(c.repoBytes)}` +
    (c.vsDedupZstdContainer === null ? '' : `, ${ratio(c.vsDedupZstdContainer)} × bound (d)`) +
    `; restore of the compacted store at ${pct(c.restoreSample.mbPerSec / t.restoreSample.mbPerSec)} (sample) and ` +
    `${pct(c.restore.mbPerSec / t.restore.mbPerSec)} (all ${c.restore.images} images) of the LZ4 store's speed, in the same run.`
  );
}

/**
 * What vnstore's bytes are made of, by `vnstore stats --json` (issue 16: the packs against bound (d),
 * metadata within 2% of the store), the space reserve apart; `boundD` null when not computed.
 */
function breakdownLine(label: string, b: StoreBreakdown, boundD: number | null): string {
  const vsD = (bytes: number) => (boundD === null ? '' : ` = ${ratio(bytes / boundD)} × bound (d)`);
  return (
    `${label}: packs ${bytesH(b.packBytes)}${vsD(b.packBytes)}; metadata (pack headers and tables, manifests, index, ` +
    `chunk table) ${bytesH(b.metadataBytes)} = ${pct(b.metadataFraction)} of the store's ${bytesH(b.storeBytes)}${vsD(b.storeBytes)}; ` +
    `beside it the space reserve ${bytesH(b.reserveBytes)} and other files ${bytesH(b.otherBytes)}.`
  );
}

export function renderMarkdown(r: BenchResult): string {
  const i = r.ideal;
  const out: string[] = [];
  out.push(`## vnstore bench, ${r.date.slice(0, 10)}`);
  out.push('');
  out.push(`Workload: ${describeWorkload(r)}.`);
  out.push(
    `Logical: ${bytesH(i.logicalBytes)} in ${i.images} images, ${int(i.pages)} pages, ${pct(i.zeroPages / i.pages)} zero; ` +
      `${int(i.nonZeroPages)} non-zero pages, ${int(i.distinctPages)} distinct (${pct(i.incompressiblePages / Math.max(1, i.distinctPages))} of them incompressible).`,
  );
  out.push(
    `Machine: ${r.machine.cpus} × ${r.machine.cpuModel}, ${bytesH(r.machine.memBytes)} RAM, Node ${r.machine.node}, Linux ${r.machine.kernel}. ` +
      `Bench took ${(r.seconds / 60).toFixed(1)} min.`,
  );
  out.push('');
  out.push('### Space and speed');
  out.push('');
  // Each bound's row shows its bytes against every bound, as the stores' rows do.
  const bounds = [i.dedupBytes, i.dedupLz4Bytes, i.dedupZstdPageBytes, i.dedupZstdContainerBytes];
  const against = (bytes: number) => bounds.map((b) => (b === null ? '–' : ratio(bytes / b)));
  const idealRow = (name: string, bytes: number | null) =>
    bytes === null
      ? [name, `not computed: ${i.zstdUnavailable ?? 'no native zstd'}`, '', '', '', '', '', '', '', '', '', '']
      : [name, bytesH(bytes), times(i.logicalBytes / bytes), ...against(bytes), '', '', '', '', ''];
  const kib = (i.containerPages * PAGE_SIZE) / 1024;
  out.push(
    table(
      [
        'store',
        'bytes on disk',
        'reduction',
        '÷ bound a',
        '÷ bound b',
        '÷ bound c',
        '÷ bound d',
        'ingest MB/s',
        'restore MB/s',
        'peak RSS put',
        'peak RSS restore',
        'restore verified',
      ],
      [
        idealRow('ideal (a): page dedup', i.dedupBytes),
        idealRow('ideal (b): page dedup + per-page LZ4', i.dedupLz4Bytes),
        idealRow(`ideal (c): page dedup + per-page zstd-${i.zstdLevel}`, i.dedupZstdPageBytes),
        idealRow(`ideal (d): page dedup + zstd-${i.zstdLevel} over ${kib} KiB containers`, i.dedupZstdContainerBytes),
        ...r.tools.flatMap((t) => (t.afterCompact ? [toolRow(t), compactRow(t)] : [toolRow(t)])),
      ],
    ),
  );
  out.push('');
  const v = r.tools.find((t) => t.tool === 'vnstore');
  if (v?.afterCompact) out.push(compactSummary(v), '');
  if (v?.breakdown) out.push(breakdownLine('vnstore (`vnstore stats --json`)', v.breakdown, i.dedupZstdContainerBytes), '');
  if (v?.afterCompact?.breakdown) out.push(breakdownLine('vnstore after compact', v.afterCompact.breakdown, i.dedupZstdContainerBytes), '');
  out.push(
    `Reduction = logical bytes ÷ bytes on disk (sum of file sizes in the repository). Bounds (docs/BENCH.md): ` +
      `(a) distinct non-zero pages × 4 KiB; (b) each LZ4-compressed alone; (c) each zstd-compressed alone; ` +
      `(d) zstd over containers of ${i.containerPages} distinct pages in first-seen order. Ingest = one command per image, ` +
      `start-up included, MB = 10^6 bytes. Restore MB/s and its peak RSS: the same image for every tool ` +
      `(${r.sample.vm}/${r.sample.snap}, ${bytesH(r.sample.bytes)}), compared byte for byte with the original.` +
      (v && !v.error
        ? ` vnstore restored all ${v.restore.images} images at ${rate(v.restore.mbPerSec)} MB/s, ${v.restore.verified} verified.`
        : ''),
  );
  out.push('');
  for (const t of r.tools) {
    const cache = t.cacheBytes !== undefined ? ` Local cache outside the repository (not counted): ${bytesH(t.cacheBytes)}.` : '';
    out.push(`- **${t.tool}** (${t.version || 'version unknown'}): ${t.settings}.${cache}`);
  }
  for (const s of r.skipped) out.push(`- ${s.tool}: skipped, ${s.reason}.`);
  out.push('');
  out.push('### Bytes added per snapshot');
  out.push('');
  const ok = r.tools.filter((t) => !t.error);
  const rows = i.perImage.map((p, k) => [
    `${p.vm}/${p.snap}`,
    bytesH(p.logicalBytes),
    bytesH(p.newLz4Bytes),
    ...ok.map((t) => bytesH(t.perImage[k]?.addedBytes)),
  ]);
  rows.push([
    '**total**',
    bytesH(i.logicalBytes),
    bytesH(i.dedupLz4Bytes),
    ...ok.map((t) => bytesH(t.perImage.reduce((s, x) => s + x.addedBytes, 0))),
  ]);
  out.push(table(['image', 'logical', 'ideal (b)', ...ok.map((t) => t.tool)], rows));
  out.push('');
  out.push(
    'Growth of each repository from storing the image (the repository as created by init is not included); ' +
      'negative when a store compacts its files (e.g. a LevelDB compaction) while storing it.',
  );
  out.push('');
  out.push('### Cross-VM sharing');
  out.push('');
  out.push(
    table(
      ['VM', 'distinct pages', ...i.vms, 'in any other VM'],
      i.vms.map((a, x) => [
        a,
        int(i.vmDistinctPages[x]),
        ...i.sharing[x].map((s, y) => (x === y ? '–' : pct(s))),
        pct(i.vmSharedWithAny[x]),
      ]),
    ),
  );
  out.push('');
  out.push("Share of the row VM's distinct non-zero pages (all its snapshots) that also occur in the column VM.");
  out.push('');
  return out.join('\n');
}

export function renderSweepMarkdown(s: SweepResult): string {
  const out: string[] = [];
  const first = s.runs[0];
  out.push(`## vnstore bench --sweep ${s.knob}=${s.values.join(',')}, ${first?.date.slice(0, 10) ?? ''}`);
  out.push('');
  if (first) out.push(`Base workload: ${describeWorkload(first)}; ${s.knob} varies.`);
  out.push('');
  const rows: string[][] = [];
  for (const [k, r] of s.runs.entries()) {
    const v = String(s.values[k]);
    rows.push([
      v,
      'ideal (b)',
      bytesH(r.ideal.logicalBytes),
      bytesH(r.ideal.dedupLz4Bytes),
      times(r.ideal.logicalBytes / r.ideal.dedupLz4Bytes),
      '1.00',
      '',
      '',
      '',
    ]);
    for (const t of r.tools) {
      if (t.error) {
        rows.push([v, t.tool, '', `failed: ${t.error}`, '', '', '', '', '']);
        continue;
      }
      rows.push([
        v,
        t.tool,
        bytesH(r.ideal.logicalBytes),
        bytesH(t.repoBytes),
        times(t.reduction),
        ratio(t.vsDedupLz4),
        rate(t.ingest.mbPerSec),
        rate(t.restoreSample.mbPerSec),
        bytesH(t.ingest.peakRssBytes),
      ]);
    }
  }
  out.push(
    table([s.knob, 'store', 'logical', 'bytes on disk', 'reduction', '÷ bound b', 'ingest MB/s', 'restore MB/s', 'peak RSS put'], rows),
  );
  out.push('');
  return out.join('\n');
}
