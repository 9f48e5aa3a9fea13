/**
 * Store format 3 in the engine (issue 16, docs/FORMAT3-STATUS.md steps 1-4): a store made by
 * `init --format 3` or by the upgrade opens, ingests, restores exactly and recovers on reopen.
 */
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { NEXT_NUMBER_KEY, readNextNumber } from '../src/store/number-allocator.js';
import { packFileName, parsePackFileName } from '../src/format/pack.js';
import { deletedPackKey, deletedPackValue } from '../src/store/keys.js';
import { openDb } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { upgradeStore } from '../src/maintenance/upgrade.js';
import { forget } from '../src/maintenance/forget.js';
import { makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';
import { putImage } from './helpers/maintenance.js';

const tmp = tempDirs();

function image(seed: number, pages: number, tail = 0): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < pages; p++) {
    const kind = p % 7 === 3 ? 'zero' : p % 5 === 0 ? 'random' : p % 3 === 0 ? 'sparse' : 'compressible';
    parts.push(makePage(kind, seed * 10_000 + p));
  }
  const img = Buffer.concat(parts);
  return tail > 0 ? img.subarray(0, img.length - tail) : img;
}

describe('store format 3 in the engine', () => {
  it('init --format 3: put, a consecutive put, reopen, restore exactly', async () => {
    const dir = path.join(tmp('fmt3-basic'), 'store');
    await Store.init(dir, { format: 3 });
    expect(JSON.parse(readFileSync(path.join(dir, 'vnstore.json'), 'utf8')).version).toBe(3);
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 64 * 1024 });
    const a = image(1, 120, 100);
    const b = Buffer.from(a);
    makePage('random', 99).copy(b, 5 * 4096);
    const ra = await putImage(store, 'vm', a);
    const rb = await putImage(store, 'vm', b);
    expect(rb.base).toBe(ra.id);
    expect(rb.newChunks).toBe(1);
    expect((await restoreToBuffer(store, ra)).equals(a)).toBe(true);
    await store.close();
    store = await Store.open(dir, { workers: 0 });
    try {
      expect(store.isNumbered).toBe(true);
      expect((await restoreToBuffer(store, ra)).equals(a)).toBe(true);
      expect((await restoreToBuffer(store, rb)).equals(b)).toBe(true);
      expect(await readNextNumber(store.db)).toBe(store.numbered!.index.nextNumber);
      // listPacks from the TOCs and files (format 3 keeps no pack records).
      const packs = await store.listPacks();
      const files = readdirSync(path.join(dir, 'packs')).sort();
      expect(packs.map((r) => packFileName(r.id))).toEqual(files);
      expect(packs.reduce((n, r) => n + r.chunks, 0)).toBe(ra.newChunks + rb.newChunks);
      for (const r of packs) {
        expect(r.bytes).toBe(statSync(path.join(dir, 'packs', packFileName(r.id))).size);
        expect(r.payloadBytes).toBeGreaterThan(0);
        expect(r.payloadBytes).toBeLessThan(r.bytes - 16);
        expect(Date.parse(r.sealedAt)).toBeGreaterThan(Date.now() - 600_000);
      }
    } finally {
      await store.close();
    }
    expect(existsSync(path.join(dir, 'chunk-table.bin'))).toBe(false);
    expect(readdirSync(path.join(dir, 'packs')).length).toBeGreaterThan(1);
  });

  it('opens a store the upgrade wrote, restores it exactly, and writes on', async () => {
    const dir = path.join(tmp('fmt3-upgraded'), 'store');
    await Store.init(dir);
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 64 * 1024 });
    const a = image(2, 80);
    const ra = await putImage(store, 'vm', a);
    await store.close();
    await upgradeStore(dir, { packTargetBytes: 64 * 1024 });
    store = await Store.open(dir, { workers: 0 });
    try {
      expect((await restoreToBuffer(store, ra)).equals(a)).toBe(true);
      const b = Buffer.from(a);
      makePage('random', 77).copy(b, 0);
      const rb = await putImage(store, 'vm', b);
      expect(rb.parent).toBe(ra.id);
      expect(rb.newChunks).toBe(1);
      expect((await restoreToBuffer(store, rb)).equals(b)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('recovers on open: swap finished, tmp/ emptied, d records done, copies deleted, damaged packs quarantined, mark kept', async () => {
    const dir = path.join(tmp('fmt3-recovery'), 'store');
    await Store.init(dir, { format: 3 });
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 32 * 1024 });
    const a = image(3, 60);
    const ra = await putImage(store, 'vm', a);
    const nextAfterPut = store.numbered!.allocator.nextNumber;
    await store.close();
    const packsDir = path.join(dir, 'packs');
    const ids = readdirSync(packsDir)
      .map((n) => parsePackFileName(n)!)
      .sort((x, y) => x - y);
    const top = ids[ids.length - 1];
    // A killed gc's copy (every number held by an older pack), a torn pack, a pack gc recorded as deleted.
    copyFileSync(path.join(packsDir, packFileName(ids[0])), path.join(packsDir, packFileName(top + 1)));
    const torn = Buffer.alloc(216, 7);
    torn.write('VNSTPACK', 0, 'latin1');
    torn.writeUInt16LE(3, 8); // a version-3 header, then no valid trailer
    torn.writeUInt16LE(0, 10);
    torn.writeUInt32LE(4096, 12);
    writeFileSync(path.join(packsDir, packFileName(top + 2)), torn);
    copyFileSync(path.join(packsDir, packFileName(ids[1])), path.join(packsDir, packFileName(top + 3)));
    const db = openDb(path.join(dir, 'db'));
    await db.open();
    await db.put(deletedPackKey(top + 3), deletedPackValue({ id: top + 3, reason: 'gc-rewrite', at: new Date().toISOString() }));
    await db.del(NEXT_NUMBER_KEY); // the packs' numbers alone seed the allocator
    await db.close();
    writeFileSync(path.join(dir, 'tmp', '00000099.vpk.tmp'), 'torn');
    // An upgrade killed after its commit point: its copy of manifests/ still under upgrade/.
    mkdirSync(path.join(dir, 'upgrade'));
    cpSync(path.join(dir, 'manifests'), path.join(dir, 'upgrade', 'manifests'), { recursive: true });
    store = await Store.open(dir, { workers: 0 });
    try {
      expect(store.recovery.tempFilesRemoved).toBe(1);
      expect(store.recovery.copiesRemoved).toEqual([top + 1]);
      expect(store.recovery.packsQuarantined).toEqual([packFileName(top + 2)]);
      expect(store.recovery.conflictingPacks).toEqual([]);
      expect(existsSync(path.join(dir, 'upgrade'))).toBe(false);
      expect(existsSync(path.join(dir, 'quarantine', packFileName(top + 2)))).toBe(true);
      expect(readdirSync(packsDir).sort()).toEqual(ids.map(packFileName));
      expect(store.numbered!.allocator.nextNumber).toBe(nextAfterPut);
      // The quarantine's batch wrote the mark.
      expect(await readNextNumber(store.db)).toBe(nextAfterPut);
      expect((await restoreToBuffer(store, ra)).equals(a)).toBe(true);
      // New chunks get numbers above every one given before.
      const b = image(4, 10);
      const rb = await putImage(store, 'other', b);
      expect(rb.newChunks).toBeGreaterThan(0);
      expect(store.numbered!.allocator.nextNumber).toBe(nextAfterPut + rb.newChunks);
      expect((await restoreToBuffer(store, rb)).equals(b)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('restore verifies every page: a flipped payload byte or a missing pack is E_CORRUPT, never wrong bytes', async () => {
    const dir = path.join(tmp('fmt3-damage'), 'store');
    await Store.init(dir, { format: 3 });
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 32 * 1024 });
    const a = image(5, 40);
    const ra = await putImage(store, 'vm', a);
    await store.close();
    const packsDir = path.join(dir, 'packs');
    const names = readdirSync(packsDir).sort();
    // A payload byte of the first pack (its TOC and trailer still check: only the page digest catches it).
    const first = path.join(packsDir, names[0]);
    const bytes = readFileSync(first);
    bytes[16 + 100] ^= 0x40;
    writeFileSync(first, bytes);
    store = await Store.open(dir, { workers: 0 });
    try {
      await expect(restoreToBuffer(store, ra)).rejects.toMatchObject({ code: 'E_CORRUPT', message: expect.stringMatching(/corrupt/) });
    } finally {
      await store.close();
    }
    bytes[16 + 100] ^= 0x40;
    writeFileSync(first, bytes);
    rmSync(path.join(packsDir, names[names.length - 1]));
    store = await Store.open(dir, { workers: 0 });
    try {
      await expect(restoreToBuffer(store, ra)).rejects.toMatchObject({ code: 'E_CORRUPT' });
    } finally {
      await store.close();
    }
  });

  it('forget on format 3: a forgotten base manifest is kept for its child, which restores exactly after reopen', async () => {
    const dir = path.join(tmp('fmt3-forget'), 'store');
    await Store.init(dir, { format: 3 });
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 32 * 1024 });
    // Pages repeat out of order: a self-contained manifest lists numbers, a delta is three runs.
    const a = Buffer.concat(Array.from({ length: 64 }, (_, p) => makePage('random', 500 + (p < 16 ? p : (p * 7) % 16))));
    const b = Buffer.from(a);
    makePage('random', 9999).copy(b, 7 * 4096);
    const ra = await putImage(store, 'vm', a);
    const rb = await putImage(store, 'vm', b);
    expect(rb.base).toBe(ra.id);
    const report = await forget(store, { ids: [ra.id] });
    expect(report.manifestsKeptAsBase).toEqual([ra.id]);
    await store.close();
    store = await Store.open(dir, { workers: 0 });
    try {
      expect((await store.listSnapshots()).map((r) => r.id)).toEqual([rb.id]);
      expect(existsSync(store.manifestPath(ra.id))).toBe(true);
      expect((await restoreToBuffer(store, rb)).equals(b)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
