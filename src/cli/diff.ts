import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { DEFAULT_REGION_PAGES, diffPages, type PageDiffCounts } from '../maintenance/diff.js';
import type { SnapshotRecord } from '../store/db.js';
import { PAGE_SIZE } from '../format/pages.js';
import { CATALOG_ONLY, action, humanBytes, lockWaitOption, storeOption, withStore } from './common.js';

interface DiffOptions {
  store?: string;
  json?: boolean;
  regionPages: number;
}

export function registerDiff(program: Command): void {
  program
    .command('diff')
    .description('how many pages changed, were added or removed, or became zero from snapshot A to snapshot B, by region and in total')
    .argument('<a>', 'the earlier snapshot: id or unique prefix')
    .argument('<b>', 'the later snapshot: id or unique prefix')
    .option(
      '--region-pages <n>',
      `pages per region (default ${DEFAULT_REGION_PAGES} = ${humanBytes(DEFAULT_REGION_PAGES * PAGE_SIZE)})`,
      parseRegionPages,
      DEFAULT_REGION_PAGES,
    )
    .option('--json', 'print {a, b, pageSize, regionPages, total, regions[]} with exact counts')
    .addOption(storeOption())
    .addOption(lockWaitOption())
    .addHelpText(
      'after',
      `
Pages are 4 KiB. Each page index counts once, as one of:
  changed     in both, different content (a zero page that got data counts here)
  added       beyond A's size (B is larger)
  removed     beyond B's size (B is smaller)
  zeroed      had data in A, zero in B
  unchanged   same content in both
Only the two manifests are read (no page data), so it is quick even for large snapshots. A and B
may belong to different VMs.

Examples:
  vnstore diff 6b1f2a3c 6b1f2b10
  vnstore diff 6b1f2a3c 6b1f2b10 --region-pages 16384 --json
`,
    )
    .action(
      action(async (a: string, b: string, opts: DiffOptions) => {
        await withStore(
          opts,
          async (store) => {
            const ra = await store.resolveSnapshot(a);
            const rb = await store.resolveSnapshot(b);
            const pa = await store.loadPages(ra.id); // by digest on every store format
            const pb = await store.loadPages(rb.id);
            const d = diffPages(pa, pb, opts.regionPages);
            if (opts.json) {
              const side = (r: SnapshotRecord) => ({ id: r.id, vm: r.vm, time: r.time, byteLength: r.byteLength, pages: r.pageCount });
              process.stdout.write(JSON.stringify({ a: side(ra), b: side(rb), pageSize: PAGE_SIZE, ...d }, null, 2) + '\n');
              return;
            }
            const out: string[] = [];
            out.push(`A ${ra.id}  ${ra.vm}  ${ra.time}  ${humanBytes(ra.byteLength)}`);
            out.push(`B ${rb.id}  ${rb.vm}  ${rb.time}  ${humanBytes(rb.byteLength)}`);
            out.push('');
            const header = ['REGION', 'CHANGED', 'ADDED', 'REMOVED', 'ZEROED', 'UNCHANGED'];
            const counts = (c: PageDiffCounts) => [c.changed, c.added, c.removed, c.becameZero, c.unchanged].map(String);
            const rows = d.regions.map((r) => [`${humanBytes(r.firstPage * PAGE_SIZE)}+`, ...counts(r)]);
            rows.push(['total', ...counts(d.total)]);
            const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
            const fmt = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
            out.push(fmt(header), ...rows.map(fmt));
            const both = d.total.changed + d.total.becameZero + d.total.unchanged;
            const moved = d.total.changed + d.total.becameZero;
            out.push('');
            out.push(
              `${moved} of ${both} pages in both differ (${both > 0 ? ((moved / both) * 100).toFixed(2) : '0.00'}%), ${humanBytes(moved * PAGE_SIZE)}; regions of ${humanBytes(d.regionPages * PAGE_SIZE)}`,
            );
            process.stdout.write(out.join('\n') + '\n');
          },
          CATALOG_ONLY,
        );
      }),
    );
}

function parseRegionPages(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value)))
    throw new InvalidArgumentError('takes a whole number of pages >= 1');
  return Number(value);
}
