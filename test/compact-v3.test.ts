/**
 * compact on a store of format 3: LZ4 pages go into zstd containers that keep their pages' numbers
 * (no manifest rewritten), the store shrinks, every snapshot reads back exactly and check
 * --read-data is clean; a second compact finds nothing to do.
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { checkStore } from '../src/maintenance/check.js';
import { runCompact } from '../src/maintenance/compact.js';
import { tocItems, tocNumbers } from '../src/maintenance/pack-copy-v3.js';
import { removeDir } from './helpers/engine.js';
import { dirFileBytes } from './helpers/maintenance.js';
import { expectAllReadV3, manifestBytes, numberedStoreAfterForget, openNumbered } from './helpers/numbered.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

describe('compact on store format 3', () => {
  it('puts LZ4 pages into containers with their numbers; exact, smaller, clean', async () => {
    const fx = await numberedStoreAfterForget('compact-v3', { compact: false });
    roots.push(fx.root);
    const manifests = manifestBytes(fx.dir, fx.expected.keys());
    const before = dirFileBytes(path.join(fx.dir, 'packs')).bytes;
    const store = await openNumbered(fx.dir);
    try {
      const numbersBefore = new Set<number>();
      for (const id of store.numbered!.index.packIds)
        for (const n of tocNumbers((await store.packs.readTocV3(id)).toc)) numbersBefore.add(n);
      const report = await runCompact(store, { minAgeMs: 0 });
      expect(report.plan.steps.length).toBeGreaterThan(0);
      expect(report.result!.skipped).toEqual([]);
      const after = dirFileBytes(path.join(fx.dir, 'packs')).bytes;
      expect(after).toBeLessThan(before);
      expect(report.packBytesAfter).toBe(after);
      let containers = 0;
      const numbersAfter = new Set<number>();
      for (const id of store.numbered!.index.packIds) {
        const { toc } = await store.packs.readTocV3(id);
        containers += tocItems(toc).filter((i) => i.codec === CONTAINER_CODEC && i.pages > 1).length;
        for (const n of tocNumbers(toc)) numbersAfter.add(n);
      }
      expect(containers).toBeGreaterThan(0);
      // Numbers kept: only dead ones (of the forgotten snapshots) may go, none is new.
      for (const n of numbersAfter) expect(numbersBefore.has(n)).toBe(true);
      await expectAllReadV3(store, fx.expected, 'after compact');
      expect((await checkStore(store, { readData: true })).problems).toEqual([]);
      const again = await runCompact(store, { minAgeMs: 0 });
      expect(again.plan.steps).toEqual([]);
    } finally {
      await store.close();
    }
    const now = manifestBytes(fx.dir, fx.expected.keys());
    for (const [id, bytes] of manifests) expect(now.get(id)!.equals(bytes), `manifest ${id} not rewritten`).toBe(true);
  });
});
