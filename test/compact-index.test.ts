/**
 * compact moves every chunk's index entry; LevelDB would keep the superseded versions until its own
 * compactions reach them (the index of a compacted store of real guest memory measured twice its
 * size: bench/RESULTS.md, issue 16). compact ends with a full compaction of the index.
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCompact } from '../src/maintenance/compact.js';
import { forget } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { compactAllKeys } from '../src/store/db.js';
import { removeDir, restoreToBuffer } from './helpers/engine.js';
import { dirFileBytes, newStore, putImage, textPage } from './helpers/maintenance.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

describe('the index after compact', () => {
  it('holds no superseded entries: a full LevelDB compaction afterwards finds nothing to drop', async () => {
    const { root, dir, store } = await newStore('compact-index', 1 << 20, 1); // LevelDB entries: the legacy index
    roots.push(root);
    const images = [0, 1, 2].map((vm) => Buffer.concat(Array.from({ length: 1000 }, (_, i) => textPage(vm * 10_000 + i))));
    const recs = [];
    for (const [vm, image] of images.entries()) recs.push(await putImage(store, `vm${vm}`, image));
    const db = () => dirFileBytes(path.join(dir, 'db')).bytes;
    const report = await runCompact(store, { minAgeMs: 0 });
    expect(report.result!.chunksCopied).toBe(3000);
    const afterCompact = db();
    await compactAllKeys(store.db);
    const compacted = db();
    // Within LevelDB's own bookkeeping (a new manifest and log file): nothing of the index to drop.
    expect(afterCompact).toBeLessThan(compacted * 1.05 + 4096);
    for (const [k, rec] of recs.entries()) expect((await restoreToBuffer(store, rec)).equals(images[k])).toBe(true);
    await store.close();
  });

  it('after forget, a full gc leaves no superseded entries either', async () => {
    const { root, dir, store } = await newStore('gc-index', 1 << 20, 1);
    roots.push(root);
    const images = [0, 1, 2].map((vm) => Buffer.concat(Array.from({ length: 1000 }, (_, i) => textPage(vm * 10_000 + i))));
    const recs = [];
    for (const [vm, image] of images.entries()) recs.push(await putImage(store, `vm${vm}`, image));
    await forget(store, { ids: [recs[0].id, recs[1].id] });
    const db = () => dirFileBytes(path.join(dir, 'db')).bytes;
    const report = await runGc(store, {});
    expect(report.result!.chunksRemoved).toBe(2000);
    const afterGc = db();
    await compactAllKeys(store.db);
    expect(afterGc).toBeLessThan(db() * 1.05 + 4096);
    expect((await restoreToBuffer(store, recs[2])).equals(images[2])).toBe(true);
    await store.close();
  });
});
