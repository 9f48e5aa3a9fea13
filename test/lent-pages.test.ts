/**
 * A server's PAGES frames are read into shared buffers with their page data on a page boundary
 * (pagesDataPlacement) and lent to their page job as they are (Session.writeClaimed's `lent`): the
 * pages are hashed and compressed where they were received, and the buffer is freed exactly once,
 * after the job, whatever happens to the write.
 */
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { Store } from '../src/store/store.js';
import { SlabPool } from '../src/chunk/slab-pool.js';
import { FrameDecoder } from '../src/protocol/frames.js';
import { decodeMessage, encodeMessage, pagesDataPlacement } from '../src/protocol/messages.js';
import { MAX_FRAME_BYTES, MAX_PAGES_PER_BATCH } from '../src/protocol/limits.js';
import { PAGE, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();

function digestsOf(data: Uint8Array): Uint8Array {
  const out = new Uint8Array((data.length / PAGE) * 32);
  for (let k = 0; k < data.length / PAGE; k++) out.set(blake3(Buffer.from(data.buffer, data.byteOffset + k * PAGE, PAGE)), k * 32);
  return out;
}

function pagesOf(n: number, seed: number): Buffer {
  return Buffer.concat(Array.from({ length: n }, (_, k) => makePage(k % 5 === 4 ? 'zero' : 'random', seed * 1000 + k)));
}

/** `bytes` copied into a SharedArrayBuffer at `offset`. */
function shared(bytes: Uint8Array, offset: number): Uint8Array {
  const view = new Uint8Array(new SharedArrayBuffer(offset + bytes.length), offset, bytes.length);
  Buffer.from(view.buffer, offset, bytes.length).set(bytes);
  return view;
}

describe('PAGES frames placed for their pages', () => {
  it('every PAGES frame length places its page data on a page boundary, within a frame buffer', () => {
    for (let n = 1; n <= MAX_PAGES_PER_BATCH; n++) {
      const length = 1 + 12 + 36 * n + PAGE * n;
      const at = pagesDataPlacement(length);
      expect(at).toBeGreaterThanOrEqual(0);
      expect(at).toBeLessThan(PAGE);
      expect((at + 13 + 36 * n) % PAGE).toBe(0);
      expect(at + length).toBeLessThanOrEqual(MAX_FRAME_BYTES + PAGE);
    }
    // Lengths no PAGES frame has: the body (after the type byte) starts on a word.
    for (const length of [1, 13, 14, 4112, 64 * 1024, MAX_FRAME_BYTES]) expect((pagesDataPlacement(length) + 1) % 4).toBe(0);
  });

  it('entries encode and decode the same at every alignment of their digests and frame (word and byte paths)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 300 }), fc.nat(), fc.nat(3), (n, seed, shift) => {
        const held = new Uint8Array(n * 32 + shift).map((_, i) => (i * 131 + seed) & 0xff);
        const digests = held.subarray(shift); // the encoder's word path when shift is 0
        const indices = Uint32Array.from({ length: n }, (_, k) => (k * 2654435761 + seed) >>> 0);
        const frame = encodeMessage({ t: 'offer', req: 1, sid: 2, indices, digests }).subarray(4); // type byte + body
        for (let at = 0; at < 4; at++) {
          const buf = Buffer.alloc(frame.length + at);
          frame.copy(buf, at);
          const m = decodeMessage({ type: buf[at], body: buf.subarray(at + 1) }); // the word path at 3
          if (m.t !== 'offer') throw new Error(`decoded as ${m.t}`);
          expect([...m.indices]).toEqual([...indices]);
          expect(Buffer.from(m.digests).equals(Buffer.from(digests))).toBe(true);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('decoded from shared, placed buffers: page data aligned, bytes exact, however the stream is cut', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.integer({ min: 1, max: 200_000 }), { minLength: 1, maxLength: 8 }),
        (counts, cuts) => {
          const messages = counts.map((n, i) => {
            const data = pagesOf(n, i + 1);
            return {
              t: 'pages' as const,
              req: i,
              sid: 7,
              indices: Uint32Array.from({ length: n }, (_, k) => k * 3),
              digests: digestsOf(data),
              data,
            };
          });
          const stream = Buffer.concat(messages.map((m) => encodeMessage(m)));
          const decoder = new FrameDecoder(MAX_FRAME_BYTES, true, new SlabPool(MAX_FRAME_BYTES + PAGE, 2, true), pagesDataPlacement);
          const got = [];
          let pos = 0;
          for (const cut of [...cuts, stream.length]) {
            const end = Math.min(stream.length, pos + cut);
            got.push(...decoder.push(stream.subarray(pos, end)));
            pos = end;
            if (pos === stream.length) break;
          }
          expect(got.length).toBe(messages.length);
          got.forEach((frame, i) => {
            const m = decodeMessage(frame);
            if (m.t !== 'pages') throw new Error(`frame ${i} decoded as ${m.t}`);
            expect(Buffer.from(m.data).equals(messages[i].data)).toBe(true);
            expect([...m.indices]).toEqual([...messages[i].indices]);
            if (frame.release) {
              // Pooled (64 KiB or more): in shared memory, the pages on a page boundary of the buffer.
              expect(m.data.buffer).toBeInstanceOf(SharedArrayBuffer);
              expect(m.data.byteOffset % PAGE).toBe(0);
            } else expect(frame.body.length).toBeLessThan(64 * 1024);
            frame.release?.();
          });
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('Session.writeClaimed with lent pages', () => {
  async function withSession(fn: (store: Store, session: Awaited<ReturnType<Store['beginSession']>>) => Promise<void>): Promise<void> {
    const dir = tempDir('lent');
    await Store.init(dir);
    const store = await Store.open(dir);
    try {
      await fn(store, await store.beginSession({ vm: 'v', parent: 'none', memoryBytes: 64 * PAGE }));
    } finally {
      await store.close();
    }
  }

  it('shared and aligned: read in place (no copy into a slab), freed once, before the check settles; exact', () =>
    withSession(async (store, session) => {
      const data = pagesOf(32, 3);
      const lentPages = shared(data, 2 * PAGE);
      const take = vi.spyOn(store.slabs, 'take');
      const events: string[] = [];
      const { checked } = await session.writeClaimed(
        Uint32Array.from({ length: 32 }, (_, k) => k),
        lentPages,
        digestsOf(data),
        () => events.push('released'),
      );
      // One slab taken: the job's payload. A copy of the pages would take a second.
      expect(take.mock.calls.map((c) => c[0])).toEqual([32 * PAGE]);
      expect(await checked).toBeUndefined();
      events.push('checked');
      expect(events).toEqual(['released', 'checked']);
      const rec = await session.commit({ unwritten: 'zero' });
      expect((await restoreToBuffer(store, rec)).equals(Buffer.concat([data, Buffer.alloc(32 * PAGE)]))).toBe(true);
    }));

  it('not shared, or not word-aligned: copied, and freed by the time the call returns', () =>
    withSession(async (store, session) => {
      const a = pagesOf(4, 5);
      const b = pagesOf(4, 6);
      let freed = 0;
      const take = vi.spyOn(store.slabs, 'take');
      const first = await session.writeClaimed(Uint32Array.of(0, 1, 2, 3), Uint8Array.from(a), digestsOf(a), () => freed++);
      expect(freed).toBe(1);
      const second = await session.writeClaimed(Uint32Array.of(4, 5, 6, 7), shared(b, 3), digestsOf(b), () => freed++);
      expect(freed).toBe(2);
      expect(take.mock.calls.map((c) => c[0])).toEqual([4 * PAGE, 4 * PAGE, 4 * PAGE, 4 * PAGE]); // pages and payload, twice
      expect(await first.checked).toBeUndefined();
      expect(await second.checked).toBeUndefined();
      const rec = await session.commit({ unwritten: 'zero' });
      expect((await restoreToBuffer(store, rec)).subarray(0, 8 * PAGE).equals(Buffer.concat([a, b]))).toBe(true);
    }));

  it('a refused page, a refused call and a failed session each free the lent pages exactly once', () =>
    withSession(async (store, session) => {
      const data = pagesOf(8, 7);
      const lies = digestsOf(data);
      lies[5 * 32] ^= 1;
      let freed = 0;
      const refused = await session.writeClaimed(
        Uint32Array.from({ length: 8 }, (_, k) => k),
        shared(data, 0),
        lies,
        () => freed++,
      );
      expect(await refused.checked).toBe(5);
      expect(freed).toBe(1);
      expect(await store.lookupExact([digestsOf(data).subarray(0, 32)])).toEqual([undefined]); // nothing of it stored
      // Digests of the wrong length: refused before anything is queued.
      await expect(
        session.writeClaimed(Uint32Array.of(0), shared(data.subarray(0, PAGE), 0), new Uint8Array(31), () => freed++),
      ).rejects.toMatchObject({
        code: 'E_USAGE',
      });
      expect(freed).toBe(2);
      await session.abort();
      await expect(
        session.writeClaimed(Uint32Array.of(0), shared(data.subarray(0, PAGE), 0), digestsOf(data.subarray(0, PAGE)), () => freed++),
      ).rejects.toThrow();
      expect(freed).toBe(3);
    }));
});
