/**
 * A restore through a server is verified by the client too (issue 12): every page against the
 * digest sent with it (a zero digest: the page must be all zero) and the digests against the
 * record's image digest. Checked against a scripted server that streams what the test gives it.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { hashPage, imageDigest } from '../src/chunk/hash.js';
import { DIGEST_BYTES, PageTable } from '../src/format/pages.js';
import { decodeMessage, encodeMessage, FrameDecoder, MAX_FRAME_BYTES } from '../src/protocol/index.js';

const PAGE = 4096;
const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** Pages 0 and 2 random-ish, page 1 zero: the image, its DATA digests and its record. */
function image() {
  const data = Buffer.alloc(3 * PAGE);
  for (let i = 0; i < PAGE; i++) {
    data[i] = (i * 7) & 0xff;
    data[2 * PAGE + i] = (i * 13 + 5) & 0xff;
  }
  const digests = new Uint8Array(3 * DIGEST_BYTES);
  const table = new PageTable(3);
  for (const p of [0, 2]) {
    const d = hashPage(data.subarray(p * PAGE, (p + 1) * PAGE));
    digests.set(d, p * DIGEST_BYTES);
    table.setDigest(p, d);
  }
  table.setZero(1);
  const record = {
    id: '0123456789abcdef',
    vm: 'vm',
    pageCount: 3,
    byteLength: 3 * PAGE,
    imageDigest: imageDigest(table, 3 * PAGE).toString('hex'),
  };
  return { data, digests, record };
}

/** A server that answers RESTORE with RESULT `record`, one DATA frame of `data` and `digests`, and END. */
async function restoringServer(record: object, digests: Uint8Array, data: Uint8Array): Promise<string> {
  const server = net.createServer((sock) => {
    const d = new FrameDecoder();
    const answer = (m: Parameters<typeof encodeMessage>[0]) => sock.write(encodeMessage(m));
    sock.on('data', (chunk: Buffer) => {
      for (const f of d.push(chunk)) {
        const m = decodeMessage(f);
        if (m.t === 'hello')
          answer({ t: 'welcome', version: 1, window: 8, maxFrameBytes: MAX_FRAME_BYTES, maxPagesPerBatch: 256, serverId: 'scripted' });
        else if (m.t === 'restore') {
          answer({ t: 'result', req: m.req, json: JSON.stringify(record) });
          answer({ t: 'data', req: m.req, firstPage: 0, digests, data });
          answer({ t: 'end', req: m.req, json: '{}' });
        }
      }
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

async function restore(record: object, digests: Uint8Array, data: Uint8Array): Promise<Buffer> {
  const client = await AgentClient.connect({ server: await restoringServer(record, digests, data), token: 't' });
  const parts: Buffer[] = [];
  try {
    await client.restore('0123456789abcdef', (chunk) => void parts.push(Buffer.from(chunk)));
    return Buffer.concat(parts);
  } finally {
    await client.close();
  }
}

describe('a restore through a server is verified by the client', () => {
  it('exact pages with their digests restore exactly', async () => {
    const { data, digests, record } = image();
    expect((await restore(record, digests, data)).equals(data)).toBe(true);
  });

  it('a page whose bytes do not match its digest is refused', async () => {
    const { data, digests, record } = image();
    data[2 * PAGE + 100] ^= 1;
    await expect(restore(record, digests, data)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/page 2 does not match/),
    });
  });

  it('a page sent with the zero digest must be all zero', async () => {
    const { data, digests, record } = image();
    data[PAGE + 5] = 1;
    await expect(restore(record, digests, data)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/page 1 should be zero/),
    });
  });

  it('pages that match their digests but not the image digest are refused', async () => {
    const { data, digests, record } = image();
    await expect(restore({ ...record, imageDigest: '00'.repeat(32) }, digests, data)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/image digest/),
    });
  });
});
