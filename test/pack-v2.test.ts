/**
 * Pack format 2 (issue 16): per-page chunks beside zstd containers of up to 16 pages. Written by the
 * one pack writer, read back by the one reader: every chunk named by content with its container
 * position, every page decoded exactly (with libzstd and with the fzstd fallback); a damaged pack is
 * refused or reads back exactly, never as other bytes; unknown versions and codecs are refused.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { getCodec } from '../src/chunk/codec.js';
import { containerPages, frameContentSize } from '../src/chunk/container.js';
import { hashPage } from '../src/chunk/hash.js';
import { getZstd } from '../src/chunk/zstd.js';
import { CONTAINER_CODEC, PACK_VERSION_CONTAINERS, packFileName, storedShare } from '../src/format/pack.js';
import { ChunkTable } from '../src/index/chunk-table.js';
import { decodeChunkValue, encodeChunkValue } from '../src/store/db.js';
import { BatchPool, PackFile } from '../src/store/pack-file.js';
import { decodeOne, PackReader } from '../src/store/pack-reader.js';
import { VnstoreError } from '../src/util/errors.js';
import { makePage, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();
const PAGE = 4096;

/** A pack plan: a per-page chunk (page kind) or a container of n pages. */
type Item = { kind: 'page'; page: 'random' | 'compressible' | 'sparse' } | { kind: 'container'; n: number };

const itemArb: fc.Arbitrary<Item> = fc.oneof(
  fc.record({ kind: fc.constant('page' as const), page: fc.constantFrom('random' as const, 'compressible' as const, 'sparse' as const) }),
  fc.record({ kind: fc.constant('container' as const), n: fc.integer({ min: 1, max: 16 }) }),
);

interface Written {
  dir: string;
  id: number;
  pages: Buffer[]; // in TOC order
  codecs: number[];
  members: number[];
  containerPages: number[];
}

let seedCounter = 1;

async function writeV2(items: Item[]): Promise<Written> {
  const dir = tmp('pack-v2');
  const id = 7;
  const pack = new PackFile(id, dir, new BatchPool(1), PACK_VERSION_CONTAINERS);
  const w: Written = { dir, id, pages: [], codecs: [], members: [], containerPages: [] };
  for (const item of items) {
    if (item.kind === 'page') {
      const p = makePage(item.page, seedCounter++);
      const z = getCodec().compressPages(p, [0]);
      pack.append(hashPage(p), z.payload.subarray(0, z.lengths[0]), z.codecs[0]);
      w.pages.push(p);
      w.codecs.push(z.codecs[0]);
      w.members.push(0);
      w.containerPages.push(1);
    } else {
      const pages = Array.from({ length: item.n }, (_, i) => makePage(i % 3 === 0 ? 'sparse' : 'compressible', seedCounter++));
      const raw = Buffer.concat(pages);
      const frame = getZstd('native').compress(raw, Uint32Array.of(0), Uint32Array.of(raw.length), 3).payload;
      pack.appendContainer(Buffer.concat(pages.map((p) => hashPage(p))), item.n, frame);
      pages.forEach((p, m) => {
        w.pages.push(p);
        w.codecs.push(CONTAINER_CODEC);
        w.members.push(m);
        w.containerPages.push(item.n);
      });
    }
  }
  await pack.seal(dir, () => undefined);
  return w;
}

/** Reads the pack back; every chunk's digest, position and decoded bytes must be the written ones. */
async function expectReadsBack(w: Written): Promise<void> {
  const reader = new PackReader(w.dir);
  try {
    const chunks = await reader.readChunks(w.id);
    expect(chunks.length).toBe(w.pages.length);
    chunks.forEach((c, k) => {
      expect(c.digest.equals(hashPage(w.pages[k]))).toBe(true);
      expect([c.codec, c.member, c.pages]).toEqual([w.codecs[k], w.members[k], w.containerPages[k]]);
    });
    const { data } = await reader.readWhole(w.id);
    for (let k = 0; k < chunks.length; k++) {
      const c = chunks[k];
      const page = decodeOne(data.subarray(c.offset, c.offset + c.storedLength), c.codec, c.member, new Uint8Array(PAGE));
      expect(Buffer.from(page).equals(w.pages[k])).toBe(true);
      // A single verified read through a location, as restore's retry path makes it.
      const loc = { pack: w.id, offset: c.offset, storedLength: c.storedLength, codec: c.codec, member: c.member, pages: c.pages };
      expect(Buffer.from((await reader.readVerified(loc, c.digest))!).equals(w.pages[k])).toBe(true);
    }
    // A container's shares add up to its frame; the payload is exactly the distinct frames and pages.
    const payload = chunks.reduce((s, c) => s + storedShare(c), 0);
    const trailerStart = data.length - 32;
    expect(payload).toBe(data.readUInt32LE(trailerStart + 4) - 16);
  } finally {
    await reader.close();
  }
}

