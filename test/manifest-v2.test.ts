/**
 * Manifest format 2 (pages named by chunk number): any numbered page table, self-contained or against
 * a base, decodes back exactly from an exactly sized buffer (fast-check); exact bytes and sizes of
 * first and consecutive snapshots; every byte flip and every structural lie refused. The one-pass
 * planner gives exactly the runs of the straightforward one it replaced (issue 12), and
 * fullPlanBytesAtLeast never exceeds a full plan: a commit that skips the full plan on its word
 * chooses what comparing both plans chooses.
 */
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { beginManifest, decodeManifestHeader, encodeManifest, type ManifestHeader } from '../src/format/manifest.js';
import {
  decodeManifestV2Header,
  decodeManifestV2Pages,
  encodeManifestV2,
  fullPlanBytesAtLeast,
  MANIFEST_VERSION_NUMBERED,
  MIN_NUMBERS_RUN,
  NumberedPages,
  planManifestV2,
} from '../src/format/manifest-v2.js';
import { DIGEST_BYTES, PageKind, PageTable } from '../src/format/pages.js';
import { varintBytes } from '../src/format/varint.js';
import { CorruptError } from '../src/util/errors.js';

/** A page: zero (-1), the next of a counter (-2: consecutive numbers), or a number from a small pool. */
const pageSpec = fc.oneof(
  fc.constant(-1),
  fc.constant(-2),
  fc.constant(-2),
  fc.integer({ min: 0, max: 2 ** 40 }),
  fc.integer({ min: 0, max: 9 }),
);

function numbered(spec: number[], first = 1000): NumberedPages {
  const t = new NumberedPages(spec.length);
  let counter = first;
  spec.forEach((s, i) => (s === -1 ? t.setZero(i) : t.setNumber(i, s === -2 ? counter++ : s)));
  return t;
}

/** A numbered table of up to `maxPages` pages (`spec`: its page specs) and an optional base, both counting from the same first number. */
function tableAndBase(maxPages: number): fc.Arbitrary<{ spec: number[]; pages: NumberedPages; base: NumberedPages | undefined }> {
  return fc
    .tuple(
      fc.array(pageSpec, { maxLength: maxPages }),
      fc.option(fc.array(pageSpec, { maxLength: maxPages }), { nil: undefined }),
      fc.integer({ min: 0, max: 2 ** 47 }),
    )
    .map(([spec, baseSpec, first]) => ({ spec, pages: numbered(spec, first), base: baseSpec ? numbered(baseSpec, first) : undefined }));
}

function headerFor(pageCount: number, baseId?: string): ManifestHeader {
  return {
    meta: { id: '01a2b3c4d5e6f708', vm: 'vm-é', time: '2026-12-01T00:00:00.000Z' },
    byteLength: pageCount * 4096,
    pageCount,
    imageDigest: new Uint8Array(DIGEST_BYTES).fill(9),
    baseId,
  };
}

function roundTrip(pages: NumberedPages, base?: NumberedPages): { bytes: Buffer; back: NumberedPages } {
  const { bytes } = encodeManifestV2(headerFor(pages.pageCount, base ? '01a2b3c4d5e6f709' : undefined), pages, base);
  const { header, reader } = decodeManifestV2Header(bytes, 'test');
  return { bytes, back: decodeManifestV2Pages(header, reader, 'test', base) };
}

function expectSame(a: NumberedPages, b: NumberedPages): void {
  expect(b.pageCount).toBe(a.pageCount);
  // Buffer.equals: vitest's deep equality takes seconds over a 512 MiB image's tables.
  expect(Buffer.from(b.kinds).equals(Buffer.from(a.kinds)), 'page kinds').toBe(true);
  // Pages never numbered hold 0 on both sides (no test numbers a page and then zeroes it).
  expect(Buffer.from(b.numbers.buffer).equals(Buffer.from(a.numbers.buffer)), 'page numbers').toBe(true);
}

