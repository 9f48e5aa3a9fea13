/**
 * A closed store leaves no descriptor of its packs open: page jobs cache pack descriptors per thread
 * (the calling thread's and each worker's), and those outlive a store in a long-lived process unless
 * closing the store closes them (they would keep removed packs' blocks and the store's file system busy).
 */
import { readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { makePage, initStore, tempDirs, restoreToBuffer } from './helpers/engine.js';

const tempDir = tempDirs();

/** Paths of this process's open descriptors under `dir`. */
function openUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(path.join('/proc/self/fd', fd));
    } catch {
      continue; // the directory's own descriptor, closed by now
    }
    if (target.startsWith(dir + path.sep)) out.push(target);
  }
  return out;
}

const image = Buffer.concat(Array.from({ length: 96 }, (_, i) => makePage(i % 3 === 0 ? 'random' : 'compressible', 500 + i)));

describe('closing a store', () => {
  for (const workers of [0, 1]) {
    it(`closes every cached pack descriptor after a restore (${workers} worker(s))`, async () => {
      const dir = await initStore(tempDir('fds'));
      let store = await Store.open(dir, { workers: 0 });
      const record = await (async () => {
        const s = await store.beginSession({ vm: 'a' });
        await s.writePages(0, image);
        return s.commit();
      })();
      await store.close();
      store = await Store.open(dir, { workers, threadPool: false });
      try {
        expect((await restoreToBuffer(store, record)).equals(image)).toBe(true);
        expect(openUnder(path.join(dir, 'packs')).length).toBeGreaterThan(0); // the cache held one
      } finally {
        await store.close();
      }
      expect(openUnder(dir)).toEqual([]);
    });
  }
});
