/**
 * A format-3 commit numbers the pages its session stored from the numbers it noted when storing them
 * (NumberedChunks.numberPages' hints), and checks each hint against the chunk's digest: a page whose
 * content changed after it was stored (a later write by digest, a zero range) gets its real number.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { Store } from '../src/store/store.js';
import { initStore, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();
const PAGE = 4096;

describe('number hints at a format-3 commit', () => {
  it('are taken for pages stored and left so, and checked for pages written again after', async () => {
    const dir = await initStore(tempDir('hints'), 3);
    const store = await Store.open(dir, { workers: 0 });
    try {
      // Y is stored by another VM first, so a later write of Y by digest is known.
      const y = makePage('random', 99);
      const other = await store.beginSession({ vm: 'other', parent: 'none', memoryBytes: PAGE });
      await other.writePages(0, y);
      await other.commit({ byteLength: PAGE, unwritten: 'zero' });

      const s = await store.beginSession({ vm: 'vm', parent: 'none', memoryBytes: 6 * PAGE });
      const pages = [0, 1, 2, 3, 4, 5].map((k) => makePage(k % 2 ? 'compressible' : 'random', k + 1));
      await s.writePages(0, Buffer.concat(pages)); // six new chunks, each with a hint
      await s.drain();
      // Page 1 becomes Y by digest (its hint still names the chunk it was), page 3 zero, page 5 is
      // written again with page 0's content (a duplicate: no new chunk, the hint is stale).
      expect([...(await s.writeKnown(Uint32Array.of(1), blake3(y)))]).toEqual([1]);
      await s.writeZeroRanges(Uint32Array.of(3, 1));
      await s.writeScattered([5], pages[0]);
      const rec = await s.commit({ byteLength: 6 * PAGE, unwritten: 'zero' });
      const want = Buffer.concat([pages[0], y, pages[2], Buffer.alloc(PAGE), pages[4], pages[0]]);
      expect((await restoreToBuffer(store, rec)).equals(want)).toBe(true);
    } finally {
      await store.close();
    }
    // A fresh process reads the same image from the manifest alone.
    const again = await Store.open(dir, { workers: 0 });
    try {
      const rec = (await again.listSnapshots()).find((r) => r.vm === 'vm')!;
      const bytes = await restoreToBuffer(again, rec);
      expect(bytes.subarray(PAGE, 2 * PAGE).equals(makePage('random', 99))).toBe(true);
      expect(bytes.subarray(5 * PAGE).equals(bytes.subarray(0, PAGE))).toBe(true);
    } finally {
      await again.close();
    }
  });
});
