/**
 * The one pack reader (issue 11): tables of contents, whole-pack reads, chunks named by content and
 * verified single-chunk reads all go through its cache of open handles; damage is a CorruptError
 * naming the pack; an evicted handle is closed, so the next read sees the file now at that path.
 */
import { openSync, closeSync, ftruncateSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { hashPage } from '../src/chunk/hash.js';
import { packFileName } from '../src/format/pack.js';
import { Store } from '../src/store/store.js';
import { initStore, makePage, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();

async function storeWithOnePack(): Promise<{ store: Store; pages: Buffer[]; packId: number }> {
  const dir = await initStore(tmp('pack-reader'), 1); // the legacy pack layout (format 3: pack-v3-files.test.ts)
  const pages = [makePage('random', 1), makePage('compressible', 2), makePage('random', 3)];
  let store = await Store.open(dir, { workers: 0 });
  const s = await store.beginSession({ vm: 'vm1' });
  await s.writePages(0, Buffer.concat(pages));
  await s.commit();
  await store.close();
  store = await Store.open(dir, { workers: 0 });
  const packs = await store.listPacks();
  expect(packs.length).toBe(1);
  return { store, pages, packId: packs[0].id };
}

describe('PackReader', () => {
  it('reads the table of contents, the whole pack and its chunks by content, alike', async () => {
    const { store, pages, packId } = await storeWithOnePack();
    try {
      const toc = await store.packs.readToc(packId);
      const whole = await store.packs.readWhole(packId);
      expect(whole.data.length).toBe(statSync(store.packs.packPath(packId)).size);
      expect(whole.entries).toEqual(toc);
      const chunks = await store.packs.readChunks(packId);
      expect(chunks.map((c) => c.digest.toString('hex')).sort()).toEqual(pages.map((p) => hashPage(p).toString('hex')).sort());
      for (const c of chunks) {
        const page = await store.packs.readVerified(
          { pack: packId, offset: c.offset, storedLength: c.storedLength, codec: c.codec },
          c.digest,
        );
        expect(Buffer.from(page!).equals(pages.find((p) => hashPage(p).equals(c.digest))!)).toBe(true);
        // The same bytes under another digest do not verify.
        expect(
          await store.packs.readVerified(
            { pack: packId, offset: c.offset, storedLength: c.storedLength, codec: c.codec },
            Buffer.alloc(32),
          ),
        ).toBeUndefined();
      }
    } finally {
      await store.close();
    }
  });

  it('names the pack when it is truncated, and sees a replaced file only after evict', async () => {
    const { store, packId } = await storeWithOnePack();
    const file = store.packs.packPath(packId);
    const original = readFileSync(file);
    try {
      await store.packs.readToc(packId); // opens and caches a handle
      // Replace the file (a new inode) with a truncated copy: the cached handle still reads the old one.
      writeFileSync(`${file}.new`, original.subarray(0, original.length - 1));
      renameSync(`${file}.new`, file);
      expect((await store.packs.readWhole(packId)).data.equals(original)).toBe(true);
      await store.packs.evict(packId);
      await expect(store.packs.readWhole(packId)).rejects.toMatchObject({
        code: 'E_CORRUPT',
        message: expect.stringContaining(packFileName(packId)),
      });
      await expect(store.packs.readToc(packId)).rejects.toMatchObject({ code: 'E_CORRUPT' });
      // Truncated in place (same inode, handle cached): seen at once.
      writeFileSync(file, original);
      await store.packs.evict(packId);
      expect((await store.packs.readWhole(packId)).data.equals(original)).toBe(true);
      const fd = openSync(file, 'r+');
      ftruncateSync(fd, 20);
      closeSync(fd);
      await expect(store.packs.readToc(packId)).rejects.toMatchObject({ code: 'E_CORRUPT', message: expect.stringContaining('too short') });
    } finally {
      writeFileSync(file, original);
      await store.close();
    }
  });
});
