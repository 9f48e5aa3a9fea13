/**
 * `vnstore serve` on a format-3 store (issue 16): pushed images restore exactly through the server and
 * from the store, a consecutive snapshot sends only the pages the store lacks (dedup by number, the
 * exact index being the packs' TOCs), a group commits across connections, and a prepared snapshot
 * the server holds survives its restart. Restores of protocol version 2 are hashed by the client
 * only (damage on disk is caught there), version 1's by the server too; on format-1 and format-2
 * stores the server verifies for both.
 */
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { expectedImageDigest, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';
import { makeImage, PAGE, restoreRemote, startServer, TEST_TOKEN, type Running } from './helpers/server.js';

const tempDir = tempDirs();

async function numberedStore(): Promise<string> {
  const dir = path.join(tempDir('fmt3-server'), 'store');
  await Store.init(dir, { format: 3 });
  return dir;
}

async function withServer(dir: string, fn: (r: Running) => Promise<void>): Promise<void> {
  const r = await startServer(path.dirname(dir), {}, dir, { packTargetBytes: 256 * 1024 });
  try {
    expect(r.store.isNumbered).toBe(true);
    await fn(r);
  } finally {
    await r.stop();
  }
}

describe('server on a format-3 store', () => {
  it('pushed images restore exactly; a consecutive snapshot sends only what the store lacks', async () =>
    withServer(await numberedStore(), async (r) => {
      const asked: number[] = [];
      const lookupExact = r.store.lookupExact.bind(r.store);
      r.store.lookupExact = (digests) => {
        asked.push(digests.length);
        return lookupExact(digests);
      };
      const c = await r.connect();
      const image = makeImage(512, 4, 1000);
      const s1 = await c.beginSession({ vm: 'web', memoryBytes: image.length });
      await s1.writePages(0, image);
      const r1 = await s1.commit();
      expect(r1.imageDigest).toBe(expectedImageDigest(image));
      expect(s1.stats.pagesSent).toBe(s1.stats.pagesOffered);
      expect((await restoreRemote(c, r1.id)).equals(image)).toBe(true);
      expect((await restoreToBuffer(r.store, r1)).equals(image)).toBe(true);
      asked.length = 0;
      const next = Buffer.from(image);
      makePage('random', 9003).copy(next, 3 * PAGE); // new content
      image.copy(next, 10 * PAGE, 1 * PAGE, 2 * PAGE); // page 1's content, now also at page 10
      const s2 = await c.beginSession({ vm: 'web', memoryBytes: next.length });
      await s2.writePages(0, next);
      const r2 = await s2.commit();
      // The moved page is found through the exact index (no bytes sent); the new one is sent. The
      // other lookup is the short last page's, read back to check its bytes past the image's end.
      expect(s2.stats.pagesSent).toBe(1);
      expect(asked).toEqual([1, 1]);
      expect(r2.newChunks).toBe(1);
      expect(r2.base).toBe(r1.id);
      expect((await restoreRemote(c, r2.id)).equals(next)).toBe(true);
    }));

  it('version 2 leaves the hash to the client (a damaged page is caught there); version 1 is checked by the server', async () =>
    withServer(await numberedStore(), async (r) => {
      const image = makeImage(300, 6);
      const c = await r.connect();
      const s = await c.beginSession({ vm: 'db', memoryBytes: image.length });
      await s.writePages(0, image);
      const rec = await s.commit();
      const old = await r.connect(TEST_TOKEN, 1);
      // Both versions restore exactly: v1 as DATA (every page's bytes), v2 as SPARSE_DATA.
      expect((await restoreRemote(c, rec.id)).equals(image)).toBe(true);
      expect((await restoreRemote(old, rec.id)).equals(image)).toBe(true);
      // Damage one stored page (incompressible, so stored raw: its bytes are in the pack as they are).
      const page = [...Array(300).keys()].find((p) => (p * 7 + 6) % 4 === 0)!;
      const bytes = image.subarray(page * PAGE, (page + 1) * PAGE);
      const packsDir = path.join(r.store.dir, 'packs');
      let damaged = false;
      for (const f of await readdir(packsDir, { recursive: true })) {
        const file = path.join(packsDir, String(f));
        if (!(await stat(file)).isFile()) continue;
        const pack = await readFile(file);
        const at = pack.indexOf(bytes);
        if (at < 0) continue;
        pack[at + 2000] ^= 0x40;
        await writeFile(file, pack);
        damaged = true;
      }
      expect(damaged).toBe(true);
      await expect(restoreRemote(c, rec.id)).rejects.toMatchObject({
        code: 'E_CORRUPT',
        message: expect.stringMatching(new RegExp(`page ${page} does not match its digest`)),
      });
      await expect(restoreRemote(old, rec.id)).rejects.toMatchObject({
        code: 'E_CORRUPT',
        message: expect.stringMatching(new RegExp(`page ${page}\\) in pack .* is corrupt`)),
      });
    }));

  it('group commit across connections, and a held prepared snapshot across a server restart', async () => {
    const dir = await numberedStore();
    const images = [makeImage(40, 11), makeImage(50, 12), makeImage(30, 13)];
    let heldId = '';
    await withServer(dir, async (r) => {
      const agents = await Promise.all([r.connect(), r.connect(), r.connect()]);
      const prepared = await Promise.all(
        agents.map(async (a, i) => {
          const s = await a.beginSession({ vm: `vm${i}`, group: 'epoch-1' });
          await s.writePages(0, images[i]);
          return s.prepare();
        }),
      );
      const coordinator = await r.connect();
      const records = await coordinator.commitPrepared(
        prepared.map((p) => p.id),
        { id: 'epoch-1' },
      );
      for (let i = 0; i < 3; i++) expect((await restoreRemote(coordinator, records[i].id)).equals(images[i])).toBe(true);
      // A prepared snapshot the server holds for a coordinator that has not committed yet.
      const s = await agents[0].beginSession({ vm: 'vm0', group: 'epoch-2' });
      const changed = Buffer.from(images[0]);
      makePage('compressible', 4242).copy(changed, 5 * PAGE);
      await s.writePages(0, changed);
      heldId = (await s.prepare()).id;
    });
    await withServer(dir, async (r) => {
      const coordinator = await r.connect();
      const [rec] = await coordinator.commitPrepared([heldId], { id: 'epoch-2' });
      const want = Buffer.from(images[0]);
      makePage('compressible', 4242).copy(want, 5 * PAGE);
      expect((await restoreRemote(coordinator, rec.id)).equals(want)).toBe(true);
      expect((await coordinator.listSnapshots()).length).toBe(4);
    });
  });
});

describe('server on a format-1 or format-2 store', () => {
  it('both protocol versions restore exactly (the server verifies: its chunks are located by fingerprint)', async () => {
    for (const format of [1, 2] as const) {
      const dir = path.join(tempDir(`fmt${format}-server`), 'store');
      await Store.init(dir, { format });
      const r = await startServer(path.dirname(dir), {}, dir, { packTargetBytes: 256 * 1024 });
      try {
        expect(r.store.isNumbered).toBe(false);
        const image = makeImage(700, format, 1234); // several SPARSE_DATA batches, a short last page
        const c = await r.connect();
        const s = await c.beginSession({ vm: 'vm', memoryBytes: image.length });
        await s.writePages(0, image);
        const rec = await s.commit();
        expect((await restoreRemote(c, rec.id)).equals(image)).toBe(true);
        expect((await restoreRemote(await r.connect(TEST_TOKEN, 1), rec.id)).equals(image)).toBe(true);
      } finally {
        await r.stop();
      }
    }
  });
});
