/**
 * A hash job that finds its pages already stored, then waits (a slow worker) while a whole gc runs
 * and removes those chunks (nothing referenced them: their snapshot was forgotten, and the block was
 * not applied yet, so gc's mark could not see it): the session must not name the removed chunks.
 * Its apply confirms them through the exact index when a gc ran since the job began, finds them
 * absent, and stores them again; the snapshot restores exactly, on both store formats.
 */
import { describe, expect, it } from 'vitest';
import { forget, runGc } from '../src/maintenance/index.js';
import { Store } from '../src/store/store.js';
import { makePage, initStore, tempDirs, restoreToBuffer } from './helpers/engine.js';

const tempDir = tempDirs();

const image = Buffer.concat(Array.from({ length: 64 }, (_, i) => makePage(i % 2 === 0 ? 'compressible' : 'random', 9000 + i)));

describe('a hash job that outlives a gc', () => {
  it.each([1, 3])('store format %i: pages found before a gc that removed their chunks are stored again', async (format) => {
    const dir = await initStore(tempDir('slowhash'), format);
    const store = await Store.open(dir, { workers: 0, threadPool: false, reclaim: false });
    try {
      const first = await store.beginSession({ vm: 'a' });
      await first.writePages(0, image);
      const a = await first.commit();
      expect((await forget(store, { ids: [a.id] })).forgotten.length).toBe(1);

      // Hash jobs finish only when the gate opens: the gc below runs start to end meanwhile.
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const hash = store.pool.hash.bind(store.pool);
      store.pool.hash = (job) => hash(job).then(async (r) => (await gate, r));

      const second = await store.beginSession({ vm: 'b' });
      await second.writePages(0, image);
      const gc = await runGc(store, { maxUnused: { bytes: 0 } });
      expect(gc.result!.chunksRemoved).toBeGreaterThan(0); // the forgotten snapshot's chunks went
      open();
      const b = await second.commit();
      expect((await restoreToBuffer(store, b)).equals(image)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