describe('manifest format 2', () => {
  it('round-trips any numbered page table, self-contained or against a base, in an exactly sized buffer', () => {
    fc.assert(
      fc.property(tableAndBase(400), ({ spec, pages, base }) => {
        const plan = planManifestV2(pages, base);
        const { bytes, stats } = encodeManifestV2(headerFor(spec.length, base ? '01a2b3c4d5e6f709' : undefined), pages, base, plan);
        expect(bytes.buffer.byteLength).toBe(bytes.length); // sized once, never grown
        expect(stats.zeroPages).toBe(spec.filter((s) => s === -1).length);
        expect(stats.numberedEntries + stats.sameEntries).toBe(spec.filter((s) => s !== -1).length);
        const { header, reader } = decodeManifestV2Header(bytes, 'test');
        expect(header.pageCount).toBe(spec.length);
        expectSame(pages, decodeManifestV2Pages(header, reader, 'test', base));
      }),
      { numRuns: 400 },
    );
  });

  it('writes the exact runs: NUMBERS for 4+ consecutive numbers, LIST otherwise, deltas from the next number', () => {
    // Pages: 100..104, zero, zero, 7, then 105..109.
    const t = new NumberedPages(13);
    [100, 101, 102, 103, 104].forEach((n, i) => t.setNumber(i, n));
    t.setZero(5);
    t.setZero(6);
    t.setNumber(7, 7);
    t.setNumber(8, 105);
    [106, 107, 108, 109].forEach((n, i) => t.setNumber(9 + i, n));
    const { bytes, back } = roundTrip(t);
    expectSame(t, back);
    const header = headerFor(13);
    const prefix = beginManifest(header, MANIFEST_VERSION_NUMBERED, 4, 0).finish();
    // NUMBERS 5 from 100: head 5*4+2 = 22, zigzag(100) = 200 (c8 01); ZERO 2: head 8;
    // LIST 1 (7): head 7, zigzag(7 - 105) = 195 (c3 01); NUMBERS 5 from 105: head 22, zigzag(105 - 8) = 194 (c2 01).
    expect(bytes.subarray(prefix.length, bytes.length - 4).toString('hex')).toBe('16c801' + '08' + '07c301' + '16c201');
    expect(bytes.readUInt32LE(bytes.length - 4)).toBe(crc32(bytes.subarray(0, bytes.length - 4)));
  });

  it('costs a few bytes a run for a first snapshot and next to nothing for a consecutive one', () => {
    // A first snapshot of 131,072 pages (512 MiB): numbered in page order, with a zero page every
    // 64 and a deduplicated page (an earlier number) every 100.
    const first = new NumberedPages(131_072);
    let next = 50_000;
    for (let i = 0; i < first.pageCount; i++) {
      if (i % 64 === 63) first.setZero(i);
      else if (i % 100 === 99) first.setNumber(i, 50_000 + (i % 1000));
      else first.setNumber(i, next++);
    }
    const a = roundTrip(first);
    expectSame(first, a.back);
    const headBytes = beginManifest(headerFor(first.pageCount), MANIFEST_VERSION_NUMBERED, 0, 0).length + 4;
    // ~3,400 breaks in 131,072 pages: under a quarter of a byte a page (version 1: 32 B a page).
    expect((a.bytes.length - headBytes) / first.pageCount).toBeLessThan(0.25);
    // The next snapshot changes 1% of the pages (new numbers), against the first as its base.
    const second = new NumberedPages(first.pageCount);
    second.kinds.set(first.kinds);
    second.numbers.set(first.numbers);
    for (let i = 7; i < second.pageCount; i += 100) second.setNumber(i, next++);
    const b = roundTrip(second, first);
    expectSame(second, b.back);
    expect((b.bytes.length - headBytes) / second.pageCount).toBeLessThan(0.1);
    // And a consecutive number run costs exactly its head and one delta.
    const run = new NumberedPages(1000);
    for (let i = 0; i < 1000; i++) run.setNumber(i, 7 + i);
    expect(roundTrip(run).bytes.length).toBe(beginManifest(headerFor(1000), MANIFEST_VERSION_NUMBERED, 1, 0).length + 3 + 4);
  });

  it('refuses every single-byte change', () => {
    const pages = numbered([-2, -2, -2, -2, -2, -1, 3, 9, -2, -1]);
    const base = numbered([-2, -2, -1, 4]);
    const { bytes } = encodeManifestV2(headerFor(10, '01a2b3c4d5e6f709'), pages, base);
    for (let p = 0; p < bytes.length; p++) {
      for (const x of [0x01, 0x80, 0xff]) {
        const bad = Buffer.from(bytes);
        bad[p] ^= x;
        expect(() => {
          const { header, reader } = decodeManifestV2Header(bad, 'test');
          decodeManifestV2Pages(header, reader, 'test', base);
        }, `byte ${p} ^ ${x}`).toThrow(CorruptError);
      }
    }
  });

  it('refuses runs that lie, with a valid checksum, and the other manifest version', () => {
    /** A manifest of `pageCount` pages whose body is `runs` (hex) after `runCount`. */
    const withRuns = (pageCount: number, runCount: number, runs: string, baseId?: string): Buffer => {
      const body = Buffer.from(runs, 'hex');
      const w = beginManifest(headerFor(pageCount, baseId), MANIFEST_VERSION_NUMBERED, runCount, body.length);
      w.bytes(body);
      w.u32(crc32(w.finish()));
      return w.finish();
    };
    const decode = (bytes: Buffer, base?: NumberedPages) => {
      const { header, reader } = decodeManifestV2Header(bytes, 'test');
      return decodeManifestV2Pages(header, reader, 'test', base);
    };
    expect(Array.from(decode(withRuns(4, 1, '1214')).numbers)).toEqual([10, 11, 12, 13]);
    const base = numbered([-2, -1]);
    const cases: [string, Buffer, NumberedPages?][] = [
      ['run beyond the page count', withRuns(4, 1, '1614')],
      ['runs short of the page count', withRuns(4, 1, '0e14')],
      ['empty run', withRuns(4, 2, '02' + '1214')],
      ['negative number', withRuns(1, 1, '0701')],
      ['SAME beyond its base', withRuns(4, 1, '11', '01a2b3c4d5e6f709'), base],
      ['SAME over a zero base page', withRuns(2, 1, '09', '01a2b3c4d5e6f709'), base],
      ['trailing bytes', withRuns(4, 1, '121400')],
      ['truncated list', withRuns(2, 1, '0b02')],
    ];
    for (const [what, bytes, b] of cases) expect(() => decode(bytes, b), what).toThrow(CorruptError);
    // Each version's reader refuses the other's manifests.
    const v2 = withRuns(4, 1, '1214');
    expect(() => decodeManifestHeader(v2, 'test')).toThrow(CorruptError);
    const v1Pages = new PageTable(1);
    v1Pages.setZero(0);
    const v1 = encodeManifest(headerFor(1), v1Pages).bytes;
    expect(() => decodeManifestV2Header(v1, 'test')).toThrow(CorruptError);
  });
});

