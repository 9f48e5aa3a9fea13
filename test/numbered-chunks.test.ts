/**
 * NumberedChunks' exact lookups (find, numberPages) over real version-3 packs, with every digest
 * column kept in memory, none (a budget of 0: each hit confirmed by a TOC read) and some: the same
 * exact answers every way, and a digest that only shares a stored chunk's fingerprint is never taken
 * for it (a wrong dedup would lose data).
 */
import { describe, expect, it } from 'vitest';
import { getCodec } from '../src/chunk/codec.js';
import { hashPage } from '../src/chunk/hash.js';
import { PACK_VERSION_PREFIXED, TOC_DIGEST_BYTES } from '../src/format/pack-v3.js';
import { PageKind, PageTable } from '../src/format/pages.js';
import { NumberAllocator } from '../src/store/number-allocator.js';
import { loadNumberIndex } from '../src/store/number-load.js';
import { NumberedChunks } from '../src/store/numbered-chunks.js';
import { BatchPool, PackFile } from '../src/store/pack-file.js';
import { PackReader } from '../src/store/pack-reader.js';
import { CorruptError } from '../src/util/errors.js';
import { makePage, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();

/** Writes pack `id` of per-page chunks numbered `numbers`; their digests, in entry order. */
async function writePack(dir: string, id: number, numbers: number[], seed: number): Promise<Buffer[]> {
  const pack = new PackFile(id, dir, new BatchPool(1), PACK_VERSION_PREFIXED);
  const digests: Buffer[] = [];
  numbers.forEach((n, k) => {
    const p = makePage(k % 2 ? 'random' : 'sparse', seed + k);
    const z = getCodec().compressPages(p, [0]);
    pack.append(hashPage(p), z.payload.subarray(0, z.lengths[0]), z.codecs[0], n);
    digests.push(hashPage(p));
  });
  await pack.seal(dir, () => undefined);
  return digests;
}

/** A digest with the same fingerprint as `d` (its first 12 bytes) and a different 24-byte prefix. */
function forgedTwin(d: Buffer, at = 23): Buffer {
  const twin = Buffer.from(d);
  twin[at] ^= 0x5a;
  return twin;
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

async function open(dir: string, packIds: number[], keepBytes?: number) {
  const reader = new PackReader(dir);
  const load = await loadNumberIndex(reader, packIds, undefined, false);
  const chunks = new NumberedChunks(load.index, load.digestColumns, new NumberAllocator(0, load.index.nextNumber), reader, {
    digestsLoaded: false,
    kept: load.digests,
    keepBytes,
  });
  return { reader, chunks };
}

describe('NumberedChunks exact lookups', () => {
  // 64 digest prefixes of 24 B per pack: a budget of 3000 B keeps the first pack's column only.
  for (const [what, keepBytes, kept] of [
    ['every column kept', undefined, 2 * 64 * TOC_DIGEST_BYTES],
    ['no column kept (TOC reads)', 0, 0],
    ['one column kept', 3000, 64 * TOC_DIGEST_BYTES],
  ] as const) {
    it(`finds every stored digest exactly and no fingerprint twin: ${what}`, async () => {
      const dir = tmp('numbered-chunks');
      const numbers = [range(0, 64), [...range(64, 30), ...range(200, 34)]];
      const stored = [...(await writePack(dir, 1, numbers[0], 1)), ...(await writePack(dir, 2, numbers[1], 100))];
      const numberOf = numbers.flat();
      const { reader, chunks } = await open(dir, [1, 2], keepBytes);
      try {
        expect(chunks.keptDigestBytes).toBe(kept);
        const twins = stored.map((d) => forgedTwin(d));
        const found = await chunks.find([...stored, ...twins]);
        for (let k = 0; k < stored.length; k++) {
          expect(found[k]?.number).toBe(numberOf[k]);
          expect(found[k]).toEqual({ ...chunks.locate(numberOf[k])!, number: numberOf[k] });
          expect(found[stored.length + k]).toBeUndefined();
        }

        // numberPages: a parent's number where the digest is the parent's, the rest found exactly.
        const pages = new PageTable(stored.length + 1);
        stored.forEach((d, p) => pages.setDigest(p, d));
        pages.setZero(stored.length);
        const numbered = await chunks.numberPages(pages, undefined, 'test');
        for (let p = 0; p < stored.length; p++) expect(numbered.numbers[p]).toBe(numberOf[p]);
        expect(pages.kinds[stored.length]).toBe(PageKind.Zero);

        pages.setDigest(5, twins[5]);
        await expect(chunks.numberPages(pages, undefined, 'test')).rejects.toBeInstanceOf(CorruptError);

        // A pack joining and one leaving: the kept columns follow.
        const added = await writePack(dir, 3, range(300, 8), 500);
        await chunks.addSealed(3);
        expect((await chunks.find(added)).map((f) => f?.number)).toEqual(range(300, 8));
        expect(await chunks.find(added.map((d) => forgedTwin(d)))).toEqual(Array(8).fill(undefined));
        const column = Buffer.concat(stored.slice(0, 64).map((d) => d.subarray(0, TOC_DIGEST_BYTES)));
        chunks.removePack(1, column);
        expect(chunks.keptDigestBytes).toBe(
          keepBytes === undefined ? (64 + 8) * TOC_DIGEST_BYTES : keepBytes === 0 ? 0 : 8 * TOC_DIGEST_BYTES,
        );
        expect(await chunks.find(stored.slice(0, 64))).toEqual(Array(64).fill(undefined));
        expect((await chunks.find(stored.slice(64))).map((f) => f?.number)).toEqual(numberOf.slice(64));
      } finally {
        await reader.close();
      }
    });
  }

  it('indexes a pack sealed before the digests are loaded (gc, compact) and finds it once they are', async () => {
    const dir = tmp('numbered-chunks-late');
    const first = await writePack(dir, 1, range(0, 20), 3);
    const { reader, chunks } = await open(dir, [1]);
    try {
      const second = await writePack(dir, 2, range(20, 20), 300);
      await chunks.addSealed(2);
      expect(chunks.table.size).toBe(0); // numbers and locations only so far
      expect(chunks.locate(25)?.pack).toBe(2);
      const found = await chunks.find([...first, ...second, ...second.map((d) => forgedTwin(d))]);
      expect(found.map((f) => f?.number)).toEqual([...range(0, 40), ...Array(20).fill(undefined)]);
      expect(chunks.table.size).toBe(40);
    } finally {
      await reader.close();
    }
  });

  it('decides digests that do share a fingerprint exactly (the clash map), kept or not, sealed before the fill or after', async () => {
    for (const keepBytes of [undefined, 0])
      for (const sealedFirst of [false, true]) {
        const dir = tmp('numbered-chunks-clash');
        const first = await writePack(dir, 1, range(0, 16), 7);
        // Pack 2 holds a page whose digest is forged to share pack 1's entry 3's fingerprint.
        const twin = forgedTwin(first[3]);
        const sealTwin = async () => {
          const pack = new PackFile(2, dir, new BatchPool(1), PACK_VERSION_PREFIXED);
          const p = makePage('random', 999);
          const z = getCodec().compressPages(p, [0]);
          pack.append(twin, z.payload.subarray(0, z.lengths[0]), z.codecs[0], 16);
          await pack.seal(dir, () => undefined);
        };
        if (sealedFirst) await sealTwin();
        const { reader, chunks } = await open(dir, sealedFirst ? [1, 2] : [1], keepBytes);
        try {
          await chunks.ensureDigests();
          if (!sealedFirst) {
            await sealTwin();
            await chunks.addSealed(2);
          }
          const found = await chunks.find([first[3], twin, forgedTwin(first[3], 20)]);
          expect(found.map((f) => f?.number)).toEqual([3, 16, undefined]);
          expect(found[1]!.pack).toBe(2);
        } finally {
          await reader.close();
        }
      }
  });

  it('loads the digests while gc swaps a pack out and another joins: every chunk found in the index as it ends', async () => {
    for (const keepBytes of [undefined, 0]) {
      const dir = tmp('numbered-chunks-swap-load');
      const first = await writePack(dir, 1, range(0, 20), 3);
      const second = await writePack(dir, 2, range(20, 20), 300);
      const { reader, chunks } = await open(dir, [1, 2], keepBytes);
      try {
        // gc's copy of pack 2 (same numbers, same chunks) and a pack the writer seals meanwhile.
        expect(await writePack(dir, 3, range(20, 20), 300)).toEqual(second);
        const third = await writePack(dir, 4, range(40, 20), 700);
        const loading = chunks.ensureDigests(); // reads pack 1's column, then pack 2's: gone by then
        await chunks.replacePacks([{ pack: 2, digests: Buffer.concat(second) }], [3]);
        await chunks.addSealed(4);
        await loading;
        expect(chunks.index.packIds.sort()).toEqual([1, 3, 4]);
        const found = await chunks.find([...first, ...second, ...third, ...third.map((d) => forgedTwin(d))]);
        expect(found.map((f) => f?.number)).toEqual([...range(0, 60), ...Array(20).fill(undefined)]);
        expect(found.slice(20, 40).map((f) => f?.pack)).toEqual(Array(20).fill(3));
        expect(chunks.table.size).toBe(60);
      } finally {
        await reader.close();
      }
    }
  });
});