describe('pack format 2', () => {
  it('round-trips any mix of per-page chunks and containers (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(itemArb, { minLength: 1, maxLength: 12 }), async (items) => {
        await expectReadsBack(await writeV2(items));
      }),
      { numRuns: 40 },
    );
  });

  it('reads containers with the fzstd fallback (addon disabled)', async () => {
    const w = await writeV2([
      { kind: 'container', n: 16 },
      { kind: 'page', page: 'compressible' },
      { kind: 'container', n: 3 },
    ]);
    const before = process.env.VNSTORE_NATIVE;
    process.env.VNSTORE_NATIVE = '0';
    try {
      expect(getZstd().kind).toBe('js');
      await expectReadsBack(w);
    } finally {
      if (before === undefined) delete process.env.VNSTORE_NATIVE;
      else process.env.VNSTORE_NATIVE = before;
    }
  });

  it('refuses a damaged pack, or reads back exactly the written pages: never other bytes (property)', async () => {
    const w = await writeV2([
      { kind: 'page', page: 'compressible' },
      { kind: 'container', n: 16 },
      { kind: 'page', page: 'random' },
      { kind: 'container', n: 5 },
    ]);
    const file = path.join(w.dir, packFileName(w.id));
    const good = readFileSync(file);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), async (at, xor) => {
        const bad = Buffer.from(good);
        bad[at] ^= xor;
        writeFileSync(file, bad);
        const reader = new PackReader(w.dir);
        try {
          const chunks = await reader.readChunks(w.id);
          // Accepted: then it must be exactly what was written (e.g. a flipped bit in a zstd frame
          // header's window size decodes the same bytes; check's payload checksum reports it).
          expect(chunks.map((c) => c.digest.toString('hex'))).toEqual(w.pages.map((p) => hashPage(p).toString('hex')));
        } catch (err) {
          expect(err).toBeInstanceOf(VnstoreError);
          expect(['E_CORRUPT', 'E_FORMAT_VERSION']).toContain((err as VnstoreError).code);
        } finally {
          await reader.close();
        }
      }),
      { numRuns: 300 },
    );
    writeFileSync(file, good);
  });

  it('refuses unknown versions (E_FORMAT_VERSION), unknown codecs and broken containers (E_CORRUPT)', async () => {
    const w = await writeV2([
      { kind: 'container', n: 4 },
      { kind: 'page', page: 'compressible' },
    ]);
    const file = path.join(w.dir, packFileName(w.id));
    const good = readFileSync(file);
    const tocAt = good.readUInt32LE(good.length - 32 + 4);
    const expectRefused = async (mutate: (b: Buffer) => void, code: string, message: RegExp) => {
      const b = Buffer.from(good);
      mutate(b);
      // Re-seal the TOC checksum so that the check under test is the one that refuses.
      const { crc32 } = await import('node:zlib');
      const t = b.length - 32;
      b.writeUInt32LE(crc32(b.subarray(tocAt, t)), t + 12);
      b.writeUInt32LE(crc32(b.subarray(t, t + 20)), t + 20);
      writeFileSync(file, b);
      const reader = new PackReader(w.dir);
      try {
        await expect(reader.readChunks(w.id)).rejects.toMatchObject({ code, message: expect.stringMatching(message) });
      } finally {
        await reader.close();
      }
    };
    await expectRefused((b) => b.writeUInt16LE(3, 8), 'E_FORMAT_VERSION', /unsupported pack version 3/);
    // Version 0 was never written: damage (a pack torn after its magic), quarantined by recovery.
    await expectRefused((b) => b.writeUInt16LE(0, 8), 'E_CORRUPT', /bad pack version 0/);
    // A v1 reader's view of a v2 pack: container bytes are unknown codecs.
    await expectRefused((b) => b.writeUInt16LE(1, 8), 'E_CORRUPT', /unknown codec/);
    await expectRefused((b) => (b[tocAt + 10] = 3), 'E_CORRUPT', /unknown codec 3/);
    // Member 2 where member 1 belongs.
    await expectRefused((b) => (b[tocAt + 11 + 10] = CONTAINER_CODEC | (2 << 4)), 'E_CORRUPT', /out of place/);
    // A per-page chunk with a member number.
    await expectRefused((b) => (b[tocAt + 4 * 11 + 10] |= 1 << 4), 'E_CORRUPT', /member number outside a container/);
    await expectRefused((b) => b.writeUInt32LE(8192, 12), 'E_CORRUPT', /page size/);
  });

  it('frame headers state the container size; anything else is refused', () => {
    const raw = Buffer.concat([makePage('compressible', 1), makePage('sparse', 2)]);
    const frame = getZstd('native').compress(raw, Uint32Array.of(0), Uint32Array.of(raw.length), 3).payload;
    expect(frameContentSize(frame)).toBe(2 * PAGE);
    expect(containerPages(frame)).toBe(2);
    const odd = getZstd('native').compress(raw, Uint32Array.of(0), Uint32Array.of(100), 3).payload;
    expect(() => containerPages(odd)).toThrow(/whole pages/);
    expect(() => containerPages(Buffer.from('not a frame'))).toThrow(/whole pages/);
  });

  it('index entries and chunk-table slots keep a container page’s member and page count', () => {
    for (const member of [0, 5, 15]) {
      for (const pages of [member + 1, 16]) {
        const loc = { pack: 3, offset: 70_000, storedLength: 65_535, codec: CONTAINER_CODEC, member, pages };
        expect(decodeChunkValue(encodeChunkValue(loc))).toEqual(loc);
        const t = new ChunkTable(16);
        const d = hashPage(makePage('random', member * 100 + pages));
        t.insert(d, loc);
        expect(t.get(d)?.location).toEqual(loc);
      }
    }
    // Per-page locations are unchanged (no member key), and their bytes too.
    const lz4 = { pack: 1, offset: 16, storedLength: 900, codec: 1 };
    expect(decodeChunkValue(encodeChunkValue(lz4))).toEqual(lz4);
    expect(encodeChunkValue(lz4)).toEqual(Buffer.from([1, 16, 0x91, 0x1c]));
    expect(() => decodeChunkValue(Buffer.from([1, 16, 0x92, 0x1c, 0x13]))).toThrow(/member 3 of 2 pages/);
    expect(storedShare({ storedLength: 1000, codec: CONTAINER_CODEC, member: 0, pages: 3 })).toBe(334);
    expect(storedShare({ storedLength: 1000, codec: CONTAINER_CODEC, member: 2, pages: 3 })).toBe(333);
  });
});