/** The planner as it was before the one-pass rewrite: run heads (count * 4 + kind) and body bytes. */
function referencePlan(pages: NumberedPages, base?: NumberedPages) {
  const heads: number[] = [];
  const stats = { runs: 0, numberedEntries: 0, sameEntries: 0, zeroPages: 0 };
  let bodyBytes = 0;
  let next = 0;
  const zigzag = (d: number) => (d >= 0 ? 2 * d : -2 * d - 1);
  const push = (kind: number, first: number, count: number) => {
    heads.push(count * 4 + kind);
    bodyBytes += varintBytes(count * 4 + kind);
    if (kind === 2) {
      bodyBytes += varintBytes(zigzag(pages.numbers[first] - next));
      next = pages.numbers[first + count - 1] + 1;
    } else if (kind === 3) {
      for (let k = first; k < first + count; k++) {
        bodyBytes += varintBytes(zigzag(pages.numbers[k] - next));
        next = pages.numbers[k] + 1;
      }
    }
    if (kind === 0) stats.zeroPages += count;
    else if (kind === 1) stats.sameEntries += count;
    else stats.numberedEntries += count;
    stats.runs++;
  };
  const classify = (i: number): number => {
    if (pages.kinds[i] === PageKind.Zero) return 0;
    if (base && i < base.pageCount && base.kinds[i] === PageKind.Digest && base.numbers[i] === pages.numbers[i]) return 1;
    return 2;
  };
  let i = 0;
  while (i < pages.pageCount) {
    const kind = classify(i);
    let j = i + 1;
    while (j < pages.pageCount && classify(j) === kind) j++;
    if (kind !== 2) push(kind, i, j - i);
    else {
      let listStart = -1;
      let a = i;
      while (a < j) {
        let b = a + 1;
        while (b < j && pages.numbers[b] === pages.numbers[b - 1] + 1) b++;
        if (b - a >= MIN_NUMBERS_RUN) {
          if (listStart >= 0) push(3, listStart, a - listStart);
          listStart = -1;
          push(2, a, b - a);
        } else if (listStart < 0) listStart = a;
        a = b;
      }
      if (listStart >= 0) push(3, listStart, j - listStart);
    }
    i = j;
  }
  return { heads, stats, bodyBytes };
}

