/**
 * Shared slabs (src/chunk/slab-pool.ts): a store's slabs are SharedArrayBuffers that a page worker
 * reads and fills in place, so no ArrayBuffer is transferred per job (transfers drove the server's
 * main thread into repeated mark-compacts). The worker's results must come back on the very views the
 * caller lent, so that the pool reuses its slabs, and carry the bytes a job run on the caller gives.
 */
import { describe, expect, it } from 'vitest';
import { SlabPool, slabTransfer } from '../src/chunk/slab-pool.js';
import { runHashJob, type HashJob } from '../src/chunk/page-jobs.js';
import { PagePool } from '../src/chunk/worker-pool.js';
import { PAGE_SIZE } from '../src/format/pages.js';
import { makePage } from './helpers/engine.js';

describe('a shared SlabPool', () => {
  it('lends views of SharedArrayBuffer slabs, reuses what is given back, and transfers nothing', () => {
    const pool = new SlabPool(4 * PAGE_SIZE, 2, true);
    const a = pool.take(PAGE_SIZE);
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(a.buffer.byteLength).toBe(4 * PAGE_SIZE);
    expect(slabTransfer(a)).toEqual([]);
    pool.give(a);
    pool.give(a); // twice: still one entry
    const b = pool.take(2 * PAGE_SIZE);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.take(1).buffer).not.toBe(a.buffer);
    expect(new SlabPool(64, 1).take(8).buffer).toBeInstanceOf(ArrayBuffer); // not shared unless asked
  });
});

describe('a page worker on shared slabs', () => {
  it("fills the caller's slabs in place and hands the lent views back, with the bytes of a job run inline", async () => {
    const slabs = new SlabPool(8 * PAGE_SIZE, 4, true);
    const pool = new PagePool(1, { threadPool: false });
    try {
      await pool.whenReady();
      const kinds = ['compressible', 'random', 'zero', 'compressible', 'sparse', 'random'] as const;
      const n = kinds.length;
      const image = new Uint8Array(n * PAGE_SIZE);
      kinds.forEach((k, i) => image.set(makePage(k, i), i * PAGE_SIZE));
      const job = (pages: Uint8Array, payloadSlab: Uint8Array): HashJob => ({ kind: 'hash', pages, pageCount: n, payloadSlab });
      const want = runHashJob(job(Uint8Array.from(image), new Uint8Array(n * PAGE_SIZE)));

      const pages = slabs.take(n * PAGE_SIZE);
      pages.set(image);
      const payloadSlab = slabs.take(n * PAGE_SIZE);
      const running = pool.hash(job(pages, payloadSlab));
      // Lent, not transferred: the caller's views stay attached while the worker has the job.
      expect(pages.byteLength).toBe(n * PAGE_SIZE);
      expect(payloadSlab.byteLength).toBe(n * PAGE_SIZE);
      const r = await running;
      expect(pool.jobCounts).toEqual({ inline: 0, threadPool: 0, worker: 1 });

      expect(r.pages).toBe(pages);
      expect(r.slab).toBe(payloadSlab);
      expect(r.payload.buffer).toBe(payloadSlab.buffer);
      expect(r.payload.length).toBeGreaterThan(0);
      expect(Buffer.from(r.payload).equals(Buffer.from(want.payload))).toBe(true);
      expect(Buffer.from(r.digests).equals(Buffer.from(want.digests))).toBe(true);
      expect(Array.from(r.status)).toEqual(Array.from(want.status));
      expect(Array.from(r.lengths)).toEqual(Array.from(want.lengths));

      // Given back, the same slabs serve the next jobs.
      slabs.give(r.slab);
      slabs.give(r.pages);
      const again = [slabs.take(PAGE_SIZE).buffer, slabs.take(PAGE_SIZE).buffer];
      expect(again).toContain(pages.buffer);
      expect(again).toContain(payloadSlab.buffer);
    } finally {
      await pool.close();
    }
  });
});
