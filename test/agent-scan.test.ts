/**
 * What the agent offers (issue 12): every page's BLAKE3 digest at its page index, and zero pages as
 * exact ranges, whichever way the pages were scanned: contiguous, 8-byte-aligned batches on the
 * libuv thread pool (one zero-test-and-hash pass per batch, several batches at once), unaligned
 * views and scattered writes with repeated indices on the main thread. Checked against a scripted
 * server that records OFFER and ZERO frames.
 */
import net from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { hashPage, pageScanner } from '../src/chunk/hash.js';
import { scriptedServer } from './helpers/scripted-server.js';
import { MAX_FRAME_BYTES, MAX_PAGES_PER_BATCH, MAX_REPLY_FRAME_BYTES, pagesPerBatch } from '../src/protocol/limits.js';

const PAGE = 4096;
const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/**
 * Answers every OFFER with "nothing missing"; records, for each page index, what it last received
 * for it: the digest offered (hex) or 'zero'.
 */
async function recordingServer() {
  const pages = new Map<number, string>();
  const { address, server } = await scriptedServer((m, answer) => {
    if (m.t === 'offer') {
      m.indices.forEach((p, k) => pages.set(p, Buffer.from(m.digests.subarray(k * 32, (k + 1) * 32)).toString('hex')));
      answer({ t: 'missing', req: m.req, positions: new Uint32Array(0) });
    } else if (m.t === 'zero') {
      for (let r = 0; r < m.ranges.length; r += 2) for (let p = m.ranges[r]; p < m.ranges[r] + m.ranges[r + 1]; p++) pages.set(p, 'zero');
      answer({ t: 'result', req: m.req, json: '{}' });
    } else if (m.t === 'prepare') answer({ t: 'result', req: m.req, json: '{"id":"0123456789abcdef"}' });
  });
  servers.push(server);
  return { address, pages };
}

/** `n` pages: page k is zero when zeroAt(k), else filled from k and a seed. */
function image(n: number, seed: number, zeroAt: (k: number) => boolean): Buffer {
  const b = Buffer.alloc(n * PAGE);
  for (let k = 0; k < n; k++)
    if (!zeroAt(k)) for (let o = 0; o < PAGE; o += 4) b.writeUInt32LE((Math.imul(k + 1, 2654435761) ^ (o * seed)) >>> 0, k * PAGE + o);
  return b;
}

/** What the server should hold for `want` (page index -> its final bytes): its digest (hex) or 'zero'. */
function expected(want: Map<number, Uint8Array>): Map<number, string> {
  const out = new Map<number, string>();
  for (const [p, bytes] of want) out.set(p, bytes.every((x) => x === 0) ? 'zero' : hashPage(bytes).toString('hex'));
  return out;
}

async function run(write: (s: Awaited<ReturnType<AgentClient['beginSession']>>) => Promise<void>) {
  const srv = await recordingServer();
  const client = await AgentClient.connect({ server: srv.address, token: 't' });
  const s = await client.beginSession({ vm: 'vm', memoryBytes: 16384 * PAGE });
  await write(s);
  await s.prepare();
  await client.close();
  return srv.pages;
}

