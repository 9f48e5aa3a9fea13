/**
 * The format-3 copy (gc, compact, repair): entries in increasing number order across source packs;
 * a container copied whole when no other copied number falls inside its range, split into single
 * pages when one does or when some of its pages are not copied; every page verified; exact bytes
 * read back through the new pack's TOC.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { compressContainers } from '../src/chunk/container.js';
import { hashPage } from '../src/chunk/hash.js';
import { getCodec } from '../src/chunk/codec.js';
import { getZstd } from '../src/chunk/zstd.js';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { PACK_VERSION_NUMBERED, PACK_VERSION_PREFIXED } from '../src/format/pack-v3.js';
import { copyNumbered, tocItems, tocNumbers, unitsToCopy } from '../src/maintenance/pack-copy-v3.js';
import type { NumberedStore } from '../src/maintenance/numbered-store.js';
import { BatchPool, PackFile } from '../src/store/pack-file.js';
import { PackReader, decodeOne } from '../src/store/pack-reader.js';
import { makePage, makeTempDir, removeDir } from './helpers/engine.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

const page = (n: number) => makePage('compressible', n);

/** Pack 1: a container of pages numbered 10, 20, 30; pack 2: single pages numbered `singles`. */
async function sources(dir: string, singles: number[]): Promise<PackReader> {
  const packs = path.join(dir, 'packs');
  const tmp = path.join(dir, 'tmp');
  mkdirSync(packs, { recursive: true });
  mkdirSync(tmp, { recursive: true });
  const c = new PackFile(1, tmp, new BatchPool(1), PACK_VERSION_NUMBERED);
  const pages = Buffer.concat([10, 20, 30].map(page));
  const frames = await compressContainers(pages, [3], 3);
  c.appendContainer(
    Buffer.concat([10, 20, 30].map((n) => hashPage(page(n)))),
    3,
    frames.payload.subarray(0, frames.lengths[0]),
    [10, 20, 30],
  );
  await c.seal(packs, () => undefined);
  const s = new PackFile(2, tmp, new BatchPool(1), PACK_VERSION_NUMBERED);
  for (const n of singles) {
    const z = getCodec().compressPages(page(n), [0]);
    s.append(hashPage(page(n)), z.payload.subarray(0, z.lengths[0]), z.codecs[0], n);
  }
  await s.seal(packs, () => undefined);
  return new PackReader(packs);
}

async function copyAll(singles: number[], keep: (n: number) => boolean = () => true) {
  const dir = makeTempDir('pack-copy-v3');
  roots.push(dir);
  const packs = await sources(dir, singles);
  const view = { dir, packs } as unknown as NumberedStore;
  const units = [...unitsToCopy(1, (await packs.readTocV3(1)).toc, keep), ...unitsToCopy(2, (await packs.readTocV3(2)).toc, keep)];
  const copied = await copyNumbered(view, 3, units);
  const { toc } = copied.read;
  expect(copied.read.version).toBe(PACK_VERSION_PREFIXED);
  const numbers = [...tocNumbers(toc)];
  const items = tocItems(toc);
  // Every entry decodes to the page its number names, and its digest is that page's.
  for (const item of items) {
    const payload = await packs.read(3, item.offset, item.storedLength);
    for (let m = 0; m < item.pages; m++) {
      const k = item.entry + m;
      const bytes = decodeOne(payload, item.codec, m, new Uint8Array(4096));
      expect(Buffer.from(bytes).equals(page(numbers[k])), `entry ${k}`).toBe(true);
      // Sources of pack version 3 (whole digests), the copy of version 4 (24-byte prefixes).
      expect(Buffer.from(toc.digests.subarray(k * 24, k * 24 + 24)).equals(hashPage(page(numbers[k])).subarray(0, 24))).toBe(true);
    }
  }
  await packs.close();
  return { numbers, containers: items.filter((i) => i.codec === CONTAINER_CODEC).map((i) => i.pages) };
}

describe.runIf(getZstd().canCompress)('copyNumbered', () => {
  it('keeps a container whole when no other number falls inside it', async () => {
    const r = await copyAll([5, 31, 40]);
    expect(r.numbers).toEqual([5, 10, 20, 30, 31, 40]);
    expect(r.containers).toEqual([3]);
  });

  it('splits a container whose range another copied number falls into', async () => {
    const r = await copyAll([15, 25, 40]);
    expect(r.numbers).toEqual([10, 15, 20, 25, 30, 40]);
    expect(r.containers).toEqual([]);
  });

  it('splits a container some of whose pages are not copied', async () => {
    const r = await copyAll([40], (n) => n !== 20);
    expect(r.numbers).toEqual([10, 30, 40]);
    expect(r.containers).toEqual([]);
  });
});