/** A child of `base`: edit 0 or 3 keeps a page as it was, 1 zeroes it, 2 gives it a new number. */
function childOf(base: NumberedPages, edits: number[]): NumberedPages {
  const t = new NumberedPages(base.pageCount);
  for (let i = 0; i < base.pageCount; i++) {
    const e = edits[i % edits.length];
    if (e === 1 || ((e === 0 || e === 3) && base.kinds[i] === PageKind.Zero)) t.setZero(i);
    else if (e === 2) t.setNumber(i, 10 ** 6 + i);
    else t.setNumber(i, base.numbers[i]);
  }
  return t;
}

describe('manifest format 2 plans', () => {
  it('are exactly the reference plans, with and without a base (fast-check)', () => {
    fc.assert(
      fc.property(tableAndBase(600), ({ pages, base }) => {
        const plan = planManifestV2(pages, base);
        const ref = referencePlan(pages, base);
        expect(Array.from(plan.heads)).toEqual(ref.heads);
        expect(plan.bodyBytes).toBe(ref.bodyBytes);
        expect(plan.stats).toEqual(ref.stats);
      }),
      { numRuns: 500 },
    );
  });

  it('of children of a base are exactly the reference plans, and a full plan is never smaller than its bound', () => {
    fc.assert(
      fc.property(
        fc.array(pageSpec, { minLength: 1, maxLength: 3000 }),
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 40 }),
        (baseSpec, edits) => {
          const base = numbered(baseSpec, 5);
          const child = childOf(base, edits);
          const delta = planManifestV2(child, base);
          expect(Array.from(delta.heads)).toEqual(referencePlan(child, base).heads);
          expect(delta.bodyBytes).toBe(referencePlan(child, base).bodyBytes);
          for (const t of [child, base]) expect(fullPlanBytesAtLeast(t)).toBeLessThanOrEqual(planManifestV2(t).bodyBytes);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('at a 256 MiB image: the bound is tight for consecutive numbers, and the plan has every run', () => {
    // A first snapshot's numbering: pages in order, a quarter zero (as bench/server-image.mjs makes them).
    const n = 65536;
    const pages = new NumberedPages(n);
    let s = 1;
    let number = 0;
    const next = () => ((s ^= s << 13), (s ^= s >>> 17), (s ^= s << 5), s >>> 0);
    for (let i = 0; i < n; i++)
      if (next() % 4 === 0) pages.setZero(i);
      else pages.setNumber(i, number++);
    const full = planManifestV2(pages);
    const ref = referencePlan(pages);
    expect(Array.from(full.heads)).toEqual(ref.heads);
    expect(full.bodyBytes).toBe(ref.bodyBytes);
    // Runs of 1-3 numbered pages are LIST runs (a byte a number), longer ones NUMBERS (one start).
    expect(fullPlanBytesAtLeast(pages)).toBeLessThanOrEqual(full.bodyBytes);
    expect(fullPlanBytesAtLeast(pages)).toBeGreaterThan(0.8 * full.bodyBytes);
    // The same pages against themselves: SAME and ZERO runs only, smaller than the bound.
    const same = planManifestV2(pages, pages);
    expect(same.stats.sameEntries).toBe(number);
    expect(same.bodyBytes + 26).toBeLessThan(fullPlanBytesAtLeast(pages));
  });
});
