/**
 * Property-based round trips through the library API (issue 2, "Property-based tests"): arbitrary
 * images and arbitrary session write orders come back byte for byte, with page workers and without.
 * Every property ends by closing the store and restoring everything again from a fresh open, so the
 * on-disk state (not a cache) is what is proven.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import type { Session } from '../src/store/session.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { VnstoreError } from '../src/util/errors.js';
import {
  PAGE,
  compressiblePage,
  expectedImageDigest,
  makePage,
  makeTempDir,
  randomPage,
  removeDir,
  restoreToBuffer,
  sparsePage,
  type PageKindSpec,
} from './helpers/engine.js';

const PACK_TARGET = 48 * 1024; // many small packs: restores cross pack boundaries
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

async function freshStore(workers: number, format?: number): Promise<{ dir: string; store: Store }> {
  const dir = path.join(makeTempDir('rt'), 'store');
  dirs.push(path.dirname(dir));
  await Store.init(dir, { format });
  return { dir, store: await Store.open(dir, { workers, packTargetBytes: PACK_TARGET }) };
}

/** Reopens the store from disk and checks every expected snapshot (and nothing else) is listed and exact. */
async function verifyAfterReopen(store: Store, dir: string, workers: number, expected: Map<string, Buffer>): Promise<Store> {
  await store.close();
  const reopened = await Store.open(dir, { workers, packTargetBytes: PACK_TARGET });
  const clean = { tempFilesRemoved: 0, packsIndexed: 0, packsQuarantined: [], orphanManifestsRemoved: 0 };
  expect(reopened.recovery).toEqual(reopened.isNumbered ? { ...clean, copiesRemoved: [], conflictingPacks: [] } : clean);
  const listed = await reopened.listSnapshots();
  expect(listed.map((r) => r.id).sort()).toEqual([...expected.keys()].sort());
  for (const rec of listed) {
    const image = expected.get(rec.id)!;
    const out = await restoreToBuffer(reopened, rec);
    expect(out.length).toBe(image.length);
    expect(out.equals(image)).toBe(true);
  }
  return reopened;
}

function pagesOf(image: Buffer): number {
  return Math.ceil(image.length / PAGE);
}

function zeroPageCount(image: Buffer): number {
  let n = 0;
  const zero = Buffer.alloc(PAGE);
  for (let i = 0; i < pagesOf(image); i++) {
    const p = Buffer.alloc(PAGE);
    image.copy(p, 0, i * PAGE, Math.min(image.length, (i + 1) * PAGE));
    if (p.equals(zero)) n++;
  }
  return n;
}

function expectRecordMatches(rec: SnapshotRecord, image: Buffer): void {
  expect(rec.byteLength).toBe(image.length);
  expect(rec.pageCount).toBe(pagesOf(image));
  expect(rec.zeroPages).toBe(zeroPageCount(image));
  expect(rec.imageDigest).toBe(expectedImageDigest(image));
}

// ------------------------------------------------------------------ arbitraries

type Segment =
  | { kind: 'zero'; pages: number }
  | { kind: 'random' | 'compressible' | 'sparse'; pages: number; seed: number }
  | { kind: 'repeat'; pages: number; of: number };

const segmentArb: fc.Arbitrary<Segment> = fc.oneof(
  fc.record({ kind: fc.constant('zero' as const), pages: fc.integer({ min: 1, max: 24 }) }),
  fc.record({ kind: fc.constant('random' as const), pages: fc.integer({ min: 1, max: 6 }), seed: fc.integer({ min: 0, max: 1 << 30 }) }),
  // Few distinct seeds: the same compressible page recurs across segments and images (dedup).
  fc.record({ kind: fc.constant('compressible' as const), pages: fc.integer({ min: 1, max: 6 }), seed: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ kind: fc.constant('sparse' as const), pages: fc.integer({ min: 1, max: 3 }), seed: fc.integer({ min: 0, max: 1000 }) }),
  fc.record({ kind: fc.constant('repeat' as const), pages: fc.integer({ min: 1, max: 8 }), of: fc.nat() }),
);

