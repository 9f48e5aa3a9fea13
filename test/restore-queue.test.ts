/**
 * A store opened with a deeper restore queue (what `vnstore serve` passes) gives a streaming
 * restore's windows to its page worker instead of restoring some on the calling thread: a server's
 * main thread has sockets to serve, and restoring windows there made it the bottleneck of a restore
 * while the worker idled (bench/RESULTS.md, session 13). The bytes are the same either way.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { RESTORE_WINDOWS_IN_FLIGHT, SLAB_PAGES, STREAM_WINDOW_PAGES, WINDOW_PAGES } from '../src/store/job-sizes.js';
import { restoreSnapshot } from '../src/store/restore.js';
import { PAGE_SIZE } from '../src/format/pages.js';
import { initStore, makePage, removeDir, restoreToBuffer, tempDirs } from './helpers/engine.js';

const temp = tempDirs();
const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

/** An image of `windows` restore windows of mixed pages, stored in a fresh format-3 store; restored with `restoreQueue`. */
async function restoreWith(restoreQueue: number | undefined, windows: number): Promise<{ inline: number; worker: number; same: boolean }> {
  const root = temp('restore-queue');
  roots.push(root);
  const dir = await initStore(root, 3);
  const image = Buffer.alloc(windows * WINDOW_PAGES * PAGE_SIZE);
  const kinds = ['random', 'compressible', 'zero', 'sparse'] as const;
  for (let p = 0; p < windows * WINDOW_PAGES; p++) image.set(makePage(kinds[p % kinds.length], p), p * PAGE_SIZE);
  const store = await Store.open(dir, { workers: 1, restoreQueue });
  try {
    await store.pool.whenReady();
    const s = await store.beginSession({ vm: 'vm', parent: 'none' });
    await s.writePages(0, image);
    const record = await s.commit({ byteLength: image.length, unwritten: 'zero' });
    const before = { ...store.pool.jobCounts };
    const restored = await restoreToBuffer(store, record);
    return {
      inline: store.pool.jobCounts.inline - before.inline,
      worker: store.pool.jobCounts.worker - before.worker,
      same: restored.equals(image),
    };
  } finally {
    await store.close();
  }
}

describe('restore windows and the page worker', () => {
  it('with the default queue, the calling thread restores some windows itself', async () => {
    const r = await restoreWith(undefined, 12);
    expect(r.same).toBe(true);
    expect(r.inline).toBeGreaterThan(0);
    expect(r.inline + r.worker).toBe(12);
  });

  it("with the server's queue, the worker restores every window, byte for byte the same", async () => {
    const r = await restoreWith(RESTORE_WINDOWS_IN_FLIGHT, 12);
    expect(r.same).toBe(true);
    expect(r).toEqual({ inline: 0, worker: 12, same: true });
  });
});

describe("a restore sink's window size (a server's streaming restore asks for 512 pages)", () => {
  it.each([STREAM_WINDOW_PAGES, 3, 2 * SLAB_PAGES])(
    'windowPages %i: windows of that many pages, at most a slab, the bytes exact',
    async (windowPages) => {
      const root = temp('restore-window');
      roots.push(root);
      const dir = await initStore(root, 3);
      const pages = 2 * STREAM_WINDOW_PAGES + 37;
      const image = Buffer.alloc(pages * PAGE_SIZE + 1000); // a short last page
      const kinds = ['random', 'compressible', 'zero', 'sparse'] as const;
      for (let p = 0; p <= pages; p++) makePage(kinds[p % kinds.length], 7000 + p).copy(image, p * PAGE_SIZE);
      const store = await Store.open(dir, { workers: 1 });
      try {
        const s = await store.beginSession({ vm: 'vm', parent: 'none' });
        await s.writePages(0, image);
        const record = await s.commit({ byteLength: image.length, unwritten: 'zero' });
        const sizes: number[] = [];
        const parts: Buffer[] = [];
        await restoreSnapshot(store, record, {
          windowPages,
          write: (chunk) => {
            sizes.push(chunk.length);
            parts.push(Buffer.from(chunk));
          },
        });
        expect(Buffer.concat(parts).equals(image)).toBe(true);
        const whole = Math.min(windowPages, SLAB_PAGES) * PAGE_SIZE;
        expect(sizes.slice(0, -1).every((n) => n === whole)).toBe(true);
        expect(sizes.length).toBe(Math.ceil(image.length / whole));
      } finally {
        await store.close();
      }
    },
  );
});
