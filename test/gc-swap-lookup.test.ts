/**
 * gc's index swap on format 3 removes the old packs, then reads each copy's TOC before it joins the
 * index: a lookup in between (a commit numbering its pages, a session's exact lookup) must not find a
 * copied chunk absent. Lookups wait for the swap. Probes are started at every TOC read of the gc,
 * the one inside the swap included, and each must find the kept chunk.
 */
import { describe, expect, it } from 'vitest';
import { forget, runGc } from '../src/maintenance/index.js';
import { Store } from '../src/store/store.js';
import { hashPage } from '../src/chunk/hash.js';
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

      const probes: Promise<number | undefined>[] = [];
      const readToc = store.packs.readTocV3.bind(store.packs);
      store.packs.readTocV3 = (pack: number) => {
        probes.push(numbered.find([kept]).then(([f]) => f?.number));
        return readToc(pack);
      };
      const gc = await runGc(store, { maxUnused: { bytes: 0 } });
      expect(gc.result!.packsRewritten, JSON.stringify(gc)).toBeGreaterThan(0);
      expect(probes.length).toBeGreaterThan(1);
      expect(await Promise.all(probes)).toEqual(probes.map(() => before!.number));
      expect((await restoreToBuffer(store, ra)).equals(x)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
