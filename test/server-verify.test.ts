/**
 * The server's check of received pages (Session.writeClaimed, in each PAGES frame's page job): every
 * page is hashed and compared with its entry's digest before anything of the frame is stored, and a
 * refused frame leaves no trace in the session.
 */
import { describe, expect, it } from 'vitest';
import { blake3 } from '@napi-rs/blake-hash';
import { AgentConnection } from '../src/agent/connection.js';
import type { Session } from '../src/store/session.js';
import { makePage, tempDirs } from './helpers/engine.js';
import { makeImage, PAGE, restoreRemote, startServer, TEST_TOKEN, type Running } from './helpers/server.js';

const tempDir = tempDirs();

/** Digests of `data`'s pages, packed. */
function digestsOf(data: Uint8Array): Uint8Array {
  const out = new Uint8Array((data.length / PAGE) * 32);
  for (let k = 0; k < data.length / PAGE; k++) out.set(blake3(Buffer.from(data.buffer, data.byteOffset + k * PAGE, PAGE)), k * 32);
  return out;
}

/** A server whose sessions are kept, to read their stats afterwards. */
async function withServerSessions(fn: (r: Running, sessions: Session[]) => Promise<void>): Promise<void> {
  const r = await startServer(tempDir('verify'));
  const sessions: Session[] = [];
  const begin = r.store.beginSession.bind(r.store);
  r.store.beginSession = async (options) => {
    const s: Session = await begin(options);
    sessions.push(s);
    return s;
  };
  try {
    await fn(r, sessions);
  } finally {
    await r.stop();
  }
}

async function pages(conn: AgentConnection, sid: number, first: number, data: Buffer): Promise<void> {
  const n = data.length / PAGE;
  await conn.request({ t: 'pages', sid, indices: Uint32Array.from({ length: n }, (_, k) => first + k), digests: digestsOf(data), data });
}

describe('server: received pages checked against their digests', () => {
  it('a wrong digest on any page of a batch refuses the whole batch: none of its pages is stored', () =>
    withServerSessions(async (r, sessions) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      await conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none', memoryBytes: 300 * PAGE });
      const honest = makeImage(256, 21);
      await pages(conn, 1, 0, honest);
      const three = Buffer.concat([makePage('random', 31), makePage('random', 32), makePage('random', 33)]);
      const truth = digestsOf(three);
      const lies = Uint8Array.from(truth);
      lies.set(digestsOf(makePage('random', 34)), 2 * 32); // the third page's digest is another page's
      await expect(
        conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(256, 257, 258), digests: lies, data: three }),
      ).rejects.toMatchObject({ wire: 'E_DIGEST_MISMATCH', message: expect.stringContaining('page 258') as unknown });
      const prepared = await conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' });
      const id = prepared.t === 'result' ? (JSON.parse(prepared.json) as { id: string }).id : '';
      await conn.request({ t: 'commit', sid: 1 });
      await conn.close();
      expect(sessions[0].stats.pagesWritten).toBe(256); // the refused batch is not counted
      // Not even its two honest pages: the batch is refused whole.
      const stored = await r.store.lookupExact([0, 1, 2].map((k) => truth.subarray(k * 32, (k + 1) * 32)));
      expect(stored).toEqual([undefined, undefined, undefined]);
      const want = Buffer.alloc(300 * PAGE);
      honest.copy(want);
      expect((await restoreRemote(await r.connect(), id)).equals(want)).toBe(true);
    }));

  it('a refused batch leaves no trace in the image: its pages keep their earlier content, the length is unchanged', () =>
    withServerSessions(async (r) => {
      const conn = await AgentConnection.connect({ server: r.address, token: TEST_TOKEN });
      // No memory size: the image ends at the furthest page taken.
      await conn.request({ t: 'begin', sid: 1, vm: 'v', parent: 'none' });
      const before = makeImage(4, 5);
      await pages(conn, 1, 0, before);
      const again = Buffer.concat([makePage('random', 41), makePage('random', 42)]);
      const lies = digestsOf(again);
      lies[0] ^= 1;
      // Page 2 again (it would replace its content) and page 9 (it would lengthen the image).
      await expect(conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(2, 9), digests: lies, data: again })).rejects.toMatchObject({
        wire: 'E_DIGEST_MISMATCH',
        message: expect.stringContaining('page 2:') as unknown,
      });
      // A zero page is claimed with the zero page's digest, and anything else is refused.
      const zero = Buffer.alloc(PAGE);
      await expect(
        conn.request({ t: 'pages', sid: 1, indices: Uint32Array.of(3), digests: digestsOf(makePage('random', 43)), data: zero }),
      ).rejects.toMatchObject({ wire: 'E_DIGEST_MISMATCH' });
      const prepared = await conn.request({ t: 'prepare', sid: 1, unwritten: 'zero' });
      const id = prepared.t === 'result' ? (JSON.parse(prepared.json) as { id: string }).id : '';
      await conn.request({ t: 'commit', sid: 1 });
      await conn.close();
      const restored = await restoreRemote(await r.connect(), id);
      expect(restored.length).toBe(4 * PAGE);
      expect(restored.equals(before)).toBe(true);
    }));
});
