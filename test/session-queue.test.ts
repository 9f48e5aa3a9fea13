/**
 * A session's two-step writes (Session.queueKnown, queueZeroRanges), which a server uses so that a
 * connection reads on while a write waits for its turn: an offer none of whose digests can be known
 * is answered at once, even behind queued blocks, and an answer made stale by those blocks only
 * costs the pages being sent again; everything else still applies in the order it was queued.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
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
      void known.written.then(() => (order += 'k'));
      void zero1.done.then(() => (order += 'Z'));
      expect([...(await known.written)]).toEqual([1, 1]);
      await zero1.done;
      expect(order).toBe('zkZ');
      const rec = await s.commit({ byteLength: 4 * PAGE, unwritten: 'zero' });
      const want = Buffer.alloc(4 * PAGE);
      b.copy(want, 2 * PAGE);
      expect((await restoreToBuffer(store, rec)).equals(want)).toBe(true);
    }));
});
