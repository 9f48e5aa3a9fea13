/**
 * The data half of `vnstore upgrade`: a format-1/2 store with delta chains, shared pages, zero pages,
 * a short last page, zstd containers (after compact), a kept base (forgotten but needed by a child)
 * and a container the index holds only part of, converted into version-3 packs and version-2
 * manifests; every snapshot then reads back bit-exact from the new files alone (image digest and
 * every page verified), the old store is untouched, and the manifests shrink.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { chunkKey, scanChunkIndex } from '../src/store/db.js';
import { listKeptBases } from '../src/store/keys.js';
import { loadNumberIndex } from '../src/store/number-load.js';
import { PackReader } from '../src/store/pack-reader.js';
import { loadNumberedManifest, readImageV3 } from '../src/store/read-v3.js';
import { runCompact } from '../src/maintenance/compact.js';
import { forget } from '../src/maintenance/forget.js';
import { convertChunks, convertManifests } from '../src/maintenance/upgrade-v3.js';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { hashPage } from '../src/chunk/hash.js';
import { makePage } from './helpers/engine.js';
import { expectAllRestore, newStore, putImage } from './helpers/maintenance.js';

function image(seed: number, pages: number, tail = 0): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < pages; p++) {
    const kind = p % 7 === 3 ? 'zero' : p % 5 === 0 ? 'random' : p % 3 === 0 ? 'sparse' : 'compressible';
    parts.push(makePage(kind, seed * 1000 + p));
  }
  if (tail > 0) parts.push(makePage('compressible', seed * 1000 + pages).subarray(0, tail));
  return Buffer.concat(parts);
}

/** `base` with every `every`-th page from `from` replaced by a new one. */
function changed(base: Buffer, seed: number, every: number, from = 1): Buffer {
  const out = Buffer.from(base);
  for (let p = from; (p + 1) * 4096 <= out.length; p += every) makePage('compressible', seed * 1000 + p).copy(out, p * 4096);
  return out;
}

describe('upgrade to store format 3: chunks and manifests', () => {
  it('converts every chunk and manifest, and every snapshot reads back exactly from the new files', async () => {
    const { root, store } = await newStore('upgrade-v3', 64 * 1024, 1);
    const expected = new Map<string, Buffer>();
    try {
      const a0 = image(1, 300, 1234);
      const a1 = changed(a0, 2, 9);
      const a2 = changed(a1, 3, 4);
      const b0 = Buffer.concat([a0.subarray(0, 150 * 4096), image(4, 100)]); // shares pages with vm a
      const recs = [];
      for (const [vm, img] of [
        ['a', a0],
        ['b', b0],
        ['a', a1],
        ['a', a2],
      ] as const) {
        const rec = await putImage(store, vm, img);
        expected.set(rec.id, img);
        recs.push(rec);
      }
      expect(recs[2].base).toBe(recs[0].id); // a delta chain a0 <- a1 <- a2
      const lone = await putImage(store, 'lone', image(9, 40));
      await runCompact(store, { minAgeMs: 0 });
      // a1 forgotten: its manifest stays as a2's base (a kept base); lone forgotten, no gc.
      await forget(store, { ids: [recs[2].id, lone.id] });
      expected.delete(recs[2].id);
      const kept = (await listKeptBases(store.db)).map((k) => k.id);
      expect(kept).toEqual([recs[2].id]);
      // Drop the index entries of some of lone's pages: containers the index holds only part of.
      const lonePages = image(9, 40);
      for (let p = 0; p < 40; p += 2) {
        if (p % 7 !== 3) await store.db.del(chunkKey(hashPage(lonePages.subarray(p * 4096, (p + 1) * 4096))));
      }
      let containers = 0;
      let indexed = 0;
      await scanChunkIndex(store.db, (_k, loc) => {
        indexed++;
        if (loc?.codec === CONTAINER_CODEC) containers++;
      });
      expect(containers).toBeGreaterThan(indexed / 2);

      const target = { packs: path.join(root, 'v3/packs'), manifests: path.join(root, 'v3/manifests'), tmp: path.join(root, 'v3/tmp') };
      const chunks = await convertChunks(store, { ...target, packTargetBytes: 128 * 1024 });
      expect(chunks.nextNumber).toBe(indexed);
      expect(chunks.splitContainers).toBeGreaterThan(0);
      expect(chunks.packIds.length).toBeGreaterThan(1);
      const live = await store.listSnapshots();
      const sizes = await convertManifests(store, [...live.map((r) => r.id), ...kept], chunks.numberOf, target);
      const oldBytes = live.reduce((s, r) => s + r.manifestBytes, 0);
      const newBytes = live.reduce((s, r) => s + sizes.get(r.id)!, 0);
      expect(newBytes).toBeLessThan(oldBytes);

      const reader = new PackReader(target.packs);
      try {
        const load = await loadNumberIndex(reader, chunks.packIds);
        expect({ damaged: load.damaged, copies: load.copies, conflicting: load.conflicting }).toEqual({
          damaged: [],
          copies: [],
          conflicting: [],
        });
        expect(load.index.size).toBe(indexed);
        for (const rec of live) {
          const { header, pages } = await loadNumberedManifest(target.manifests, rec.id);
          expect(header.baseId).toBe(rec.base);
          const got = await readImageV3(reader, load, header, pages);
          expect(got.equals(expected.get(rec.id)!), `${rec.vm} ${rec.id} reads back exactly`).toBe(true);
        }
      } finally {
        await reader.close();
      }
      await expectAllRestore(store, expected, 'the old store after conversion');
    } finally {
      await store.close();
    }
  });
});
