/**
 * The server gathers received PAGES into whole page jobs (src/server/page-gather.ts): fewer jobs,
 * and the page table ends as if every frame had been written on arrival. An OFFER or ZERO touching
 * a gathered page, a PAGES frame of another session, and PREPARE write the gathered pages first.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { AgentConnection } from '../src/agent/connection.js';
import { PageGather, GATHER_BYTES } from '../src/server/page-gather.js';
import { SlabPool } from '../src/chunk/slab-pool.js';
import { BLOCK_PAGES } from '../src/store/job-sizes.js';
import type { Session } from '../src/store/session.js';
import { VnstoreError } from '../src/util/errors.js';
import { makePage, tempDirs } from './helpers/engine.js';
import { makeImage, PAGE, restoreRemote, startServer, TEST_TOKEN, type Running } from './helpers/server.js';

const tempDir = tempDirs();

/** Digests of `data`'s pages, packed. */
function digestsOf(data: Uint8Array): Uint8Array {
  const out = new Uint8Array((data.length / PAGE) * 32);
  for (let k = 0; k < data.length / PAGE; k++) out.set(blake3(Buffer.from(data.buffer, data.byteOffset + k * PAGE, PAGE)), k * 32);
  return out;
}

/** A server whose sessions record the page counts of their writeScattered calls. */
async function withCountingServer(fn: (r: Running, calls: number[]) => Promise<void>): Promise<void> {
  const r = await startServer(tempDir('gather'));
  const calls: number[] = [];
  const begin = r.store.beginSession.bind(r.store);
  r.store.beginSession = async (options) => {
    const s: Session = await begin(options);
    const write = s.writeScattered.bind(s);
    s.writeScattered = (indices, data, checked) => {
      calls.push(indices.length);
      return write(indices, data, checked);
    };
    return s;
  };
  try {
    await fn(r, calls);
  } finally {
    await r.stop();
  }
}

async function pages(conn: AgentConnection, sid: number, first: number, data: Buffer): Promise<void> {
  const n = data.length / PAGE;
  await conn.request({ t: 'pages', sid, indices: Uint32Array.from({ length: n }, (_, k) => first + k), digests: digestsOf(data), data });
}

describe('PageGather', () => {
  it('tracks the span it holds, fills to one job and lends its buffer back once emptied', () => {
    const pool = new SlabPool(GATHER_BYTES, 2);
    const g = new PageGather(pool);
    expect(g.touches(0, 1 << 30)).toBe(false);
    const data = Buffer.concat([makePage('random', 1), makePage('random', 2)]);
    g.add(Uint32Array.of(40, 7), digestsOf(data), data);
    expect(g.size).toBe(2);
    expect([g.touches(0, 6), g.touches(0, 7), g.touches(40, 50), g.touches(41, 50)]).toEqual([false, true, true, false]);
    expect(g.touchesAny(Uint32Array.of(3, 100))).toBe(false);
    expect(g.touchesAny(Uint32Array.of(3, 20))).toBe(true); // inside the span: written first, to be safe
    expect(g.touchesRanges(Uint32Array.of(0, 7, 41, 5))).toBe(false);
    expect(g.touchesRanges(Uint32Array.of(0, 8))).toBe(true);
    expect(g.fits(BLOCK_PAGES - 2)).toBe(true);
    expect(g.fits(BLOCK_PAGES - 1)).toBe(false);
    const taken = g.take();
    expect([...taken.indices]).toEqual([40, 7]);
    expect(Buffer.from(taken.data).equals(data)).toBe(true);
    expect(Buffer.from(taken.digests).equals(digestsOf(data))).toBe(true);
    expect(g.size).toBe(0);
    expect(g.touches(0, 1 << 30)).toBe(false);
    g.release();
    // The released buffer is the next one lent.
    expect(pool.take(GATHER_BYTES).buffer).toBe(taken.data.buffer);
  });
});

