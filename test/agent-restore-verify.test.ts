/**
 * A restore through a server is verified by the client too (issue 12): every page against the
 * digest sent with it (version 1 DATA: a zero digest means the page must be all zero; version 2
 * SPARSE_DATA: a digest prefix per data page, zero pages named without bytes) and the digests
 * against the record's image digest. Checked against a scripted server that streams what the test
 * gives it.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { hashPage, imageDigest } from '../src/chunk/hash.js';
import { DIGEST_BYTES, PageTable } from '../src/format/pages.js';
import {
  DATA_DIGEST_PREFIX_BYTES,
  decodeMessage,
  encodeMessage,
  FrameDecoder,
  MAX_FRAME_BYTES,
  type Message,
} from '../src/protocol/index.js';

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

type Batch = Extract<Message, { t: 'data' | 'sparse-data' }>;
type Unnumbered = Batch extends infer B ? (B extends Batch ? Omit<B, 'req'> : never) : never;

/** A server (speaking `version`) that answers RESTORE with RESULT `record`, the `batches` given, and END. */
async function restoringServer(record: object, batches: Unnumbered[], version = 1): Promise<string> {
  const server = net.createServer((sock) => {
    const d = new FrameDecoder();
    const answer = (m: Parameters<typeof encodeMessage>[0]) => sock.write(encodeMessage(m));
    sock.on('data', (chunk: Buffer) => {
      for (const f of d.push(chunk)) {
        const m = decodeMessage(f);
        if (m.t === 'hello')
          answer({ t: 'welcome', version, window: 8, maxFrameBytes: MAX_FRAME_BYTES, maxPagesPerBatch: 256, serverId: 'scripted' });
        else if (m.t === 'restore') {
          answer({ t: 'result', req: m.req, json: JSON.stringify(record) });
          for (const b of batches) answer({ ...b, req: m.req } as Message);
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
  return restoreBatches(record, [{ t: 'data', firstPage: 0, digests, data }]);
}

async function restoreBatches(record: object, batches: Unnumbered[], version = 1): Promise<Buffer> {
  const client = await AgentClient.connect({ server: await restoringServer(record, batches, version), token: 't' });
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

/**
 * Version 2: an image of 5 pages, 18,000 bytes (the last page short): pages 1 and 3 zero, the others
 * data; the SPARSE_DATA batches of it, cut after page `cut`.
 */
function sparseImage(cut = 5) {
  const byteLength = 4 * PAGE + 1616;
  const data = Buffer.alloc(5 * PAGE);
  for (const p of [0, 2, 4]) for (let i = 0; i < PAGE; i++) data[p * PAGE + i] = (i * (p + 3) + p) & 0xff;
  data.fill(0, byteLength);
  const table = new PageTable(5);
  const prefixOf: Buffer[] = [];
  for (let p = 0; p < 5; p++) {
    if (p % 2 === 1) {
      table.setZero(p);
      continue;
    }
    const d = hashPage(data.subarray(p * PAGE, (p + 1) * PAGE));
    table.setDigest(p, d);
    prefixOf[p] = d.subarray(0, DATA_DIGEST_PREFIX_BYTES);
  }
  const record = {
    id: '0123456789abcdef',
    vm: 'vm',
    pageCount: 5,
    byteLength,
    imageDigest: imageDigest(table, byteLength).toString('hex'),
  };
  const batch = (from: number, to: number): Unnumbered => {
    const pages = [...Array(to - from).keys()].map((k) => from + k);
    const dataPages = pages.filter((p) => p % 2 === 0);
    return {
      t: 'sparse-data',
      firstPage: from,
      zero: Uint8Array.from(pages, (p) => p % 2),
      prefixes: Buffer.concat(dataPages.map((p) => prefixOf[p])),
      runs: dataPages.map((p) => data.subarray(p * PAGE, Math.min(byteLength, (p + 1) * PAGE))),
    };
  };
  const batches = cut < 5 ? [batch(0, cut), batch(cut, 5)] : [batch(0, 5)];
  return { image: data.subarray(0, byteLength), record, batches };
}

describe('a version-2 restore (SPARSE_DATA) is verified by the client', () => {
  it('zero pages come without bytes and are restored as zeros; every cut restores exactly', async () => {
    for (const cut of [1, 2, 3, 5]) {
      const { image, record, batches } = sparseImage(cut);
      expect((await restoreBatches(record, batches, 2)).equals(image)).toBe(true);
    }
  });

  it('a data page whose bytes do not match its digest prefix is refused, naming the page', async () => {
    const { record, batches } = sparseImage();
    const b = batches[0] as Extract<Unnumbered, { t: 'sparse-data' }>;
    const runs = b.runs.map((r) => Buffer.from(r));
    runs[1][7] ^= 1; // page 2
    await expect(restoreBatches(record, [{ ...b, runs }], 2)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/page 2 does not match/),
    });
  });

  it('a data page named zero, or bytes for the wrong pages, or a batch out of place, are refused', async () => {
    const { record, batches } = sparseImage();
    const b = batches[0] as Extract<Unnumbered, { t: 'sparse-data' }>;
    // Page 0 said to be zero (its prefix and bytes left out): the digests no longer make the image's.
    const hidden: Unnumbered = {
      ...b,
      zero: Uint8Array.of(1, 1, 0, 1, 0),
      prefixes: b.prefixes.subarray(DATA_DIGEST_PREFIX_BYTES),
      runs: b.runs.slice(1),
    };
    await expect(restoreBatches(record, [hidden], 2)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/image digest/),
    });
    // The last page's bytes whole where the image ends 1616 bytes into it.
    const padded: Unnumbered = { ...b, runs: [...b.runs.slice(0, 2), Buffer.alloc(PAGE, 1)] };
    await expect(restoreBatches(record, [padded], 2)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/bytes of data pages/),
    });
    await expect(restoreBatches(record, [{ ...b, firstPage: 1 }], 2)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/expected page 0/),
    });
  });

  it('pages that match their prefixes but not the image digest are refused', async () => {
    const { record, batches } = sparseImage(3);
    await expect(restoreBatches({ ...record, imageDigest: '00'.repeat(32) }, batches, 2)).rejects.toMatchObject({
      code: 'E_CORRUPT',
      message: expect.stringMatching(/image digest/),
    });
  });
});
