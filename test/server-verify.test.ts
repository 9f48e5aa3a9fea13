/**
 * The server's check of received pages (src/server/connection.ts, verifyPages): every page of a
 * PAGES frame is hashed and compared with its entry's digest before anything of the frame is written.
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

/** A server whose sessions record the page counts of their writeScattered calls. */
async function withCountingServer(fn: (r: Running, calls: number[]) => Promise<void>): Promise<void> {
  const r = await startServer(tempDir('verify'));
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

describe('server: received pages checked against their digests', () => {
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
});
