/**
 * Ingest into a compacted store (issue 16: "ingest speed unchanged"): a page already stored inside a
 * zstd container is confirmed by the page job itself (read, decode, compare bytes), as an LZ4 page
 * is, instead of going to the exact index on the main thread; a damaged container is never trusted.
 */
import { openSync, readSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { PageStatus, runHashJob } from '../src/chunk/page-jobs.js';
import { CONTAINER_CODEC, packFileName } from '../src/format/pack.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../src/format/pages.js';
import { runCompact } from '../src/maintenance/compact.js';
import { hashPage } from '../src/chunk/hash.js';
import { getZstd } from '../src/chunk/zstd.js';
import { removeDir, restoreToBuffer } from './helpers/engine.js';
import { newStore, putImage, textPage } from './helpers/maintenance.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

/** 64 text pages: LZ4 pages at ingest, 4 containers of 16 after compact. */
const image = Buffer.concat(Array.from({ length: 64 }, (_, i) => textPage(1000 + i)));

async function compactedStore(prefix: string) {
  const { root, dir, store } = await newStore(prefix, 1 << 20, 1); // version-2 containers and the exact index (format 3: compact-v3)
  roots.push(root);
  const first = await putImage(store, 'vm0', image);
  await runCompact(store, { minAgeMs: 0 });
  const [loc] = await store.lookupExact([hashPage(image.subarray(0, PAGE_SIZE))]);
  expect(loc?.codec).toBe(CONTAINER_CODEC);
  return { dir, store, first };
}

describe('dedup against zstd containers at ingest', () => {
  it('a page job confirms pages stored in containers by their bytes, with no exact-index lookup', async () => {
    const { dir, store } = await compactedStore('compact-dedup');
    const result = runHashJob({
      kind: 'hash',
      pages: Buffer.from(image),
      pageCount: 64,
      table: store.table.shared,
      packsDir: path.join(dir, 'packs'),
    });
    expect([...result.status]).toEqual(new Array(64).fill(PageStatus.KnownVerified));

    // The same image as another VM's first snapshot: no page goes to the exact index, nothing new is stored.
    const lookups = vi.spyOn(store, 'lookupExact');
    const clone = await putImage(store, 'vm1', image);
    expect(lookups).not.toHaveBeenCalled();
    lookups.mockRestore();
    expect((await restoreToBuffer(store, clone)).equals(image)).toBe(true);
    const [loc] = await store.lookupExact([hashPage(image.subarray(PAGE_SIZE, 2 * PAGE_SIZE))]);
    expect(loc?.codec).toBe(CONTAINER_CODEC); // still the container's page, not a second copy
    await store.close();
  });

  it('a container that does not decode to the page is not trusted: the page goes to the exact index', async () => {
    const { dir, store } = await compactedStore('compact-dedup-bad');
    const [loc] = await store.lookupExact([hashPage(image.subarray(0, PAGE_SIZE))]);
    // Flip one byte inside the first container's frame (after its header).
    const fd = openSync(path.join(dir, 'packs', packFileName(loc!.pack)), 'r+');
    const b = Buffer.alloc(1);
    const at = loc!.offset + Math.floor(loc!.storedLength / 2);
    readSync(fd, b, 0, 1, at);
    b[0] ^= 0xff;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    const pages = Buffer.from(image.subarray(0, 16 * PAGE_SIZE));
    // What the damaged frame decodes to now (zstd frames carry no checksum here: the damage may
    // fail the decode or change only the pages after it, depending on where the byte falls in
    // the frame, which depends on the level compact used).
    const frame = Buffer.alloc(loc!.storedLength);
    const rd = openSync(path.join(dir, 'packs', packFileName(loc!.pack)), 'r');
    readSync(rd, frame, 0, frame.length, loc!.offset);
    closeSync(rd);
    const decoded = Buffer.alloc(16 * PAGE_SIZE);
    let decodes = true;
    try {
      getZstd().decompress(
        frame,
        Uint32Array.of(0),
        Uint32Array.of(frame.length),
        decoded,
        Uint32Array.of(0),
        Uint32Array.of(decoded.length),
      );
    } catch {
      decodes = false;
    }
    const intact = (i: number) =>
      decodes && decoded.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE).equals(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    const result = runHashJob({ kind: 'hash', pages, pageCount: 16, table: store.table.shared, packsDir: path.join(dir, 'packs') });
    // Only a page the container still decodes to, byte for byte, is confirmed; every other goes to the exact index.
    const expected = Array.from({ length: 16 }, (_, i) => (intact(i) ? PageStatus.KnownVerified : PageStatus.MaybeKnown));
    expect(expected).toContain(PageStatus.MaybeKnown);
    expect([...result.status]).toEqual(expected);
    // The raw bytes of every page either way go back for the exact path, in order.
    expect(Buffer.from(result.maybeRaw).equals(pages)).toBe(true);
    expect(result.digests.subarray(0, DIGEST_BYTES)).toEqual(new Uint8Array(hashPage(pages.subarray(0, PAGE_SIZE))));
    await store.close();
  });
});
