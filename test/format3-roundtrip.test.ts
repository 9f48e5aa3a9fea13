/**
 * Store format 3 round trip (issue 16): random images ingested in pre-copy rounds (ranges, scattered
 * page lists, single pages; the last write of a page wins), with parents chosen at random (auto, none,
 * an older snapshot of the VM), the store closed and reopened at random points: every snapshot
 * restores to exactly its bytes, its record matches, and its manifest is version 2.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { expectedImageDigest, makePage, PAGE, restoreToBuffer, tempDirs, type PageKindSpec } from './helpers/engine.js';

const tmp = tempDirs();
const NUM_RUNS = Number(process.env.VNSTORE_FC_RUNS ?? 25);

const writeArb = fc.oneof(
  fc.record({ how: fc.constant('range' as const), page: fc.nat(), count: fc.integer({ min: 1, max: 24 }) }),
  fc.record({ how: fc.constant('scattered' as const), pages: fc.array(fc.nat(), { minLength: 1, maxLength: 12 }) }),
  fc.record({ how: fc.constant('single' as const), page: fc.nat() }),
);
const contentArb = fc.record({
  kind: fc.constantFrom<PageKindSpec>('zero', 'random', 'compressible', 'sparse'),
  // A small pool of seeds: pages repeat within and across images (dedup by number against the store).
  seed: fc.integer({ min: 0, max: 40 }),
});
const snapshotArb = fc.record({
  vm: fc.constantFrom('a', 'b'),
  pages: fc.integer({ min: 1, max: 48 }),
  cut: fc.integer({ min: 0, max: PAGE - 1 }),
  parent: fc.constantFrom('auto', 'none', 'older'),
  rounds: fc.array(fc.array(fc.tuple(writeArb, contentArb), { maxLength: 6 }), { minLength: 1, maxLength: 3 }),
  reopen: fc.boolean(),
});

describe('store format 3: round trip', () => {
  it('random images, pre-copy rounds, parents and reopens: every snapshot exact', async () => {
    const dir = path.join(tmp('fmt3-rt'), 'store');
    await Store.init(dir, { format: 3 });
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 48 * 1024 });
    const expected = new Map<string, { record: SnapshotRecord; image: Buffer }>();
    try {
      await fc.assert(
        fc.asyncProperty(snapshotArb, async (spec) => {
          const mine = [...expected.values()].filter((e) => e.record.vm === spec.vm);
          const parentRec = spec.parent === 'older' ? mine[0]?.record : spec.parent === 'auto' ? mine.at(-1)?.record : undefined;
          const parentImage = parentRec ? expected.get(parentRec.id)!.image : undefined;
          const byteLength = spec.pages * PAGE - spec.cut;
          // The model: pages not written inherit the parent's (zero beyond it), the last write wins.
          const model = Buffer.alloc(spec.pages * PAGE);
          if (parentImage) parentImage.copy(model, 0, 0, Math.min(parentImage.length, model.length));
          const session = await store.beginSession({
            vm: spec.vm,
            parent: parentRec ? parentRec.id : 'none',
            memoryBytes: byteLength,
          });
          let n = 0;
          const pageOf = (p: number) => p % spec.pages;
          const content = (c: { kind: PageKindSpec; seed: number }, k: number) => makePage(c.kind, c.seed * 7 + (k % 3));
          for (const round of spec.rounds) {
            for (const [w, c] of round) {
              n++;
              if (w.how === 'range') {
                const first = pageOf(w.page);
                const count = Math.min(w.count, spec.pages - first);
                const data = Buffer.concat(Array.from({ length: count }, (_, k) => content(c, k + n)));
                data.copy(model, first * PAGE);
                // Only the image's last page may be short: a write that reaches it is cut there.
                const end = Math.min(byteLength, (first + count) * PAGE);
                await session.writePages(first, data.subarray(0, end - first * PAGE));
              } else if (w.how === 'scattered') {
                const pages = w.pages.map(pageOf).filter((p) => p < spec.pages - 1 || spec.cut === 0);
                if (pages.length === 0) continue;
                const data = Buffer.concat(pages.map((_, k) => content(c, k + n)));
                pages.forEach((p, k) => data.copy(model, p * PAGE, k * PAGE, (k + 1) * PAGE));
                await session.writeScattered(pages, data);
              } else {
                const p = pageOf(w.page);
                if (p === spec.pages - 1 && spec.cut !== 0) continue;
                const page = content(c, n);
                page.copy(model, p * PAGE);
                await session.writePage(p, page);
              }
            }
          }
          // Bytes past the image's length are not part of it.
          const image = Buffer.from(model.subarray(0, byteLength));
          const record = await session.commit({ byteLength, unwritten: parentRec ? 'parent' : 'zero' });
          expect(record.imageDigest).toBe(expectedImageDigest(image));
          expect(record.parent).toBe(parentRec?.id);
          expect((await restoreToBuffer(store, record)).equals(image)).toBe(true);
          const manifest = readFileSync(store.manifestPath(record.id));
          expect(manifest.readUInt16LE(8)).toBe(2); // manifest version 2: pages named by number
          expected.set(record.id, { record, image });
          if (spec.reopen) {
            await store.close();
            store = await Store.open(dir, { workers: 0, packTargetBytes: 48 * 1024 });
          }
        }),
        { numRuns: NUM_RUNS, interruptAfterTimeLimit: 60_000 },
      );
      await store.close();
      store = await Store.open(dir, { workers: 2 });
      for (const { record, image } of expected.values()) {
        expect((await restoreToBuffer(store, record)).equals(image), `snapshot ${record.id}`).toBe(true);
      }
      // One number per distinct chunk: no number skipped, no digest (24-byte TOC prefix) stored twice.
      expect(store.numbered!.index.size).toBe(store.numbered!.allocator.nextNumber);
      const digests = new Set<string>();
      for (const pack of store.numbered!.index.packIds) {
        const { toc } = await store.packs.readTocV3(pack);
        for (let k = 0; k < toc.count; k++) digests.add(Buffer.from(toc.digests.subarray(k * 24, k * 24 + 24)).toString('hex'));
      }
      expect(digests.size).toBe(store.numbered!.index.size);
    } finally {
      await store.close();
    }
  }, 240_000);
});