describe('agent page scan', () => {
  it('the native thread-pool scanner is loaded (else only the main-thread path is tested here)', () => {
    expect(pageScanner()).toBeDefined();
  });

  it('a whole-image write of several batches offers every page at its index and sends zero pages as ranges', async () => {
    // 9000 pages from page 100: three offer batches of up to 4096 pages, each scanned in jobs of
    // 1024 at once; the batches and jobs after the first start mid-buffer.
    const data = image(9000, 3, (k) => k % 7 === 0 || (k >= 1500 && k < 1600) || (k >= 4000 && k < 4200));
    const got = await run((s) => s.writePages(100, data));
    const want = new Map<number, Uint8Array>();
    for (let k = 0; k < 9000; k++) want.set(100 + k, data.subarray(k * PAGE, (k + 1) * PAGE));
    expect(got).toEqual(expected(want));
  });

  it('an unaligned view, and scattered writes with repeated indices, offer the same digests', async () => {
    const backing = Buffer.alloc(1300 * PAGE + 3);
    image(1300, 5, (k) => k % 5 === 1).copy(backing, 3);
    const unaligned = backing.subarray(3); // byteOffset 3: the scanner needs 8-byte alignment
    const scattered = image(4, 9, (k) => k === 2);
    const got = await run(async (s) => {
      await s.writePages(0, unaligned);
      await s.writeScattered([2000, 2001, 2000, 2002], scattered); // page 2000: the third page wins
    });
    const want = new Map<number, Uint8Array>();
    for (let k = 0; k < 1300; k++) want.set(k, unaligned.subarray(k * PAGE, (k + 1) * PAGE));
    want.set(2000, scattered.subarray(2 * PAGE, 3 * PAGE));
    want.set(2001, scattered.subarray(PAGE, 2 * PAGE));
    want.set(2002, scattered.subarray(3 * PAGE, 4 * PAGE));
    expect(got).toEqual(expected(want));
  });

  it('random writes: the offers and zero pages follow the pages last written (fast-check)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            first: fc.nat(3000),
            pages: fc.integer({ min: 1, max: 1500 }),
            seed: fc.nat(1000),
            zeroEvery: fc.integer({ min: 2, max: 9 }),
          }),
          {
            minLength: 1,
            maxLength: 4,
          },
        ),
        async (writes) => {
          const want = new Map<number, Uint8Array>();
          const got = await run(async (s) => {
            for (const w of writes) {
              const data = image(w.pages, w.seed + 1, (k) => k % w.zeroEvery === 0);
              await s.writePages(w.first, data);
              for (let k = 0; k < w.pages; k++) want.set(w.first + k, data.subarray(k * PAGE, (k + 1) * PAGE));
            }
          });
          expect(got).toEqual(expected(want));
        },
      ),
      { numRuns: 25 },
    );
  });

  it('PAGES frames carry as many pages as the server announces, never more, and every page once', async () => {
    expect(pagesPerBatch({ maxFrameBytes: MAX_FRAME_BYTES, maxPagesPerBatch: MAX_PAGES_PER_BATCH })).toBe(1024);
    // A server of the first release: 256 pages in frames of at most 1 MiB (and 256 fit in them).
    expect(pagesPerBatch({ maxFrameBytes: MAX_REPLY_FRAME_BYTES, maxPagesPerBatch: 256 })).toBe(256);
    expect(pagesPerBatch({ maxFrameBytes: MAX_REPLY_FRAME_BYTES, maxPagesPerBatch: 4096 })).toBe(256); // the frame limit caps it
    expect(pagesPerBatch({ maxFrameBytes: MAX_FRAME_BYTES * 4, maxPagesPerBatch: 8192 })).toBe(MAX_PAGES_PER_BATCH); // this build's limit
    expect(pagesPerBatch({ maxFrameBytes: 1, maxPagesPerBatch: 0 })).toBe(1);
    for (const announced of [256, 1024, 100]) {
      const frames: number[] = [];
      const sent = new Map<number, string>();
      const { address, server } = await scriptedServer(
        (m, answer) => {
          if (m.t === 'offer')
            answer({ t: 'missing', req: m.req, positions: Uint32Array.from(m.indices.keys()) }); // all missing
          else if (m.t === 'pages') {
            frames.push(m.indices.length);
            m.indices.forEach((p, k) => sent.set(p, hashPage(m.data.subarray(k * PAGE, (k + 1) * PAGE)).toString('hex')));
            answer({ t: 'result', req: m.req, json: '{}' });
          } else if (m.t === 'zero') answer({ t: 'result', req: m.req, json: '{}' });
          else if (m.t === 'prepare') answer({ t: 'result', req: m.req, json: '{"id":"0123456789abcdef"}' });
        },
        { maxFrameBytes: MAX_FRAME_BYTES, maxPagesPerBatch: announced },
      );
      servers.push(server);
      const client = await AgentClient.connect({ server: address, token: 't' });
      const s = await client.beginSession({ vm: 'vm', memoryBytes: 16384 * PAGE });
      const data = image(5000, 5, (k) => k % 9 === 0);
      await s.writePages(0, data);
      await s.prepare();
      await client.close();
      expect(Math.max(...frames)).toBe(announced);
      const want = new Map<number, Uint8Array>();
      for (let k = 0; k < 5000; k++) if (k % 9 !== 0) want.set(k, data.subarray(k * PAGE, (k + 1) * PAGE));
      expect(sent).toEqual(expected(want));
    }
  });
});