/** An image: segments of page kinds, then cut to an exact length that need not be a page multiple. */
const imageArb: fc.Arbitrary<Buffer> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc
      .record({ segments: fc.array(segmentArb, { minLength: 1, maxLength: 10 }), cut: fc.integer({ min: 0, max: PAGE - 1 }) })
      .map(buildImage),
  },
  // Tiny images: a few bytes, possibly all zero.
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 200 }).map((a) => Buffer.from(a)) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 * PAGE + 5 }).map((n) => Buffer.alloc(n)) },
);

function buildImage({ segments, cut }: { segments: Segment[]; cut: number }): Buffer {
  const pages: Buffer[] = [];
  for (const s of segments) {
    for (let k = 0; k < s.pages; k++) {
      if (s.kind === 'zero') pages.push(Buffer.alloc(PAGE));
      else if (s.kind === 'repeat') pages.push(pages.length > 0 ? Buffer.from(pages[s.of % pages.length]) : compressiblePage(s.of % 4));
      else pages.push(makePage(s.kind, s.seed + k));
    }
  }
  const full = Buffer.concat(pages);
  return full.subarray(0, Math.max(1, full.length - cut));
}

/** Splits [0, pageCount) into consecutive page-aligned pieces of the given sizes (cycled). */
function pieces(pageCount: number, sizes: number[]): [number, number][] {
  const out: [number, number][] = [];
  let p = 0;
  let k = 0;
  while (p < pageCount) {
    const n = Math.min(pageCount - p, Math.max(1, sizes.length > 0 ? sizes[k++ % sizes.length] : pageCount));
    out.push([p, n]);
    p += n;
  }
  return out;
}

/** Writes `image` in page-aligned pieces; the final piece carries the short tail exactly. */
async function writeImage(session: Session, image: Buffer, sizes: number[], transfer: boolean): Promise<void> {
  for (const [first, n] of pieces(pagesOf(image), sizes)) {
    const view = image.subarray(first * PAGE, Math.min(image.length, (first + n) * PAGE));
    // transfer: hand over a private copy that owns its ArrayBuffer (the store may take it).
    await session.writePages(first, transfer ? new Uint8Array(view) : view, transfer);
  }
}

const NUM_RUNS = Number(process.env.VNSTORE_FC_RUNS ?? 30);
// A property normally finishes in a second or two; the cap only bounds shrinking of a failure (which
// is still reported, with the counterexample shrunk so far) so a failing run stays under the timeout.
const SHRINK_CAP = { interruptAfterTimeLimit: 25_000 };

