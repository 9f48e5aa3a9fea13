/**
 * Prepared sessions survive a server restart until committed or aborted; a timeout aborts them; a
 * group's prepared members are committed all or none.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { tempDirs } from './helpers/engine.js';
import { makeImage, restoreRemote, startServer } from './helpers/server.js';
import { Store } from '../src/store/store.js';

const tempDir = tempDirs();

describe('prepared sessions across a restart', () => {
  it('a group prepared before a restart is committed after it, all members, exactly', async () => {
    const root = tempDir('restart');
    const first = await startServer(root);
    const images = [makeImage(30, 41), makeImage(45, 42)];
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await first.connect();
      const s = await c.beginSession({ vm: `vm${i}`, group: 'g1' });
      await s.writePages(0, images[i]);
      ids.push((await s.prepare()).id);
    }
    await first.stop(); // SIGTERM path: prepared ones are kept
    // Reopening the store alone (a local command) must not remove the held manifests either.
    const plain = await Store.open(first.dir, { workers: 0 });
    expect(plain.recovery.orphanManifestsRemoved).toBe(0);
    await plain.close();
    const second = await startServer(root, {}, first.dir);
    try {
      expect(second.server.prepared.size).toBe(2);
      const c = await second.connect();
      expect(await c.listSnapshots()).toEqual([]);
      const recs = await c.commitPrepared(ids, { id: 'g1' });
      expect(recs.map((r) => r.id)).toEqual(ids);
      for (let i = 0; i < 2; i++) expect((await restoreRemote(c, ids[i])).equals(images[i])).toBe(true);
      expect((await second.store.db.get(Buffer.concat([Buffer.from('g'), Buffer.from('g1')])))?.toString()).toContain(ids[1]);
    } finally {
      await second.stop();
    }
    // Committed: no longer held, so a third run adopts nothing.
    const third = await startServer(root, {}, first.dir);
    expect(third.server.prepared.size).toBe(0);
    await third.stop();
  });

  it('a coordinator aborts a group prepared before a restart: all members or none', async () => {
    const root = tempDir('restart');
    const first = await startServer(root);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await first.connect();
      const s = await c.beginSession({ vm: `a${i}`, group: 'g2' });
      await s.writePages(0, makeImage(12, 60 + i));
      ids.push((await s.prepare()).id);
    }
    await first.stop();
    const second = await startServer(root, {}, first.dir);
    try {
      const c = await second.connect();
      // One id that is not prepared: nothing is aborted.
      await expect(c.abortPrepared([...ids, 'ffffffffffffffff'])).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      expect(second.server.prepared.size).toBe(2);
      await c.abortPrepared(ids);
      expect(second.server.prepared.size).toBe(0);
      for (const id of ids) expect(existsSync(second.store.manifestPath(id))).toBe(false);
      await expect(c.commitPrepared(ids, { id: 'g2' })).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
      expect(await c.listSnapshots()).toEqual([]);
    } finally {
      await second.stop();
    }
  });

  it('held prepared snapshots past their deadline are aborted after a restart, manifests removed', async () => {
    const root = tempDir('restart');
    const first = await startServer(root, { preparedTimeoutMs: 400 });
    const c = await first.connect();
    const s = await c.beginSession({ vm: 'late' });
    await s.writePages(0, makeImage(10, 51));
    const { id } = await s.prepare();
    await first.stop();
    const manifest = first.store.manifestPath(id);
    expect(existsSync(manifest)).toBe(true);
    await new Promise((r) => setTimeout(r, 500));
    const second = await startServer(root, { preparedTimeoutMs: 400 }, first.dir);
    try {
      await second.server.sweep(Date.now());
      expect(second.server.prepared.size).toBe(0);
      expect(existsSync(manifest)).toBe(false);
      const c2 = await second.connect();
      await expect(c2.commitPrepared([id])).rejects.toMatchObject({ wire: 'E_SESSION_STATE' });
    } finally {
      await second.stop();
    }
    const again = await Store.open(first.dir, { workers: 0 });
    expect(await again.heldPrepared()).toEqual([]);
    await again.close();
  });
});