describe('server: received pages gathered into page jobs', () => {
  it('PAGES frames (256 pages at most) are gathered into jobs of up to 1024 pages, and the image restores exactly', () =>
    withCountingServer(async (r, calls) => {
      const c = await r.connect();
      const image = makeImage(2 * BLOCK_PAGES + 100, 5);
      const s = await c.beginSession({ vm: 'big', memoryBytes: image.length });
      await s.writePages(0, image);
      const rec = await s.commit();
      expect((await restoreRemote(c, rec.id)).equals(image)).toBe(true);
      expect(s.stats.pagesSent).toBeGreaterThan(BLOCK_PAGES);
      // Written in jobs of up to BLOCK_PAGES (frames of batches that arrive out of order may end one
      // early); before gathering, one call per PAGES frame (<= 256 pages): 7 or more here.
      expect(calls.reduce((a, b) => a + b, 0)).toBe(s.stats.pagesSent);
      expect(Math.max(...calls)).toBeLessThanOrEqual(BLOCK_PAGES);
      expect(calls.length).toBeLessThanOrEqual(Math.ceil(s.stats.pagesSent / BLOCK_PAGES) + 1);
    }));

  it('an OFFER or ZERO of a gathered page takes effect after it (the last write wins)', () =>
    withCountingServer(async (r) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      const known = makePage('random', 42);
      // A first snapshot stores `known`, so an OFFER of its digest is answered with nothing missing.
      await conn.request({ t: 'begin', sid: 1, vm: 'a', parent: 'none', memoryBytes: 16 * PAGE });
      await pages(conn, 1, 0, known);
      await conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' });
      await conn.request({ t: 'commit', sid: 1 });
      await conn.request({ t: 'begin', sid: 2, vm: 'b', parent: 'none', memoryBytes: 16 * PAGE });
      const sent = Buffer.concat([makePage('random', 1), makePage('random', 2), makePage('random', 3)]);
      await pages(conn, 2, 4, sent); // pages 4, 5, 6, gathered
      const offered = await conn.request({ t: 'offer', sid: 2, indices: Uint32Array.of(5), digests: blake3(known) });
      expect(offered.t === 'missing' && offered.positions.length).toBe(0);
      await conn.request({ t: 'zero', sid: 2, ranges: Uint32Array.of(6, 1) });
      const prepared = await conn.request({ t: 'prepare', sid: 2, byteLength: 16 * PAGE, unwritten: 'zero' });
      const id = prepared.t === 'result' ? (JSON.parse(prepared.json) as { id: string }).id : '';
      await conn.request({ t: 'commit', sid: 2 });
      await conn.close();
      const want = Buffer.alloc(16 * PAGE);
      sent.copy(want, 4 * PAGE, 0, PAGE);
      known.copy(want, 5 * PAGE);
      const c = await r.connect();
      expect((await restoreRemote(c, id)).equals(want)).toBe(true);
    }));

  it('a wrong digest on any page of a batch refuses the batch, also after a larger one (the check reuses its scratch)', () =>
    withCountingServer(async (r, calls) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      await conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none', memoryBytes: 300 * PAGE });
      const honest = makeImage(256, 21);
      await pages(conn, 1, 0, honest);
      const three = Buffer.concat([makePage('random', 31), makePage('random', 32), makePage('random', 33)]);
      const lies = digestsOf(three);
      lies.set(digestsOf(makePage('random', 34)), 2 * 32); // the third page's digest is another page's
      await expect(
        conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(256, 257, 258), digests: lies, data: three }),
      ).rejects.toMatchObject({ wire: 'E_DIGEST_MISMATCH', message: expect.stringContaining('page 258') as unknown });
      const prepared = await conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' });
      const id = prepared.t === 'result' ? (JSON.parse(prepared.json) as { id: string }).id : '';
      await conn.request({ t: 'commit', sid: 1 });
      await conn.close();
      expect(calls.reduce((a, b) => a + b, 0)).toBe(256); // nothing of the refused batch was written
      const want = Buffer.alloc(300 * PAGE);
      honest.copy(want);
      expect((await restoreRemote(await r.connect(), id)).equals(want)).toBe(true);
    }));

  it('a failed write of gathered pages fails every later PREPARE of the session: lost pages are never committed', () =>
    withCountingServer(async (r) => {
      const begin = r.store.beginSession.bind(r.store);
      r.store.beginSession = async (options) => {
        const s = await begin(options);
        s.writeScattered = () => Promise.reject(new VnstoreError('E_IO', 'the disk went away'));
        return s;
      };
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      await conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none', memoryBytes: 8 * PAGE });
      await pages(conn, 1, 0, makeImage(8, 41)); // taken: checked and gathered
      await expect(conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' })).rejects.toMatchObject({ message: 'the disk went away' });
      // The gathered pages are gone with the failed write: a second PREPARE must not commit without them.
      await expect(conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' })).rejects.toMatchObject({ message: 'the disk went away' });
      await conn.close();
      expect(await r.store.listSnapshots()).toEqual([]);
    }));

  it('two sessions of one connection interleaving PAGES: each gets exactly its own pages', () =>
    withCountingServer(async (r, calls) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      const images = [makeImage(600, 11), makeImage(600, 12)];
      for (const sid of [1, 2]) await conn.request({ t: 'begin', sid, vm: `vm${sid}`, parent: 'none', memoryBytes: 600 * PAGE });
      for (let first = 0; first < 600; first += 200)
        for (const sid of [1, 2]) await pages(conn, sid, first, images[sid - 1].subarray(first * PAGE, (first + 200) * PAGE));
      // Each PAGES frame of the other session wrote the gathered ones first: one connection, one gather.
      expect(calls.length).toBe(5);
      const ids: string[] = [];
      for (const sid of [1, 2]) {
        const prepared = await conn.request({ t: 'prepare', sid, unwritten: 'zero' });
        ids.push(prepared.t === 'result' ? (JSON.parse(prepared.json) as { id: string }).id : '');
        await conn.request({ t: 'commit', sid });
      }
      await conn.close();
      const c = await r.connect();
      for (const k of [0, 1]) expect((await restoreRemote(c, ids[k])).equals(images[k])).toBe(true);
    }));
});
