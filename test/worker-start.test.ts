/**
 * Page workers on demand (OpenOptions.startWorkers): without thread-pool jobs, a one-shot command
 * runs cheap work inline and starts its workers only for a session that compresses much; every mode
 * stores the same bytes, and a pool whose workers are busy lets the caller run jobs itself.
 * (test/thread-pool.test.ts covers on-demand with thread-pool jobs.)
 */
import { describe, expect, it } from 'vitest';
import { PagePool } from '../src/chunk/worker-pool.js';
import { PageStatus } from '../src/chunk/page-jobs.js';
import { Store } from '../src/store/store.js';
import { makePage, initStore, tempDirs, restoreToBuffer, PAGE } from './helpers/engine.js';

const tempDir = tempDirs();

async function freshStore(): Promise<string> {
  return initStore(tempDir('wstart'));
}

/** 64 pages of compressible content (all new to an empty store), then the same image with 2 pages changed. */
function images(): [Buffer, Buffer] {
  const first = Buffer.concat(Array.from({ length: 64 }, (_, i) => makePage('compressible', 1000 + i)));
  const second = Buffer.from(first);
  makePage('random', 77).copy(second, 5 * PAGE);
  makePage('random', 78).copy(second, 40 * PAGE);
  return [first, second];
}

async function put(store: Store, vm: string, image: Buffer) {
  const s = await store.beginSession({ vm });
  await s.writePages(0, image);
  return s.commit();
}

describe('page workers on demand', () => {
  it('start for a session without a parent, not for a consecutive one with few new pages; same bytes either way', async () => {
    const [first, second] = images();
    const dir = await freshStore();
    // A consecutive snapshot with few changes never starts them.
    let store = await Store.open(dir, { workers: 1, startWorkers: 'on-demand', threadPool: false });
    let r1;
    try {
      expect(store.pool.size).toBe(0);
      r1 = await put(store, 'a', first);
      expect(store.pool.size).toBe(1); // no parent: started at begin
    } finally {
      await store.close();
    }
    store = await Store.open(dir, { workers: 1, startWorkers: 'on-demand', threadPool: false });
    try {
      const r2 = await put(store, 'a', second);
      expect(r2.parent).toBe(r1.id);
      expect(store.pool.size).toBe(0); // 2 new pages of 64: inline all along
      expect((await restoreToBuffer(store, r1)).equals(first)).toBe(true);
      expect((await restoreToBuffer(store, r2)).equals(second)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('start when a block turns out to be mostly new pages, even with a parent', async () => {
    const [first] = images();
    const rewritten = Buffer.concat(Array.from({ length: 64 }, (_, i) => makePage('compressible', 5000 + i)));
    const dir = await freshStore();
    let store = await Store.open(dir, { workers: 1 });
    try {
      await put(store, 'b', first);
    } finally {
      await store.close();
    }
    store = await Store.open(dir, { workers: 1, startWorkers: 'on-demand', threadPool: false });
    try {
      const r = await put(store, 'b', rewritten);
      expect(r.parent).not.toBeNull();
      expect(store.pool.size).toBe(1);
      expect((await restoreToBuffer(store, r)).equals(rewritten)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('a pool whose workers hold their queue runs further jobs on the caller, with the same results', async () => {
    const pool = new PagePool(1);
    try {
      const page = makePage('compressible', 9);
      const jobs = Array.from({ length: 8 }, () => {
        const pages = new Uint8Array(4 * PAGE);
        for (let i = 0; i < 4; i++) pages.set(page, i * PAGE);
        return pool.hash({ kind: 'hash', pages, pageCount: 4 });
      });
      const results = await Promise.all(jobs);
      for (const r of results) {
        expect(Array.from(r.status)).toEqual([
          PageStatus.New,
          PageStatus.DuplicateInBlock,
          PageStatus.DuplicateInBlock,
          PageStatus.DuplicateInBlock,
        ]);
        expect(Buffer.from(r.digests.subarray(0, 32)).equals(Buffer.from(results[0].digests.subarray(0, 32)))).toBe(true);
        expect(Buffer.from(r.payload).equals(Buffer.from(results[0].payload))).toBe(true);
      }
    } finally {
      await pool.close();
    }
  });
});

describe('worker readiness', () => {
  it('runs jobs on the caller until the worker says it is ready, then hands them to the worker', async () => {
    const pool = new PagePool(1, { threadPool: false });
    try {
      const page = makePage('compressible', 11);
      const job = () => pool.hash({ kind: 'hash', pages: Uint8Array.from(page), pageCount: 1 });
      // The worker cannot have loaded in the same tick as its start: this job must not queue behind it.
      const early = await job();
      expect(pool.jobCounts).toEqual({ inline: 1, threadPool: 0, worker: 0 });
      await pool.whenReady();
      const late = await job();
      expect(pool.jobCounts).toEqual({ inline: 1, threadPool: 0, worker: 1 });
      expect(Buffer.from(late.digests).equals(Buffer.from(early.digests))).toBe(true);
      expect(Buffer.from(late.payload).equals(Buffer.from(early.payload))).toBe(true);
    } finally {
      await pool.close();
    }
  });
});
