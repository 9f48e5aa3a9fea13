/**
 * Version-3 packs on disk: written by the one pack writer (PackFile) with numbered chunks, read back
 * by the one reader, and loaded into the format-3 number index: every page located by its number
 * decodes to its exact bytes, every digest finds its number through a TOC read, and the loader sorts
 * out a killed gc's copy, a conflicting pack, damaged packs and a newer vnstore's pack.
 */
import { promises as fsp, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { getCodec } from '../src/chunk/codec.js';
import { hashPage } from '../src/chunk/hash.js';
import { getZstd } from '../src/chunk/zstd.js';
import { encodePackHeader, packFileName, PACK_VERSION } from '../src/format/pack.js';
import { PACK_VERSION_NUMBERED, PACK_VERSION_PREFIXED } from '../src/format/pack-v3.js';
import { loadNumberIndex } from '../src/store/number-load.js';
import { BatchPool, PackFile } from '../src/store/pack-file.js';
import { PackReader } from '../src/store/pack-reader.js';
import { CorruptError, VnstoreError } from '../src/util/errors.js';
import { makePage, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();
let seed = 1;

interface Stored {
  number: number;
  page: Buffer;
  digest: Buffer;
}

/** Writes pack `id` of per-page chunks and (with `container`) one container of 5 pages, numbered from `first`. */
async function writePack(
  dir: string,
  id: number,
  numbers: number[],
  container = false,
  version = PACK_VERSION_PREFIXED,
): Promise<Stored[]> {
  const pack = new PackFile(id, dir, new BatchPool(1), version);
  const out: Stored[] = [];
  let k = 0;
  if (container) {
    const pages = Array.from({ length: 5 }, () => makePage('compressible', seed++));
    const raw = Buffer.concat(pages);
    const frame = getZstd('native').compress(raw, Uint32Array.of(0), Uint32Array.of(raw.length), 3).payload;
    const digests = Buffer.concat(pages.map((p) => hashPage(p)));
    pack.appendContainer(digests, 5, frame, numbers.slice(0, 5));
    pages.forEach((p, m) => out.push({ number: numbers[m], page: p, digest: hashPage(p) }));
    k = 5;
  }
  for (; k < numbers.length; k++) {
    const p = makePage(k % 3 === 0 ? 'random' : 'sparse', seed++);
    const z = getCodec().compressPages(p, [0]);
    pack.append(hashPage(p), z.payload.subarray(0, z.lengths[0]), z.codecs[0], numbers[k]);
    out.push({ number: numbers[k], page: p, digest: hashPage(p) });
  }
  const { sealed } = await pack.seal(dir, () => undefined);
  expect(sealed.record.bytes).toBe((await fsp.stat(path.join(dir, packFileName(id)))).size);
  return out;
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe('version-3 packs on disk', () => {
  it('reads back every numbered page exactly and finds every digest, through a TOC read (packs 3 and 4 together)', async () => {
    const dir = tmp('pack-v3-files');
    const stored = [
      ...(await writePack(dir, 1, range(0, 40), true, PACK_VERSION_NUMBERED)),
      ...(await writePack(dir, 2, [...range(40, 10), ...range(60, 10)])), // a hole: 50..59 never sealed
    ];
    const reader = new PackReader(dir);
    try {
      const load = await loadNumberIndex(reader, [1, 2]);
      expect(load.damaged).toEqual([]);
      expect(load.index.size).toBe(60);
      expect(load.index.nextNumber).toBe(70);
      for (const s of stored) {
        const at = load.index.locate(s.number)!;
        expect(Buffer.from((await reader.readVerified(at.location, s.digest))!)).toEqual(s.page);
        const c = load.index.candidate(s.digest);
        expect(c.kind).toBe('confirm');
        if (c.kind !== 'confirm') continue;
        // Pack 1 (version 3) keeps whole digests, pack 2 (version 4) their first 24 bytes.
        const column = load.digestColumns.get(c.pack)!;
        expect(column.stride).toBe(c.pack === 1 ? 32 : 24);
        const onDisk = await reader.read(c.pack, column.at + column.stride * c.entry, 24);
        expect(Buffer.from(onDisk).equals(Buffer.from(s.digest.subarray(0, 24)))).toBe(true);
        expect(c.number).toBe(s.number);
      }
      expect(load.index.locate(55)).toBeUndefined();
      expect(load.index.candidate(hashPage(makePage('random', 99_999))).kind).toBe('absent');
    } finally {
      await reader.close();
    }
  });

  it('names a killed gc copy, a conflicting pack and damaged packs, and keeps the originals', async () => {
    const dir = tmp('pack-v3-load');
    await writePack(dir, 1, range(100, 20), true);
    await writePack(dir, 2, range(120, 10));
    await writePack(dir, 3, [101, 107, 125]); // a gc copy of live chunks of packs 1 and 2
    await writePack(dir, 4, [128, 130]); // 128 is pack 2's, 130 nobody's: not a copy
    await writePack(dir, 6, range(200, 4));
    await writePack(dir, 7, range(300, 4));
    // Pack 6 truncated, pack 7 with a flipped TOC byte, pack 8 a version-1 pack, all damage.
    const p6 = path.join(dir, packFileName(6));
    writeFileSync(p6, readFileSync(p6).subarray(0, 100));
    const p7 = path.join(dir, packFileName(7));
    const b7 = readFileSync(p7);
    b7[b7.length - 40] ^= 1;
    writeFileSync(p7, b7);
    const v1 = new PackFile(8, dir, new BatchPool(1), PACK_VERSION);
    const old = makePage('sparse', 1);
    const z = getCodec().compressPages(old, [0]);
    v1.append(hashPage(old), z.payload.subarray(0, z.lengths[0]), z.codecs[0]);
    await v1.seal(dir, () => undefined);
    const reader = new PackReader(dir);
    try {
      const load = await loadNumberIndex(reader, [4, 3, 2, 1, 6, 7, 8]);
      expect(load.copies).toEqual([3]);
      expect(load.conflicting).toEqual([{ pack: 4, overlaps: [2] }]);
      expect(load.damaged.map((d) => d.pack)).toEqual([6, 7, 8]);
      expect(load.damaged[2].why).toMatch(/pack version 1 does not belong/);
      expect(load.index.packIds.sort()).toEqual([1, 2]);
      expect(load.index.locate(107)?.pack).toBe(1);
      expect(load.index.locate(125)?.pack).toBe(2);
      expect(load.index.locate(130)).toBeUndefined();
    } finally {
      await reader.close();
    }
  });

  it("refuses a newer vnstore's pack for the whole load, and numbers out of order when writing", async () => {
    const dir = tmp('pack-v3-newer');
    await writePack(dir, 1, range(0, 3));
    const f = path.join(dir, packFileName(1));
    const b = readFileSync(f);
    encodePackHeader(4096, 5).copy(b, 0);
    writeFileSync(f, b);
    const reader = new PackReader(dir);
    try {
      const err = await loadNumberIndex(reader, [1]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VnstoreError);
      expect((err as VnstoreError).code).toBe('E_FORMAT_VERSION');
      expect(err).not.toBeInstanceOf(CorruptError);
    } finally {
      await reader.close();
    }
    const page = makePage('sparse', 5);
    const payload = Buffer.from(page);
    const p3 = new PackFile(9, dir, new BatchPool(1), PACK_VERSION_PREFIXED);
    p3.append(hashPage(page), payload, 0, 10);
    expect(() => p3.append(hashPage(page), payload, 0, 10)).toThrow(RangeError);
    expect(() => p3.append(hashPage(page), payload, 0)).toThrow(RangeError);
    await p3.discard(dir);
    const p1 = new PackFile(10, dir, new BatchPool(1), PACK_VERSION);
    expect(() => p1.append(hashPage(page), payload, 0, 1)).toThrow(RangeError);
    await p1.discard(dir);
  });
});
