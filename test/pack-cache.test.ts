/**
 * The page cache of old packs (src/store/pack-cache.ts): the newest packs a process writes stay
 * cached, older ones' pages are dropped once durable, and nothing else changes: every snapshot
 * restores exactly from packs whose pages were dropped.
 */
import { spawnSync } from 'node:child_process';
import { fsyncSync, openSync, closeSync, readdirSync, writeSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dropFileCache, nativeAddon } from '../src/chunk/codec.js';
import { DEFAULT_PACK_CACHE_BYTES, PackCacheWindow } from '../src/store/pack-cache.js';
import { DEFAULT_PACK_TARGET_BYTES } from '../src/store/pack-writer.js';
import { Store } from '../src/store/store.js';
import { makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();
const MIB = 1024 * 1024;

/** Bytes of `file` resident in the page cache (util-linux fincore), or undefined without fincore. */
function residentBytes(file: string): number | undefined {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', file], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  return Number(r.stdout.trim());
}

const canMeasure = nativeAddon() !== undefined && spawnSync('fincore', ['--version']).status === 0;

describe('PackCacheWindow', () => {
  it('keeps the newest packs up to its limit and drops the oldest beyond it, each once, in order', () => {
    const dropped: string[] = [];
    const w = new PackCacheWindow(100, (p) => (dropped.push(p), Promise.resolve(0)));
    w.sealed('a', 40);
    w.sealed('b', 40);
    expect(dropped).toEqual([]);
    w.sealed('c', 40); // 120 > 100: a goes
    expect(dropped).toEqual(['a']);
    expect(w.bytes).toBe(80);
    w.sealed('d', 90); // 170: b and c go
    expect(dropped).toEqual(['a', 'b', 'c']);
    w.sealed('e', 500); // larger than the window alone: d and e itself go
    expect(dropped).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(w.bytes).toBe(0);
  });

  it('at the default limit, the ninth default-sized pack drops the first; Infinity drops nothing', () => {
    const dropped: string[] = [];
    const w = new PackCacheWindow(undefined, (p) => (dropped.push(p), Promise.resolve(0)));
    expect(w.limitBytes).toBe(DEFAULT_PACK_CACHE_BYTES);
    // A sealed pack is its target plus its table of contents: a little over 32 MiB.
    const packBytes = DEFAULT_PACK_TARGET_BYTES + 64 * 1024;
    for (let k = 0; k < 7; k++) w.sealed(`p${k}`, packBytes);
    expect(dropped).toEqual([]);
    w.sealed('p7', packBytes);
    expect(dropped).toEqual(['p0']);
    const all = new PackCacheWindow(Infinity, () => {
      throw new Error('Infinity drops nothing');
    });
    for (let k = 0; k < 100; k++) all.sealed(`p${k}`, DEFAULT_PACK_TARGET_BYTES);
  });

  it('a failed drop (the pack is gone, the addon refused) is ignored', async () => {
    const w = new PackCacheWindow(0, () => Promise.reject(new Error('no')));
    w.sealed('x', 1);
    await new Promise((r) => setImmediate(r));
    expect(w.bytes).toBe(0);
  });
});

describe.runIf(canMeasure)('dropping pack pages from the page cache', () => {
  it("dropFileCache empties a durable file's cached pages, and answers ENOENT for a missing file", async () => {
    const dir = tempDir('drop');
    const file = path.join(dir, 'f');
    const fd = openSync(file, 'w');
    const block = Buffer.alloc(MIB, 7);
    for (let k = 0; k < 4; k++) writeSync(fd, block);
    fsyncSync(fd);
    closeSync(fd);
    expect(residentBytes(file)).toBe(4 * MIB);
    expect(await dropFileCache(file)).toBe(0);
    expect(residentBytes(file)).toBe(0);
    expect(await dropFileCache(path.join(dir, 'missing'))).toBe(2); // ENOENT
  });

  it("a store's writer keeps the newest packs cached, drops the older ones' pages, and restores every snapshot exactly", async () => {
    const dir = path.join(tempDir('window'), 'store');
    await Store.init(dir, { format: 3 });
    // Packs of ~1 MiB of random pages (LZ4 cannot shrink them), a window of ~2.5 packs.
    const store = await Store.open(dir, { workers: 0, packTargetBytes: MIB, packCacheBytes: 2.5 * MIB });
    const images: Buffer[] = [];
    const records = [];
    try {
      for (let v = 0; v < 3; v++) {
        const image = Buffer.concat(Array.from({ length: 512 }, (_, p) => makePage(p % 5 === 0 ? 'zero' : 'random', v * 1000 + p)));
        const s = await store.beginSession({ vm: `vm${v}`, parent: 'none' });
        await s.writePages(0, image);
        records.push(await s.commit({ byteLength: image.length, unwritten: 'zero' }));
        images.push(image);
      }
      await new Promise((r) => setTimeout(r, 100)); // the drops run on the thread pool
      const packsDir = Store.paths(dir).packs;
      const packs = readdirSync(packsDir).sort();
      expect(packs.length).toBeGreaterThanOrEqual(5);
      const resident = packs.map((p) => residentBytes(path.join(packsDir, p))!);
      // The two newest are cached whole; every pack before the window holds no page.
      const newest = resident.slice(-2);
      const old = resident.slice(0, -3);
      expect(newest.every((b) => b > MIB / 2)).toBe(true);
      expect(old.length).toBeGreaterThan(0);
      expect(old).toEqual(old.map(() => 0));
      for (let v = 0; v < 3; v++) expect((await restoreToBuffer(store, records[v])).equals(images[v])).toBe(true);
    } finally {
      await store.close();
    }
  });
});
