/**
 * gc's index swap on format 3 takes the old packs out of the index and puts the copies in: at no
 * moment may a copied chunk be in no indexed pack, for a lookup by digest (a commit numbering its
 * pages, a session's exact lookup) nor for a locate by number (a restore, a session's parent reading
 * its pages' digests), which does not wait. The copies' TOCs are read before the swap, which happens
 * in one turn. Probes run at every TOC read and every pack read of the gc: a locate on the spot, a
 * lookup, and a read of a snapshot's page digests that the swap may overtake.
 */
import { describe, expect, it } from 'vitest';
import { forget, runGc } from '../src/maintenance/index.js';
import { Store } from '../src/store/store.js';
import { hashPage } from '../src/chunk/hash.js';
import { pageDigests } from '../src/store/read-v3.js';
import { makePage, initStore, tempDirs, restoreToBuffer } from './helpers/engine.js';

const tempDir = tempDirs();
const imageOf = (seed: number) => Buffer.concat(Array.from({ length: 48 }, (_, i) => makePage('compressible', seed + i)));

describe('a lookup during gc swapping packs (format 3)', () => {
  it('finds a copied chunk, before, during and after the swap', async () => {
    const dir = await initStore(tempDir('swap'), 3);
    const store = await Store.open(dir, { workers: 0, threadPool: false, reclaim: false });
    try {
      // One pack holding x's and y's chunks; then a snapshot of x alone, and the first one forgotten:
      // the pack is half dead, so gc copies x's chunks into a new pack.
      const [x, y] = [imageOf(100), imageOf(5000)];
      const both = await store.beginSession({ vm: 'a' });
      await both.writePages(0, Buffer.concat([x, y]));
      const first = await both.commit();
      const again = await store.beginSession({ vm: 'b' });
      await again.writePages(0, x);
      const ra = await again.commit();
      await forget(store, { ids: [first.id] });
      const kept = hashPage(x.subarray(0, 4096));
      const numbered = store.numbered!;
      const [before] = await numbered.find([kept]);
      expect(before).toBeDefined();

      const { numbers: raNumbers } = await store.loadNumberedPages(ra.id);
      // What a reader gets before the gc (the TOCs' prefixes; the cache may hold whole digests).
      const raPages = await pageDigests(store.packs, numbered, raNumbers, 'before');

      const probes: Promise<number | undefined>[] = [];
      const located: (number | undefined)[] = [];
      const digestReads: Promise<Buffer>[] = [];
      let probing = false; // the probes' own reads are not probed
      const probe = () => {
        if (probing) return;
        probing = true;
        located.push(numbered.locate(before!.number) && before!.number);
        probes.push(numbered.find([kept]).then(([f]) => f?.number));
        digestReads.push(pageDigests(store.packs, numbered, raNumbers, 'probe').then((t) => Buffer.from(t.digests)));
        probing = false;
      };
      const readToc = store.packs.readTocV3.bind(store.packs);
      store.packs.readTocV3 = (pack: number) => {
        probe();
        return readToc(pack);
      };
      const read = store.packs.read.bind(store.packs);
      store.packs.read = (pack: number, offset: number, length: number) => {
        if (digestReads.length < 64) probe();
        return read(pack, offset, length);
      };
      const gc = await runGc(store, { maxUnused: { bytes: 0 } });
      store.packs.readTocV3 = readToc;
      store.packs.read = read;
      expect(gc.result!.packsRewritten, JSON.stringify(gc)).toBeGreaterThan(0);
      expect(probes.length).toBeGreaterThan(1);
      expect(located).toEqual(probes.map(() => before!.number));
      expect(await Promise.all(probes)).toEqual(probes.map(() => before!.number));
      const digests = Buffer.from(raPages.digests);
      expect((await Promise.all(digestReads)).every((d) => d.equals(digests))).toBe(true);
      expect((await restoreToBuffer(store, ra)).equals(x)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it("reads a snapshot's page digests across a gc that swaps its packs out between two reads", async () => {
    const dir = await initStore(tempDir('swap-read'), 3);
    // Small packs: the snapshot's pages span several, read one after the other.
    const store = await Store.open(dir, { workers: 0, threadPool: false, reclaim: false, packTargetBytes: 16 * 1024 });
    try {
      // Incompressible pages, x's and y's interleaved: each pack is half x (kept), half y (forgotten).
      const pageOf = (seed: number) => makePage('random', seed);
      const x = Buffer.concat(Array.from({ length: 24 }, (_, i) => pageOf(100 + i)));
      const both = await store.beginSession({ vm: 'a' });
      await both.writePages(0, Buffer.concat(Array.from({ length: 48 }, (_, i) => pageOf(i % 2 ? 5000 + i : 100 + i / 2))));
      const first = await both.commit();
      const again = await store.beginSession({ vm: 'b' });
      await again.writePages(0, x);
      const ra = await again.commit();
      await forget(store, { ids: [first.id] });
      const numbered = store.numbered!;
      const { numbers: raNumbers } = await store.loadNumberedPages(ra.id);
      // What a reader gets before the gc (the TOCs' prefixes; the cache may hold whole digests).
      const raPages = await pageDigests(store.packs, numbered, raNumbers, 'before');
      const packsBefore = numbered.index.packIds;
      // The first read of the digests waits for a whole gc, so the next ones come after its swap.
      const read = store.packs.read.bind(store.packs);
      let gc: ReturnType<typeof runGc> | undefined;
      store.packs.read = async (pack: number, offset: number, length: number) => {
        const bytes = await read(pack, offset, length);
        if (!gc) await (gc = runGc(store, { maxUnused: { bytes: 0 } }));
        return bytes;
      };
      const digests = await pageDigests(store.packs, numbered, raNumbers, 'probe');
      store.packs.read = read;
      const report = await gc!;
      expect(report.result!.packsRewritten + report.result!.packsDropped, JSON.stringify(report)).toBeGreaterThan(1);
      expect(numbered.index.packIds.filter((p) => packsBefore.includes(p))).toEqual([]); // every pack was swapped
      expect(Buffer.from(digests.digests).equals(Buffer.from(raPages.digests))).toBe(true);
      expect((await restoreToBuffer(store, ra)).equals(x)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
