/**
 * Format 3: the shortcuts of a snapshot's commit (issue 12, the fixed cost of an empty dirty-list
 * snapshot). Pages a session inherits take the parent's numbers without comparing digests, and the
 * parent's chunks are not looked up one by one while no chunk table has lost a fingerprint since
 * they were all present. Each snapshot's manifest must be byte for byte the one exact lookups of
 * every page give, and a chunk dropped after the parent was committed must still be refused.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { describe, expect, it, vi } from 'vitest';
import {
  decodeManifestV2Header,
  decodeManifestV2Pages,
  encodeManifestV2,
  NumberedPages,
  planManifestV2,
} from '../src/format/manifest-v2.js';
import { chunkLossGeneration, type ChunkTable } from '../src/index/chunk-table.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { MAX_BASE_DEPTH } from '../src/store/manifest-loader.js';
import { Store } from '../src/store/store.js';
import { expectedImageDigest, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();
const PAGE = 4096;
const PAGES = 320;

function image(seed: number): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < PAGES; p++) parts.push(makePage(p % 5 === 2 ? 'zero' : p % 3 === 0 ? 'random' : 'compressible', seed * 1000 + p));
  return Buffer.concat(parts);
}

async function openStore(): Promise<Store> {
  const dir = path.join(tmp('inherited-numbers'), 'store');
  await Store.init(dir, { format: 3 });
  return Store.open(dir, { workers: 0, packTargetBytes: 32 * 1024 });
}

/** Runs `fn` on a fresh store holding a first snapshot of image(seed) of VM vm; closes the store after. */
async function withFirstSnapshot(seed: number, fn: (store: Store, bytes: Buffer, first: SnapshotRecord) => Promise<void>): Promise<void> {
  const store = await openStore();
  try {
    const bytes = image(seed);
    const s = await store.beginSession({ vm: 'vm', parent: 'none' });
    await s.writePages(0, bytes);
    await fn(store, bytes, await s.commit({ byteLength: bytes.length }));
  } finally {
    await store.close();
  }
}

/**
 * The manifest file of `rec` against the one exact lookups give: each page's number found by its
 * digest (the image's bytes hashed here), encoded with the same header and base as the file.
 */
async function expectManifestOfExactLookups(store: Store, rec: SnapshotRecord, bytes: Buffer): Promise<void> {
  const file = readFileSync(store.manifestPath(rec.id));
  const { header } = decodeManifestV2Header(file, rec.id);
  const pageCount = Math.ceil(rec.byteLength / PAGE);
  const padded = Buffer.alloc(pageCount * PAGE);
  bytes.copy(padded, 0, 0, rec.byteLength);
  const digests = Array.from({ length: pageCount }, (_, p) => blake3(padded.subarray(p * PAGE, (p + 1) * PAGE)));
  const found = await store.numbered!.find(digests);
  const exact = new NumberedPages(pageCount);
  for (let p = 0; p < pageCount; p++) {
    if (padded.subarray(p * PAGE, (p + 1) * PAGE).every((b) => b === 0)) exact.setZero(p);
    else {
      expect(found[p], `page ${p} of ${rec.id}`).toBeDefined();
      exact.setNumber(p, found[p]!.number);
    }
  }
  // The base a commit comparing both plans chooses: the parent, when its delta is smaller.
  const parent = (await store.listSnapshots()).find((r) => r.id === rec.parent);
  let base: NumberedPages | undefined;
  if (parent && parent.baseDepth < MAX_BASE_DEPTH) {
    const numbers = (await store.loadNumberedPages(parent.id)).numbers;
    if (planManifestV2(exact, numbers).bodyBytes + Buffer.byteLength(parent.id) < planManifestV2(exact).bodyBytes) base = numbers;
  }
  expect(header.baseId).toBe(base && parent!.id);
  const encoded = encodeManifestV2(header, exact, base, planManifestV2(exact, base));
  expect(Buffer.compare(encoded.bytes, file)).toBe(0);
  // What a reader decodes is what the session kept for the next session to begin on.
  const kept = await store.loadNumberedPages(rec.id);
  const { reader } = decodeManifestV2Header(file, rec.id);
  const decoded = decodeManifestV2Pages(header, reader, rec.id, base);
  expect(Buffer.from(kept.numbers.kinds)).toEqual(Buffer.from(decoded.kinds));
  expect(Buffer.from(new Uint8Array(kept.numbers.numbers.buffer))).toEqual(Buffer.from(new Uint8Array(decoded.numbers.buffer)));
  expect(rec.imageDigest).toBe(expectedImageDigest(bytes));
  expect((await restoreToBuffer(store, rec)).equals(bytes)).toBe(true);
}

