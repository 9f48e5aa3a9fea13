/**
 * Format 3: a snapshot this process just committed is kept in the store's manifest cache as its
 * session built it, so the VM's next session begins on it without reading the manifest back (issue
 * 12: most of an empty dirty-list snapshot's BEGIN). What is kept must be what a reader of the
 * manifest gets, with whole digests where a reader gets the TOC's 24-byte prefixes (so a child
 * inheriting pages need not hash them), and a prepared snapshot that was aborted is never kept.
 */
import { renameSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashPage } from '../src/chunk/hash.js';
import { TOC_DIGEST_BYTES } from '../src/format/pack-v3.js';
import { PageKind, PageTable } from '../src/format/pages.js';
import { NumberedPages } from '../src/format/manifest-v2.js';
import { NumberedManifestLoader } from '../src/store/manifest-loader-v3.js';
import { Store } from '../src/store/store.js';
import { makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();
const PAGE = 4096;

function image(seed: number, pages: number): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < pages; p++) parts.push(makePage(p % 6 === 2 ? 'zero' : p % 4 === 0 ? 'random' : 'compressible', seed * 1000 + p));
  return Buffer.concat(parts);
}

describe('a committed snapshot as the next parent (format 3)', () => {
  it('is kept exactly as a reader of its manifest gets it, and lets the next session begin without the file', async () => {
    const dir = path.join(tmp('committed-parent'), 'store');
    await Store.init(dir, { format: 3 });
    let store = await Store.open(dir, { workers: 0, packTargetBytes: 64 * 1024 });
    const a = image(1, 60);
    const first = await store.beginSession({ vm: 'vm', parent: 'none' });
    await first.writePages(0, a);
    const ra = await first.commit({ byteLength: a.length, unwritten: 'zero' });

    // A dirty-list snapshot: two pages changed, one non-zero page zeroed, the rest inherited (the
    // parent's zero pages too, whose digest slots the session does not clear).
    const b = Buffer.from(a);
    makePage('random', 777).copy(b, 7 * PAGE);
    b.fill(0, 9 * PAGE, 10 * PAGE);
    const s = await store.beginSession({ vm: 'vm', memoryBytes: b.length, parent: 'auto' });
    await s.writePages(7, b.subarray(7 * PAGE, 8 * PAGE));
    await s.writePages(9, b.subarray(9 * PAGE, 10 * PAGE));
    const rb = await s.commit({ byteLength: b.length, unwritten: 'parent' });
    expect(rb.parent).toBe(ra.id);

    // The next session begins on the kept table: the manifest file is not read (moved away here).
    const file = store.manifestPath(rb.id);
    renameSync(file, `${file}.away`);
    const kept = await store.loadNumberedPages(rb.id);
    expect(kept.pages.kinds[9]).toBe(PageKind.Zero);
    expect(kept.pages.kinds[7]).toBe(PageKind.Digest);
    expect(kept.wholeDigests).toBe(true);
    for (let p = 0; p < kept.pages.pageCount; p++)
      if (kept.pages.kinds[p] === PageKind.Digest)
        expect(Buffer.from(kept.pages.digestAt(p))).toEqual(hashPage(b.subarray(p * PAGE, (p + 1) * PAGE)));
    // A dirty-list child of the kept parent: its inherited pages' whole digests come from the kept
    // table (no hashing), and its image digest must be right (restore checks it from the content).
    const c = Buffer.from(b);
    makePage('random', 888).copy(c, 3 * PAGE);
    const next = await store.beginSession({ vm: 'vm', memoryBytes: c.length, parent: 'auto' });
    await next.writePages(3, c.subarray(3 * PAGE, 4 * PAGE));
    const rc = await next.commit({ byteLength: c.length, unwritten: 'parent' });
    expect(rc.parent).toBe(rb.id);
    renameSync(`${file}.away`, file);
    expect((await restoreToBuffer(store, rc)).equals(c)).toBe(true);
    await store.close();

    // What a fresh process reads from the manifest is the same, the digests' TOC prefixes byte for byte.
    store = await Store.open(dir, { workers: 0 });
    try {
      const read = await store.loadNumberedPages(rb.id);
      expect(read.wholeDigests).toBe(false);
      expect(read.pages.pageCount).toBe(kept.pages.pageCount);
      expect(Buffer.from(read.pages.kinds.subarray(0, read.pages.pageCount)).equals(Buffer.from(kept.pages.kinds))).toBe(true);
      for (let p = 0; p < read.pages.pageCount; p++)
        expect(read.pages.digestAt(p).subarray(0, TOC_DIGEST_BYTES)).toEqual(kept.pages.digestAt(p).subarray(0, TOC_DIGEST_BYTES));
      expect(Array.from(read.numbers.kinds)).toEqual(Array.from(kept.numbers.kinds));
      expect(Array.from(read.numbers.numbers)).toEqual(Array.from(kept.numbers.numbers));
      expect((await restoreToBuffer(store, rb)).equals(b)).toBe(true);
      expect((await restoreToBuffer(store, rc)).equals(c)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('is not kept when it was prepared and then aborted', async () => {
    const dir = path.join(tmp('aborted-parent'), 'store');
    await Store.init(dir, { format: 3 });
    const store = await Store.open(dir, { workers: 0 });
    try {
      const a = image(2, 20);
      const s = await store.beginSession({ vm: 'vm', parent: 'none' });
      await s.writePages(0, a);
      const prepared = await s.prepare({ byteLength: a.length, unwritten: 'zero' });
      expect(prepared.loaded).toBeDefined();
      await store.abortPrepared([prepared]);
      await expect(store.loadNumberedPages(prepared.record.id)).rejects.toThrow();
      expect(await store.latestSnapshot('vm')).toBeUndefined();
    } finally {
      await store.close();
    }
  });

  it('is kept for each VM (its latest), more VMs than the manifest cache holds, within a byte budget', async () => {
    const dir = path.join(tmp('many-vms'), 'store');
    await Store.init(dir, { format: 3 });
    const store = await Store.open(dir, { workers: 0 });
    try {
      // 12 VMs commit in turn (the LRU manifest cache holds 8): each one's next parent is kept whole.
      const ids: string[] = [];
      for (let v = 0; v < 12; v++) {
        const s = await store.beginSession({ vm: `vm${v}`, parent: 'none' });
        await s.writePages(0, image(10 + v, 8));
        ids.push((await s.commit()).id);
      }
      for (const id of ids) expect((await store.loadNumberedPages(id)).wholeDigests, id).toBe(true);
      // A VM's next snapshot replaces its kept one.
      const s = await store.beginSession({ vm: 'vm0', parent: 'auto' });
      await s.writePages(0, image(99, 8));
      const next = await s.commit({ unwritten: 'parent' });
      expect((await store.loadNumberedPages(next.id)).wholeDigests).toBe(true);
      expect((await store.loadNumberedPages(ids[0])).wholeDigests).toBe(false); // read from its manifest
    } finally {
      await store.close();
    }
    // The budget: a table of 10 pages costs 10 × (1 + 32 + 1 + 8) = 420 B; 1000 B keep two, the oldest VMs go first.
    const table = () => ({
      pages: new PageTable(10),
      numbers: new NumberedPages(10),
      fileBytes: 0,
      header: undefined as never,
      wholeDigests: true,
    });
    const loader = new NumberedManifestLoader(() => '/nonexistent', undefined as never, undefined as never, 8, 1000);
    loader.remember('a', 'a1', table());
    loader.remember('b', 'b1', table());
    expect(loader.keptBytes).toBe(840);
    loader.remember('a', 'a2', table()); // replaces a1
    expect(loader.keptBytes).toBe(840);
    loader.remember('c', 'c1', table()); // over the budget: b (committed longest ago) goes
    expect(loader.keptBytes).toBe(840);
    expect((await loader.loadWithDigests('a2')).wholeDigests).toBe(true);
    expect((await loader.loadWithDigests('c1')).wholeDigests).toBe(true);
    // b1 and a1 remain only in the LRU cache (not as kept parents): a remembered table is cached too.
    expect((await loader.loadWithDigests('b1')).wholeDigests).toBe(true);
  });
});
