/**
 * vnstore diff A B: page classes by region and in total. The pure function against a model over page
 * names (fast-check); the CLI against counts taken from the raw images byte by byte.
 */
import path from 'node:path';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DIGEST_BYTES, PageTable } from '../src/format/pages.js';
import { diffPages, type PageDiffCounts } from '../src/maintenance/diff.js';
import { expectCliError, putImage } from './helpers/cli.js';
import { PAGE, makeTempDir, randomPage, removeDir, runCli } from './helpers/engine.js';

/** A page table from page names: 'z' zero, anything else a digest of the name. */
function table(names: string[]): PageTable {
  const t = new PageTable(names.length);
  names.forEach((n, i) => (n === 'z' ? t.setZero(i) : t.setDigest(i, createHash('sha256').update(n).digest().subarray(0, DIGEST_BYTES))));
  return t;
}

function modelCounts(a: string[], b: string[], from: number, to: number): PageDiffCounts {
  const c = { changed: 0, added: 0, removed: 0, becameZero: 0, unchanged: 0 };
  for (let i = from; i < to; i++) {
    if (a[i] === undefined) c.added++;
    else if (b[i] === undefined) c.removed++;
    else if (a[i] === b[i]) c.unchanged++;
    else if (b[i] === 'z') c.becameZero++;
    else c.changed++;
  }
  return c;
}

describe('diffPages (pure)', () => {
  it('classifies every page index once, per region and in total, as the model does', () => {
    const names = fc.array(fc.constantFrom('z', 'p1', 'p2', 'p3', 'p4'), { maxLength: 60 });
    fc.assert(
      fc.property(names, names, fc.integer({ min: 1, max: 70 }), (a, b, regionPages) => {
        const d = diffPages(table(a), table(b), regionPages);
        const n = Math.max(a.length, b.length);
        expect(d.total).toEqual(modelCounts(a, b, 0, n));
        expect(d.regions.length).toBe(Math.ceil(n / regionPages));
        d.regions.forEach((r, k) => {
          const to = Math.min(n, (k + 1) * regionPages);
          expect(r).toEqual({
            index: k,
            firstPage: k * regionPages,
            pages: to - k * regionPages,
            ...modelCounts(a, b, k * regionPages, to),
          });
        });
      }),
      { numRuns: 300 },
    );
  });

  it('an unset page reads as zero', () => {
    const a = table(['p1', 'z', 'p2']);
    const b = new PageTable(3);
    b.setDigest(0, a.digestAt(0));
    expect(diffPages(a, b).total).toEqual({ changed: 0, added: 0, removed: 0, becameZero: 1, unchanged: 2 });
  });
});

describe('vnstore diff', () => {
  let root: string;
  let store: string;
  let imgA: Buffer;
  let imgB: Buffer;
  let idA: string;
  let idB: string;

  beforeAll(async () => {
    root = makeTempDir('diff');
    store = path.join(root, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    // A: 10 pages, every third zero. B: pages 1 and 4 changed, page 2 zeroed, page 3 (zero) gets data,
    // 3 pages more (one of them zero).
    const pagesA = Array.from({ length: 10 }, (_, i) => (i % 3 === 0 ? Buffer.alloc(PAGE) : randomPage(100 + i)));
    const pagesB = pagesA.map((p) => p);
    pagesB[1] = randomPage(201);
    pagesB[4] = randomPage(204);
    pagesB[2] = Buffer.alloc(PAGE);
    pagesB[3] = randomPage(203);
    pagesB.push(randomPage(210), Buffer.alloc(PAGE), randomPage(212));
    imgA = Buffer.concat(pagesA);
    imgB = Buffer.concat(pagesB);
    for (const [img, set] of [
      [imgA, (id: string) => (idA = id)],
      [imgB, (id: string) => (idB = id)],
    ] as const) {
      const r = await putImage(root, store, 'vm', img);
      expect(r.code, r.stderr).toBe(0);
      set(r.stdout.toString().trim());
    }
  }, 60_000);
  afterAll(() => removeDir(root));

  /** Counts from the raw images, page by page. */
  function fromImages(a: Buffer, b: Buffer, from: number, to: number): PageDiffCounts {
    const zero = Buffer.alloc(PAGE);
    const pg = (img: Buffer, i: number) => (i * PAGE < img.length ? img.subarray(i * PAGE, (i + 1) * PAGE) : undefined);
    const c = { changed: 0, added: 0, removed: 0, becameZero: 0, unchanged: 0 };
    for (let i = from; i < to; i++) {
      const x = pg(a, i);
      const y = pg(b, i);
      if (!x) c.added++;
      else if (!y) c.removed++;
      else if (x.equals(y)) c.unchanged++;
      else if (y.equals(zero)) c.becameZero++;
      else c.changed++;
    }
    return c;
  }

  it('--json: exact counts by region and in total, both ways', async () => {
    for (const [a, b, ia, ib] of [
      [imgA, imgB, idA, idB],
      [imgB, imgA, idB, idA],
    ] as const) {
      const r = await runCli(['diff', '--store', store, ia.slice(0, 14), ib, '--region-pages', '4', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout.toString()) as {
        a: { id: string; pages: number };
        b: { id: string };
        pageSize: number;
        regionPages: number;
        total: PageDiffCounts;
        regions: (PageDiffCounts & { firstPage: number; pages: number })[];
      };
      expect([j.a.id, j.b.id, j.a.pages, j.pageSize, j.regionPages]).toEqual([ia, ib, a.length / PAGE, PAGE, 4]);
      expect(j.total).toEqual(fromImages(a, b, 0, 13));
      expect(j.regions.map((x) => x.firstPage)).toEqual([0, 4, 8, 12]);
      j.regions.forEach((x) =>
        expect({ changed: x.changed, added: x.added, removed: x.removed, becameZero: x.becameZero, unchanged: x.unchanged }).toEqual(
          fromImages(a, b, x.firstPage, x.firstPage + x.pages),
        ),
      );
    }
    // The case above, spelled out: changed 1, 3, 4; zeroed 2; added 10-12.
    const j = JSON.parse((await runCli(['diff', '--store', store, idA, idB, '--json'])).stdout.toString()) as {
      total: PageDiffCounts;
      regions: unknown[];
    };
    expect(j.total).toEqual({ changed: 3, added: 3, removed: 0, becameZero: 1, unchanged: 6 });
    expect(j.regions.length).toBe(1); // default regions are 256 MiB
  });

  it('prints a table with a total line; bad input is one line with its exit code', async () => {
    const r = await runCli(['diff', '--store', store, idA, idB, '--region-pages', '8']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.toString().split('\n');
    expect(lines.slice(3)).toEqual([
      'REGION     CHANGED  ADDED  REMOVED  ZEROED  UNCHANGED',
      '0 B+             3      0        0       1          4',
      '32.0 KiB+        0      3        0       0          2',
      'total            3      3        0       1          6',
      '',
      '4 of 10 pages in both differ (40.00%), 16.0 KiB; regions of 32.0 KiB',
      '',
    ]);
    expectCliError(await runCli(['diff', '--store', store, idA, 'ffffffffffffffff']), 6, 'ffffffffffffffff');
    expect((await runCli(['diff', '--store', store, idA, idB, '--region-pages', '0'])).code).toBe(2);
  });
});