describe('inherited pages take the parent numbers (format 3)', () => {
  it('gives each snapshot the manifest exact lookups give: empty, dirty, same-as-parent, zeroed, shorter and longer images', () =>
    withFirstSnapshot(1, async (store, firstBytes, first) => {
      let bytes = firstBytes;
      let rec = first;
      await expectManifestOfExactLookups(store, rec, bytes);

      /** A dirty-list snapshot: `writes` (page, bytes), the rest inherited. */
      const put = async (writes: [number, Buffer][], byteLength: number) => {
        const s = await store.beginSession({ vm: 'vm', parent: 'auto' });
        for (const [p, page] of writes) await s.writePage(p, page);
        const r = await s.commit({ byteLength, unwritten: 'parent' });
        expect(r.parent).toBe(rec.id);
        const next = Buffer.alloc(byteLength);
        bytes.copy(next, 0, 0, Math.min(byteLength, bytes.length));
        for (const [p, page] of writes) page.copy(next, p * PAGE, 0, Math.max(0, Math.min(PAGE, byteLength - p * PAGE)));
        rec = r;
        bytes = next;
        await expectManifestOfExactLookups(store, rec, bytes);
      };
      await put([], bytes.length); // empty
      await put([], bytes.length); // empty, on a parent that was itself inherited whole
      await put(
        [
          [4, makePage('random', 901)], // new
          [5, bytes.subarray(5 * PAGE, 6 * PAGE)], // the same as the parent's
          [6, Buffer.alloc(PAGE)], // zeroed
          [7, bytes.subarray(9 * PAGE, 10 * PAGE)], // another page's chunk
          [2, makePage('random', 902)], // a zero page written
        ],
        bytes.length,
      );
      await put([[20, makePage('random', 903)]], 200 * PAGE + 100); // shorter: its last page is cut and stored anew
      await put([], 200 * PAGE + 100);
      await put([[325, makePage('random', 904)]], 330 * PAGE); // longer: the pages past the parent are zero
      await put([], 330 * PAGE);
    }));

  it('keeps the shortcut only while no fingerprint was lost: a chunk dropped after the parent committed is refused', () =>
    withFirstSnapshot(2, async (store, bytes, parent) => {
      const empty = async () => {
        const s = await store.beginSession({ vm: 'vm', parent: 'auto' });
        return s.commit({ byteLength: bytes.length, unwritten: 'parent' });
      };
      const kept = await empty();
      // Every chunk was present, and nothing lost since: the next session may trust the parent.
      expect((await store.loadNumberedPages(kept.id)).presentAt).toBe(chunkLossGeneration());
      expect((await store.loadNumberedPages(parent.id)).presentAt).toBeDefined();
      // A repair drops a chunk the kept snapshot names (its fingerprint leaves the table).
      (store.table as ChunkTable).remove(blake3(bytes.subarray(3 * PAGE, 4 * PAGE)));
      expect((await store.loadNumberedPages(kept.id)).presentAt).not.toBe(chunkLossGeneration());
      const err = await empty().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_CORRUPT' });
      expect(String((err as Error).message)).toContain(`parent snapshot ${kept.id}`);
      expect(String((err as Error).message)).toContain('page 3,');
      expect((await store.listSnapshots()).map((r) => r.id).sort()).toEqual([parent.id, kept.id].sort());
    }));

  it('writeKnown takes pages equal to a trusted parent without a probe, and after a loss probes each and refuses the lost one', () =>
    withFirstSnapshot(4, async (store, bytes) => {
      // Every non-zero page offered by digest, as an agent offers a consecutive snapshot.
      const pages: number[] = [];
      for (let p = 0; p < PAGES; p++) if (p % 5 !== 2) pages.push(p);
      const indices = Uint32Array.from(pages);
      const digests = Buffer.concat(pages.map((p) => blake3(bytes.subarray(p * PAGE, (p + 1) * PAGE))));
      const probes = vi.spyOn(store.table as ChunkTable, 'hasFingerprint');
      const s = await store.beginSession({ vm: 'vm', parent: 'auto' });
      probes.mockClear();
      expect([...(await s.writeKnown(indices, digests))]).toEqual(pages.map(() => 1));
      expect(probes).not.toHaveBeenCalled();
      const rec = await s.commit({ byteLength: bytes.length, unwritten: 'zero' });
      expect(Buffer.compare(await restoreToBuffer(store, rec), bytes)).toBe(0);
      // The table loses page 3's fingerprint: the next session's parent is no longer trusted.
      (store.table as ChunkTable).remove(blake3(bytes.subarray(3 * PAGE, 4 * PAGE)));
      const next = await store.beginSession({ vm: 'vm', parent: 'auto' });
      probes.mockClear();
      const written = await next.writeKnown(indices, digests);
      expect(probes).toHaveBeenCalledTimes(pages.length);
      expect([...written]).toEqual(pages.map((p) => (p === 3 ? 0 : 1)));
      await next.abort();
      probes.mockRestore();
    }));

  it('a page written equal to an untrusted parent is looked up before its snapshot is trusted', () =>
    withFirstSnapshot(3, async (store, bytes) => {
      // A session writes page 3 as it was (the same as the parent's: not stored again) and inherits
      // the rest; before it commits, the table loses page 3's fingerprint. It commits, as before
      // these shortcuts (a written page is not an inherited one).
      const s = await store.beginSession({ vm: 'vm', parent: 'auto' });
      await s.writePages(3, bytes.subarray(3 * PAGE, 4 * PAGE));
      await s.drain();
      (store.table as ChunkTable).remove(blake3(bytes.subarray(3 * PAGE, 4 * PAGE)));
      const written = await s.commit({ byteLength: bytes.length, unwritten: 'parent' });
      // But it is not trusted: its child looks page 3 up, and refuses it.
      expect((await store.loadNumberedPages(written.id)).presentAt).toBeUndefined();
      const child = await store.beginSession({ vm: 'vm', parent: 'auto' });
      const err = await child.commit({ byteLength: bytes.length, unwritten: 'parent' }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_CORRUPT' });
      expect(String((err as Error).message)).toContain(`parent snapshot ${written.id}`);
    }));
});