describe.each([0, 2])('engine round trip, workers: %i', (workers) => {
  it('arbitrary images round-trip exactly and their records describe them', async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    let vmN = 0;
    await fc.assert(
      fc.asyncProperty(
        imageArb,
        fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 4 }),
        fc.boolean(),
        fc.boolean(),
        async (image, sizes, transfer, givenLength) => {
          const session = await store.beginSession({ vm: `vm${vmN++}`, parent: 'none' });
          await writeImage(session, image, sizes, transfer);
          const rec = await session.commit(givenLength ? { byteLength: image.length } : {});
          expectRecordMatches(rec, image);
          expected.set(rec.id, Buffer.from(image));
          const out = await restoreToBuffer(store, rec);
          expect(out.equals(image)).toBe(true);
        },
      ),
      { numRuns: NUM_RUNS, ...SHRINK_CAP },
    );
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });

  it('pages written in any order, some several times, commit the last write of each page', async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    const writeArb = fc.record({
      page: fc.nat(),
      kind: fc.constantFrom<PageKindSpec>('zero', 'random', 'compressible', 'sparse'),
      seed: fc.integer({ min: 0, max: 5 }),
      count: fc.integer({ min: 1, max: 5 }),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: PAGE - 1 }),
        fc.array(writeArb, { maxLength: 30 }),
        fc.func(fc.integer()),
        async (pageCount, cut, extraWrites, shuffleKey) => {
          const byteLength = pageCount * PAGE - (pageCount > 0 ? cut : 0);
          // Every page once (so nothing is unwritten), in a shuffled order, plus overwrites anywhere.
          const writes = [
            ...Array.from({ length: pageCount }, (_, page) => ({ page, kind: 'random' as PageKindSpec, seed: 1000 + page, count: 1 })),
            ...extraWrites.map((w) => ({ ...w, page: w.page % pageCount, count: Math.min(w.count, pageCount - (w.page % pageCount)) })),
          ];
          const order = writes
            .map((w, i) => ({ w, k: shuffleKey(i) }))
            .sort((a, b) => a.k - b.k)
            .map((x) => x.w);
          const model = Buffer.alloc(pageCount * PAGE);
          const session = await store.beginSession({ vm: 'order', parent: 'none', memoryBytes: byteLength });
          let n = 0;
          for (const w of order) {
            const data = Buffer.concat(Array.from({ length: w.count }, (_, k) => makePage(w.kind, w.seed * 31 + k + n)));
            n++;
            // The image's final page is written short, exactly as long as the image.
            const end = Math.min(byteLength, (w.page + w.count) * PAGE);
            const bytes = data.subarray(0, end - w.page * PAGE);
            model.fill(0, w.page * PAGE, (w.page + w.count) * PAGE);
            bytes.copy(model, w.page * PAGE);
            await session.writePages(w.page, bytes);
          }
          const rec = await session.commit();
          const image = model.subarray(0, byteLength);
          expectRecordMatches(rec, image);
          expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
          expected.set(rec.id, Buffer.from(image));
        },
      ),
      { numRuns: NUM_RUNS, ...SHRINK_CAP },
    );
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });

  it('scattered page lists and single pages (repeats within and across calls, mixed with ranges) commit the last write of each page', async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    const pageArb = fc.record({
      page: fc.nat(),
      kind: fc.constantFrom<PageKindSpec>('zero', 'random', 'compressible', 'sparse'),
      seed: fc.integer({ min: 0, max: 3 }),
    });
    // A call: a scattered list of pages, a contiguous range written with writePages, or the pages
    // one writePage at a time (gathered into blocks by the session).
    const callArb = fc.record({
      how: fc.constantFrom('scattered', 'range', 'single'),
      pages: fc.array(pageArb, { minLength: 1, maxLength: 12 }),
    });
    let round = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 30 }),
        fc.array(callArb, { maxLength: 8 }),
        fc.boolean(),
        async (pageCount, calls, withParent) => {
          round++;
          const vm = `scatter${round}`;
          // The parent (or, without one, the first writes) covers every page: nothing is left unwritten.
          const base = Buffer.concat(Array.from({ length: pageCount }, (_, i) => makePage(i % 4 === 0 ? 'zero' : 'random', 7000 + i)));
          const model = Buffer.from(base);
          if (withParent) {
            const ps = await store.beginSession({ vm });
            await ps.writePages(0, base);
            expected.set((await ps.commit()).id, Buffer.from(base));
          }
          const session = await store.beginSession({ vm, memoryBytes: pageCount * PAGE });
          if (!withParent)
            await session.writeScattered(
              Array.from({ length: pageCount }, (_, i) => pageCount - 1 - i),
              Buffer.concat(Array.from({ length: pageCount }, (_, i) => base.subarray((pageCount - 1 - i) * PAGE, (pageCount - i) * PAGE))),
            );
          let n = 0;
          for (const call of calls) {
            const indices = call.pages.map((p) => p.page % pageCount);
            const data = Buffer.concat(call.pages.map((p) => makePage(p.kind, p.seed * 97 + n++)));
            if (call.how === 'scattered') {
              await session.writeScattered(indices, data);
              indices.forEach((page, k) => data.copy(model, page * PAGE, k * PAGE, (k + 1) * PAGE));
            } else if (call.how === 'single') {
              for (let k = 0; k < indices.length; k++) await session.writePage(indices[k], data.subarray(k * PAGE, (k + 1) * PAGE));
              indices.forEach((page, k) => data.copy(model, page * PAGE, k * PAGE, (k + 1) * PAGE));
            } else {
              const first = indices[0];
              const count = Math.min(call.pages.length, pageCount - first);
              await session.writePages(first, data.subarray(0, count * PAGE));
              data.copy(model, first * PAGE, 0, count * PAGE);
            }
          }
          const rec = await session.commit();
          expectRecordMatches(rec, model);
          expect((await restoreToBuffer(store, rec)).equals(model)).toBe(true);
          expected.set(rec.id, Buffer.from(model));
        },
      ),
      { numRuns: NUM_RUNS, ...SHRINK_CAP },
    );
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });

  it('consecutive snapshots against their parent (delta manifests, full or dirty-page writes) restore exactly', async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    let chainN = 0;
    const stepArb = fc.record({
      mode: fc.constantFrom('full' as const, 'dirty' as const),
      lengthDelta: fc.integer({ min: -6 * PAGE, max: 6 * PAGE }),
      changes: fc.array(
        fc.record({ page: fc.nat(), kind: fc.constantFrom<PageKindSpec>('zero', 'random', 'compressible', 'sparse'), seed: fc.nat(50) }),
        { maxLength: 5 },
      ),
    });
    await fc.assert(
      fc.asyncProperty(imageArb, fc.array(stepArb, { minLength: 1, maxLength: 11 }), async (first, steps) => {
        const vm = `chain${chainN++}`;
        const s = await store.beginSession({ vm });
        await writeImage(s, first, [64], false);
        let prevRec = await s.commit();
        let prev = Buffer.from(first);
        expect(prevRec.parent).toBeUndefined();
        expected.set(prevRec.id, prev);
        for (const step of steps) {
          const length = Math.max(1, Math.min(60 * PAGE, prev.length + step.lengthDelta));
          const pageCount = Math.ceil(length / PAGE);
          // The model: the parent's bytes, resized (new bytes zero), then the changed pages.
          const model = Buffer.alloc(pageCount * PAGE);
          prev.copy(model, 0, 0, Math.min(prev.length, length));
          const changed = new Map<number, Buffer>();
          for (const c of step.changes) {
            const page = c.page % pageCount;
            const content = makePage(c.kind, c.seed);
            changed.set(page, content);
            content.copy(model, page * PAGE);
          }
          const image = model.subarray(0, length);
          const session = await store.beginSession({ vm }); // parent 'auto': the VM's latest
          if (step.mode === 'full') {
            await writeImage(session, image, [7, 64], false);
          } else {
            // Live-migration style: only dirty pages; pages past the parent's end are new (zero) unless written.
            for (const [page] of changed) await session.writePages(page, image.subarray(page * PAGE, Math.min(length, (page + 1) * PAGE)));
            const parentPages = pagesOf(prev);
            for (let p = parentPages - 1; p < pageCount; p++) {
              if (p >= 0 && !changed.has(p)) await session.writePages(p, image.subarray(p * PAGE, Math.min(length, (p + 1) * PAGE)));
            }
          }
          const rec = await session.commit({ byteLength: length, unwritten: 'parent' });
          expect(rec.parent).toBe(prevRec.id);
          expect(rec.baseDepth).toBeLessThanOrEqual(8);
          if (rec.base !== undefined) {
            expect(rec.base).toBe(prevRec.id);
            expect(rec.baseDepth).toBe(prevRec.baseDepth + 1);
          } else expect(rec.baseDepth).toBe(0);
          expectRecordMatches(rec, image);
          expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
          expected.set(rec.id, Buffer.from(image));
          prev = Buffer.from(image);
          prevRec = rec;
        }
      }),
      { numRuns: Math.max(10, Math.floor(NUM_RUNS / 2)), ...SHRINK_CAP },
    );
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });

  it('several sessions open at once, interleaved writes, committed or aborted in any order', async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    // A small pool of contents shared by all sessions: the same new chunk arrives from several at once.
    const pool = [randomPage(1), randomPage(2), compressiblePage(1), compressiblePage(2), sparsePage(3), Buffer.alloc(PAGE), randomPage(4)];
    const sessionArb = fc.record({
      pageCount: fc.integer({ min: 1, max: 24 }),
      cut: fc.integer({ min: 0, max: PAGE - 1 }),
      contents: fc.array(fc.nat(pool.length - 1), { minLength: 1, maxLength: 24 }),
      overwrites: fc.array(fc.record({ page: fc.nat(), content: fc.nat(pool.length - 1) }), { maxLength: 8 }),
      fate: fc.constantFrom('commit' as const, 'commit' as const, 'abort' as const),
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(sessionArb, { minLength: 2, maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 200 }),
        fc.func(fc.integer()),
        fc.boolean(),
        fc.boolean(),
        async (specs, schedule, commitKey, concurrentWrites, concurrentCommits) => {
          run++;
          const before = (await store.listSnapshots()).length;
          const plans = specs.map((spec, si) => {
            const byteLength = spec.pageCount * PAGE - spec.cut;
            const model = Buffer.alloc(spec.pageCount * PAGE);
            const ops: { page: number; data: Buffer }[] = [];
            const write = (page: number, content: Buffer) => {
              const data = content.subarray(0, Math.min(PAGE, byteLength - page * PAGE));
              model.fill(0, page * PAGE, (page + 1) * PAGE);
              data.copy(model, page * PAGE);
              ops.push({ page, data });
            };
            // Every page, in reverse order for odd sessions, then overwrites (last write wins).
            const order = Array.from({ length: spec.pageCount }, (_, i) => (si % 2 ? spec.pageCount - 1 - i : i));
            for (const p of order) write(p, pool[spec.contents[p % spec.contents.length]]);
            for (const o of spec.overwrites) write(o.page % spec.pageCount, pool[o.content]);
            return { spec, byteLength, model, ops, image: model.subarray(0, byteLength) };
          });
          const sessions = await Promise.all(plans.map((_, i) => store.beginSession({ vm: `multi${run}-${i}`, parent: 'none' })));
          if (concurrentWrites) {
            await Promise.all(
              plans.map(async (plan, i) => {
                for (const op of plan.ops) await sessions[i].writePages(op.page, op.data);
              }),
            );
          } else {
            const cursor = plans.map(() => 0);
            let remaining = plans.reduce((s, p) => s + p.ops.length, 0);
            let t = 0;
            while (remaining > 0) {
              let i = (schedule[t++ % Math.max(1, schedule.length)] ?? 0) % plans.length;
              while (cursor[i] >= plans[i].ops.length) i = (i + 1) % plans.length;
              const op = plans[i].ops[cursor[i]++];
              await sessions[i].writePages(op.page, op.data);
              remaining--;
            }
          }
          const finishOrder = plans.map((_, i) => i).sort((a, b) => commitKey(a) - commitKey(b));
          const finish = async (i: number) => {
            if (plans[i].spec.fate === 'abort') {
              await sessions[i].abort();
              return;
            }
            const rec = await sessions[i].commit({ byteLength: plans[i].byteLength });
            expectRecordMatches(rec, plans[i].image);
            expected.set(rec.id, Buffer.from(plans[i].image));
          };
          if (concurrentCommits) await Promise.all(finishOrder.map(finish));
          else for (const i of finishOrder) await finish(i);
          for (const [i, s] of sessions.entries()) {
            if (plans[i].spec.fate === 'abort') {
              expect(existsSync(store.manifestPath(s.id))).toBe(false);
              await expect(s.writePages(0, pool[0])).rejects.toMatchObject({ code: 'E_SESSION' });
            }
          }
          const listed = await store.listSnapshots();
          expect(listed.length).toBe(before + plans.filter((p) => p.spec.fate === 'commit').length);
          for (const rec of listed.slice(before)) expect((await restoreToBuffer(store, rec)).equals(expected.get(rec.id)!)).toBe(true);
        },
      ),
      { numRuns: NUM_RUNS, ...SHRINK_CAP },
    );
    expect(store.sessions.size).toBe(0);
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });

  it("unwritten pages follow 'parent' / 'zero' / 'error' (and the defaults)", async () => {
    const { dir, store: s0 } = await freshStore(workers);
    let store = s0;
    const expected = new Map<string, Buffer>();
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.option(imageArb, { nil: undefined }),
        fc.integer({ min: 1, max: 30 * PAGE }),
        fc.array(fc.record({ page: fc.nat(), seed: fc.nat(9) }), { maxLength: 12 }),
        fc.constantFrom('parent' as const, 'zero' as const, 'error' as const, undefined),
        async (parentImage, length, writes, mode) => {
          const vm = `gaps${run++}`;
          let parentRec: SnapshotRecord | undefined;
          if (parentImage) {
            const ps = await store.beginSession({ vm });
            await writeImage(ps, parentImage, [50], false);
            parentRec = await ps.commit();
            expected.set(parentRec.id, Buffer.from(parentImage));
          }
          const pageCount = Math.ceil(length / PAGE);
          const parentPadded = Buffer.alloc(pageCount * PAGE);
          parentImage?.copy(parentPadded, 0, 0, Math.min(parentImage.length, pageCount * PAGE));
          const written = new Map<number, Buffer>();
          const session = await store.beginSession({ vm, parent: parentRec ? parentRec.id : 'none' });
          for (const w of writes) {
            const page = w.page % pageCount;
            const content = randomPage(w.seed).subarray(0, Math.min(PAGE, length - page * PAGE));
            written.set(page, content);
            await session.writePages(page, content);
          }
          const effective = mode ?? (parentRec ? 'parent' : 'error');
          const unwritten = Array.from({ length: pageCount }, (_, p) => p).filter((p) => !written.has(p));
          const before = (await store.listSnapshots()).length;
          if (effective === 'error' && unwritten.length > 0) {
            const err = await session.commit({ byteLength: length, ...(mode ? { unwritten: mode } : {}) }).then(
              () => undefined,
              (e: unknown) => e,
            );
            expect(err).toBeInstanceOf(VnstoreError);
            expect((err as VnstoreError).code).toBe('E_SESSION');
            expect((err as VnstoreError).message).toContain(`${unwritten.length} page(s) of the image were never written`);
            expect((await store.listSnapshots()).length).toBe(before);
            expect(existsSync(store.manifestPath(session.id))).toBe(false);
            return;
          }
          const model = Buffer.alloc(pageCount * PAGE);
          for (let p = 0; p < pageCount; p++) {
            const w = written.get(p);
            if (w) w.copy(model, p * PAGE);
            else if (effective === 'parent' && parentImage) parentPadded.copy(model, p * PAGE, p * PAGE, (p + 1) * PAGE);
          }
          const image = model.subarray(0, length);
          const rec = await session.commit({ byteLength: length, ...(mode ? { unwritten: mode } : {}) });
          expectRecordMatches(rec, image);
          expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
          expected.set(rec.id, Buffer.from(image));
        },
      ),
      { numRuns: NUM_RUNS, ...SHRINK_CAP },
    );
    store = await verifyAfterReopen(store, dir, workers, expected);
    await store.close();
  });
});

