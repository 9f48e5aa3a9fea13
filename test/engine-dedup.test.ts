// Dedup decisions against the chunk table are hints checked exactly: a fingerprint that points at a
// different chunk must never make a page "known", and a page equal to a stored chunk is not stored
// again (the worker reads the stored copy and compares bytes).
import { afterAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { Store } from '../src/store/store.js';
import type { ChunkTable } from '../src/index/chunk-table.js';
import { hashPage } from '../src/chunk/hash.js';
import { compressiblePage, makeTempDir, removeDir, restoreToBuffer } from './helpers/engine.js';

const root = makeTempDir('vnstore-dedup-');
afterAll(() => removeDir(root));

describe.each([0, 2])('dedup against the chunk table (workers: %i)', (workers) => {
  it('a fingerprint pointing at another chunk is not trusted; a byte-equal stored chunk is reused', async () => {
    const dir = path.join(root, `store-${workers}`);
    await Store.init(dir);
    let store = await Store.open(dir, { workers });
    try {
      const a = Buffer.concat([compressiblePage(1), compressiblePage(2), compressiblePage(3)]);
      const s1 = await store.beginSession({ vm: 'a', parent: 'none' });
      await s1.writePages(0, a);
      const r1 = await s1.commit();
      expect(r1.newChunks).toBe(3);

      // Forge a table entry: the fingerprint of a page the store has never seen now points at page 0's chunk.
      const intruder = compressiblePage(4);
      const [loc0] = await store.lookupExact([hashPage(a.subarray(0, 4096))]);
      (store.table as ChunkTable).insert(hashPage(intruder), loc0!); // forged: past the read-only view

      // VM b: the intruder (must be stored, never deduplicated to page 0) and a copy of page 1 (must not be stored).
      const b = Buffer.concat([intruder, a.subarray(4096, 8192)]);
      const s2 = await store.beginSession({ vm: 'b', parent: 'none' });
      await s2.writePages(0, b);
      const r2 = await s2.commit();
      expect(r2.newChunks).toBe(1);
      expect((await restoreToBuffer(store, r2)).equals(b)).toBe(true);
      expect((await store.lookupExact([hashPage(intruder)]))[0]).toBeDefined();

      await store.close();
      store = await Store.open(dir, { workers });
      expect((await restoreToBuffer(store, r1)).equals(a)).toBe(true);
      expect((await restoreToBuffer(store, r2)).equals(b)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
