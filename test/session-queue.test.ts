/**
 * A session's two-step writes (Session.queueKnown, queueZeroRanges), which a server uses so that a
 * connection reads on while a write waits for its turn: an offer is answered once it is decided
 * which digests the store holds, even behind queued blocks, and an answer made stale by those
 * blocks only costs the pages being sent again; the pages are still set in the order the writes
 * were queued, and a chunk decided present stays live for a gc that runs before its page is set.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { forget, runGc } from '../src/maintenance/index.js';
import { Store } from '../src/store/store.js';
import { initStore, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();
const PAGE = 4096;

async function withStore(fn: (store: Store) => Promise<void>): Promise<void> {
  const store = await Store.open(await initStore(tempDir('queue')), { workers: 0 });
  try {
    await fn(store);
  } finally {
    await store.close();
  }
}

describe('Session.queueKnown and queueZeroRanges', () => {
  it('answer an offer of unknown digests at once behind queued blocks; the stale answer costs a resend, not a page', () =>
    withStore(async (store) => {
      const s = await store.beginSession({ vm: 'vm', parent: 'none', memoryBytes: 8 * PAGE });
      const x = makePage('random', 1);
      const block = Buffer.concat([x, makePage('random', 2), makePage('compressible', 3)]);
      await s.writePages(0, block); // queued: its page job runs on the thread pool
      let applied = false;
      const drained = s.drain().then(() => (applied = true));
      // Page 5 offered with page 0's content: nothing stored it yet, so it is absent, answered now.
      const { written } = await s.queueKnown(Uint32Array.of(5), blake3(x));
      expect([...(await written)]).toEqual([0]);
      expect(applied).toBe(false);
      await drained;
      // The agent then sends page 5's bytes: deduplicated against page 0, stored once.
      await s.writeScattered([5], x);
      const rec = await s.commit({ byteLength: 8 * PAGE, unwritten: 'zero' });
      const want = Buffer.alloc(8 * PAGE);
      block.copy(want);
      x.copy(want, 5 * PAGE);
      expect((await restoreToBuffer(store, rec)).equals(want)).toBe(true);
      expect(s.stats.newChunks).toBe(3);
    }));

  it('apply knowable offers and zero ranges in the order they were queued, after the blocks before them', () =>
    withStore(async (store) => {
      const first = await store.beginSession({ vm: 'vm', parent: 'none', memoryBytes: 4 * PAGE });
      const a = makePage('random', 11);
      const b = makePage('random', 12);
      await first.writePages(0, Buffer.concat([a, b]));
      await first.commit({ byteLength: 4 * PAGE, unwritten: 'zero' });

      const s = await store.beginSession({ vm: 'other', parent: 'none', memoryBytes: 4 * PAGE });
      const c = makePage('compressible', 13);
      // Page 2 gets c, then a zero range over it, then b by digest; page 1 gets a by digest, then zero.
      await s.writePages(2, c);
      const zero2 = await s.queueZeroRanges(Uint32Array.of(1, 2));
      const known = await s.queueKnown(Uint32Array.of(2, 3), Buffer.concat([blake3(b), blake3(a)]));
      const zero1 = await s.queueZeroRanges(Uint32Array.of(3, 1));
      let order = '';
      void zero2.done.then(() => (order += 'z'));
      void zero1.done.then(() => (order += 'Z'));
      // Decided without waiting for the writes before it; set between them (the image below).
      expect([...(await known.written)]).toEqual([1, 1]);
      await zero1.done;
      expect(order).toBe('zZ');
      const rec = await s.commit({ byteLength: 4 * PAGE, unwritten: 'zero' });
      const want = Buffer.alloc(4 * PAGE);
      b.copy(want, 2 * PAGE);
      expect((await restoreToBuffer(store, rec)).equals(want)).toBe(true);
    }));
});

describe('Session.queueKnown decides at once, sets in order', () => {
  it('answers an offer of stored chunks while the block queued before it waits for its page job', () =>
    withStore(async (store) => {
      const first = await store.beginSession({ vm: 'a', parent: 'none', memoryBytes: 2 * PAGE });
      const a = makePage('random', 21);
      await first.writePages(0, Buffer.concat([a, makePage('random', 22)]));
      await first.commit();

      // Hash jobs finish only when the gate opens, so the block below is not applied before it.
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const hash = store.pool.hash.bind(store.pool);
      store.pool.hash = (job) => hash(job).then(async (r) => (await gate, r));
      const s = await store.beginSession({ vm: 'b', parent: 'none', memoryBytes: 4 * PAGE });
      const c = makePage('compressible', 23);
      await s.writePages(0, Buffer.concat([c, c]));
      let applied = false;
      const drained = s.drain().then(() => (applied = true));
      // Page 1 by digest, after the block that also writes it: a's digest is in the store.
      const { written } = await s.queueKnown(Uint32Array.of(1, 3), Buffer.concat([blake3(a), blake3(makePage('random', 24))]));
      expect([...(await written)]).toEqual([1, 0]);
      expect(applied).toBe(false);
      open();
      await drained;
      const rec = await s.commit({ byteLength: 4 * PAGE, unwritten: 'zero' });
      // The offer was set after the block: page 1 is a, not c.
      expect((await restoreToBuffer(store, rec)).equals(Buffer.concat([c, a, Buffer.alloc(2 * PAGE)]))).toBe(true);
    }));

  it.each([1, 3])('store format %i: a chunk decided present before a gc, its page set after it, is kept', async (format) => {
    const dir = await initStore(tempDir('decided'), format);
    const store = await Store.open(dir, { workers: 0, threadPool: false, reclaim: false });
    let open = () => {};
    try {
      const kept = Array.from({ length: 8 }, (_, i) => makePage(i % 2 === 0 ? 'compressible' : 'random', 300 + i));
      const doomed = Array.from({ length: 8 }, (_, i) => makePage('random', 400 + i));
      const first = await store.beginSession({ vm: 'a', parent: 'none' });
      await first.writePages(0, Buffer.concat(kept));
      const ra = await first.commit();
      const other = await store.beginSession({ vm: 'c', parent: 'none' });
      await other.writePages(0, Buffer.concat(doomed));
      const rc = await other.commit();
      // Nothing references `kept` or `doomed` any more: a gc would remove both.
      expect((await forget(store, { ids: [ra.id, rc.id] })).forgotten.length).toBe(2);

      const gate = new Promise<void>((resolve) => (open = resolve));
      const hash = store.pool.hash.bind(store.pool);
      store.pool.hash = (job) => hash(job).then(async (r) => (await gate, r));
      const s = await store.beginSession({ vm: 'b', parent: 'none', memoryBytes: 16 * PAGE });
      const head = makePage('compressible', 500);
      await s.writePages(0, head); // its apply waits at the gate: so does the offer's, queued after it
      const indices = Uint32Array.from({ length: 8 }, (_, i) => 8 + i);
      const { written } = await s.queueKnown(indices, Buffer.concat(kept.map((p) => blake3(p))));
      expect([...(await written)]).toEqual(Array(8).fill(1));
      const gc = await runGc(store, { maxUnused: { bytes: 0 } });
      expect(gc.result!.chunksRemoved).toBe(doomed.length); // the doomed went; the decided stayed
      open();
      const rec = await s.commit({ byteLength: 16 * PAGE, unwritten: 'zero' });
      const want = Buffer.concat([head, Buffer.alloc(7 * PAGE), ...kept]);
      expect((await restoreToBuffer(store, rec)).equals(want)).toBe(true);
    } finally {
      open(); // a failed expectation must not leave the session's apply waiting at the gate
      await store.close();
    }
  });
});