describe('engine session rules (examples)', () => {
  // Format 1's manifests (32-byte digests); version 2's costs: manifest-v2.test.ts.
  it('an unchanged region of a consecutive snapshot costs next to nothing; delta chains stay ≤ 8 deep', async () => {
    const { dir, store: s0 } = await freshStore(0, 1);
    let store = s0;
    const expected = new Map<string, Buffer>();
    const pageCount = 256;
    let image = Buffer.concat(Array.from({ length: pageCount }, (_, i) => (i % 5 === 0 ? Buffer.alloc(PAGE) : randomPage(5000 + i))));
    const first = await store.beginSession({ vm: 'delta' });
    await first.writePages(0, image);
    let prev = await first.commit();
    expected.set(prev.id, image);
    expect(prev.base).toBeUndefined();
    const fullManifestBytes = prev.manifestBytes;
    expect(fullManifestBytes).toBeGreaterThan(200 * 32); // ~205 digests, self-contained
    const depths: number[] = [];
    for (let step = 1; step <= 10; step++) {
      image = Buffer.from(image);
      const page = (step * 37) % pageCount;
      randomPage(9000 + step).copy(image, page * PAGE);
      const s = await store.beginSession({ vm: 'delta' });
      await s.writePages(page, image.subarray(page * PAGE, (page + 1) * PAGE));
      const rec = await s.commit({ byteLength: image.length });
      expect(rec.parent).toBe(prev.id);
      expect(rec.newChunks).toBe(1);
      depths.push(rec.baseDepth);
      // A delta manifest is its header (ids, time, digests) plus three runs and one 32-byte digest.
      if (rec.base !== undefined) expect(rec.manifestBytes).toBeLessThan(Math.floor(fullManifestBytes / 10));
      expected.set(rec.id, image);
      prev = rec;
    }
    expect(depths).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 0, 1]);
    store = await verifyAfterReopen(store, dir, 0, expected);
    await store.close();
  });

  // Engine bug (reported): the bytes of an image's final page past its byteLength are kept in the
  // stored chunk. They change the whole-image digest and zero-page count of an image with the same
  // bytes, and they resurface in a child that grows the image with unwritten: 'parent'.
  it('bytes past the image length are not part of the image (final partial page)', async () => {
    const { dir, store: s0 } = await freshStore(0);
    let store = s0;
    const a = Buffer.concat([randomPage(11), randomPage(12)]);
    const s1 = await store.beginSession({ vm: 'tail' });
    await s1.writePages(0, a);
    const r1 = await s1.commit();
    // Shrink to 1 page + 100 bytes without writing anything: page 1 comes from the parent.
    const s2 = await store.beginSession({ vm: 'tail' });
    const r2 = await s2.commit({ byteLength: PAGE + 100, unwritten: 'parent' });
    const img2 = a.subarray(0, PAGE + 100);
    expect((await restoreToBuffer(store, r2)).equals(img2)).toBe(true);
    expect(r2.parent).toBe(r1.id);
    expect(r2.imageDigest).toBe(expectedImageDigest(img2));
    // Grow back to 2 pages, nothing written: the parent's image ends at PAGE + 100, the rest is new (zero).
    const s3 = await store.beginSession({ vm: 'tail' });
    const r3 = await s3.commit({ byteLength: 2 * PAGE, unwritten: 'parent' });
    const img3 = Buffer.concat([img2, Buffer.alloc(2 * PAGE - img2.length)]);
    expect((await restoreToBuffer(store, r3)).equals(img3)).toBe(true);
    expect(r3.imageDigest).toBe(expectedImageDigest(img3));
    // A full page written at the final index of a shorter image: only its first 100 bytes count.
    const page = Buffer.concat([Buffer.alloc(100), randomPage(13).subarray(100)]);
    const s4 = await store.beginSession({ vm: 'tail2', parent: 'none' });
    await s4.writePages(0, page);
    const r4 = await s4.commit({ byteLength: 100 });
    expect((await restoreToBuffer(store, r4)).equals(Buffer.alloc(100))).toBe(true);
    expect(r4.zeroPages).toBe(1);
    expect(r4.imageDigest).toBe(expectedImageDigest(Buffer.alloc(100)));
    store = await verifyAfterReopen(
      store,
      dir,
      0,
      new Map([
        [r1.id, a],
        [r2.id, img2],
        [r3.id, img3],
        [r4.id, Buffer.alloc(100)],
      ]),
    );
    await store.close();
  });

  it('rejects writes past memoryBytes, images shorter than their writes, and use after commit/abort', async () => {
    const { dir, store } = await freshStore(0);
    const s = await store.beginSession({ vm: 'rules', parent: 'none', memoryBytes: 3 * PAGE });
    await expect(s.writePages(3, randomPage(1))).rejects.toMatchObject({ code: 'E_SESSION' });
    await expect(s.writePages(2, Buffer.concat([randomPage(1), randomPage(2)]))).rejects.toMatchObject({ code: 'E_SESSION' });
    await expect(s.writePages(-1, randomPage(1))).rejects.toMatchObject({ code: 'E_USAGE' });
    await s.writePages(0, Buffer.concat([randomPage(1), randomPage(2), randomPage(3)]));
    await expect(s.commit({ byteLength: PAGE + 1 })).rejects.toMatchObject({ code: 'E_SESSION' });
    expect(await store.listSnapshots()).toEqual([]);
    await expect(s.writePages(0, randomPage(1))).rejects.toMatchObject({ code: 'E_SESSION' });

    const t = await store.beginSession({ vm: 'rules', parent: 'none' });
    await t.writePages(0, randomPage(7));
    await t.abort();
    await t.abort(); // idempotent
    await expect(t.commit()).rejects.toMatchObject({ code: 'E_SESSION' });
    expect(await store.listSnapshots()).toEqual([]);
    await expect(store.beginSession({ vm: 'bad name' })).rejects.toMatchObject({ code: 'E_USAGE' });
    await expect(store.beginSession({ vm: 'rules', parent: 'ffffffffffffffff' })).rejects.toMatchObject({ code: 'E_NOT_FOUND' });

    const u = await store.beginSession({ vm: 'rules', parent: 'none' });
    await u.writePages(0, randomPage(8));
    const rec = await u.commit();
    await expect(u.commit()).rejects.toMatchObject({ code: 'E_SESSION' });
    expect((await store.listSnapshots()).map((r) => r.id)).toEqual([rec.id]);
    expect(readdirSync(path.join(dir, 'manifests'))).toEqual([`${rec.id}.vnm`]);
    const reopened = await verifyAfterReopen(store, dir, 0, new Map([[rec.id, randomPage(8)]]));
    await reopened.close();
  });
});
