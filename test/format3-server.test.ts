/**
 * `vnstore serve` on a format-3 store (issue 16): pushed images restore exactly through the server and
 * from the store, a consecutive snapshot sends only the pages the store lacks (dedup by number, the
 * exact index being the packs' TOCs), a group commits across connections, and a prepared snapshot
 * the server holds survives its restart.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { expectedImageDigest, makePage, restoreToBuffer, tempDirs } from './helpers/engine.js';
import { makeImage, PAGE, restoreRemote, startServer, type Running } from './helpers/server.js';

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
