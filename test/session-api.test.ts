/**
 * The session API's daemon path. Pages a session leaves unwritten inherit the parent's chunks (agents
 * send only dirty pages): an inherited chunk the store no longer holds (a repair dropped its pack,
 * say) must fail the commit, not produce a snapshot that cannot be restored; a rewritten page heals
 * it. writeScattered refuses malformed page lists before anything is queued.
 */
import { blake3 } from '@napi-rs/blake-hash';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chunkKey, KEY_GROUP, stampChunkGeneration, type GroupRecord, type SnapshotRecord } from '../src/store/db.js';
import type { ChunkTable } from '../src/index/chunk-table.js';
import { checkStore } from '../src/maintenance/check.js';
import { runGc } from '../src/maintenance/gc.js';
import { restoreSnapshot } from '../src/store/restore.js';
import { Store, TABLE_FILE } from '../src/store/store.js';
import { makePage, initStore, tempDirs, restoreToBuffer, PAGE } from './helpers/engine.js';

const tempDir = tempDirs();

async function freshStore(format?: number): Promise<Store> {
  return Store.open(await initStore(tempDir('inherit'), format), { workers: 0 });
}

async function storeWithParent(format?: number) {
  const store = await freshStore(format);
  const image = Buffer.concat(Array.from({ length: 8 }, (_, i) => makePage('random', 500 + i)));
  const s = await store.beginSession({ vm: 'x' });
  await s.writePages(0, image);
  const parent = await s.commit();
  return { store, image, parent };
}

type WithParent = Awaited<ReturnType<typeof storeWithParent>>;

/** Runs `fn` on a store holding an 8-page parent snapshot of VM x, and closes the store after. */
async function withParent(fn: (ctx: WithParent) => Promise<void>, format?: number): Promise<void> {
  const ctx = await storeWithParent(format);
  try {
    await fn(ctx);
  } finally {
    await ctx.store.close();
  }
}

/** `image` with some pages replaced. */
function patched(image: Buffer, pages: [number, Uint8Array][]): Buffer {
  const out = Buffer.from(image);
  for (const [i, page] of pages) out.set(page, i * PAGE);
  return out;
}

async function expectRestores(store: Store, rec: SnapshotRecord, expected: Buffer): Promise<void> {
  expect((await restoreToBuffer(store, rec)).equals(expected)).toBe(true);
}

/** A dirty-page session on the parent: writes only `written`, commits with the rest inherited. */
async function dirtyPut(store: Store, written: Map<number, Buffer>) {
  const s = await store.beginSession({ vm: 'x' });
  for (const [i, page] of written) await s.writePage(i, page);
  return s.commit({ byteLength: 8 * PAGE });
}

describe('inherited pages', () => {
  it('a chunk gone from the store fails the commit with a clear error, and nothing is listed', () =>
    withParent(async ({ store, image, parent }) => {
      const lost = blake3(image.subarray(3 * PAGE, 4 * PAGE));
      // What a repair that quarantined its pack leaves behind: the entry gone from index and table.
      const batch = store.db.batch();
      batch.del(chunkKey(lost));
      const token = stampChunkGeneration(batch);
      await batch.write();
      store.indexChanged(token, { removed: [lost] });
      const err = await dirtyPut(store, new Map([[0, makePage('random', 900)]])).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_CORRUPT' });
      expect(String((err as Error).message)).toContain(`parent snapshot ${parent.id}`);
      // Named by the digest prefix a format-3 TOC keeps (its first 24 bytes; all 32 on format 1/2).
      expect(String((err as Error).message)).toContain(`page 3, chunk ${lost.toString('hex').slice(0, 48)}`);
      expect((await store.listSnapshots()).map((r) => r.id)).toEqual([parent.id]);
      // Writing the page again stores its chunk anew: the snapshot commits and restores exactly.
      const healed = await dirtyPut(
        store,
        new Map([
          [0, makePage('random', 900)],
          [3, image.subarray(3 * PAGE, 4 * PAGE)],
        ]),
      );
      await expectRestores(store, healed, patched(image, [[0, makePage('random', 900)]]));
    }));

  it('a chunk the table has forgotten but the index holds is confirmed exactly, and the commit succeeds', () =>
    withParent(async ({ store, image }) => {
      (store.table as ChunkTable).remove(blake3(image.subarray(5 * PAGE, 6 * PAGE))); // forged: past the read-only view
      const r = await dirtyPut(store, new Map([[1, makePage('random', 901)]]));
      await expectRestores(store, r, patched(image, [[1, makePage('random', 901)]]));
    }, 1)); // the LevelDB index behind the table: format 1/2
});

describe('writeScattered input', () => {
  it('refuses a length mismatch, bad indices and pages beyond the memory size, and the session stays usable', () =>
    withParent(async ({ store, image }) => {
      const s = await store.beginSession({ vm: 'x', memoryBytes: 8 * PAGE });
      const page = makePage('random', 77);
      await expect(s.writeScattered([1, 2], page)).rejects.toMatchObject({ code: 'E_USAGE' });
      await expect(s.writeScattered([-1], page)).rejects.toMatchObject({ code: 'E_USAGE' });
      await expect(s.writeScattered([1.5], page)).rejects.toMatchObject({ code: 'E_USAGE' });
      await expect(s.writeScattered([2, 8], Buffer.concat([page, page]))).rejects.toMatchObject({ code: 'E_SESSION' });
      // Nothing of a refused call was queued: page 2 still inherits the parent's.
      await s.writeScattered([6], page);
      await expectRestores(store, await s.commit(), patched(image, [[6, page]]));
    }));
});

describe('a refused writeScattered leaves no trace', () => {
  it('does not stretch the image length of a session without a declared size', () =>
    withParent(async ({ store, image }) => {
      const s = await store.beginSession({ vm: 'x' });
      await expect(s.writeScattered([30, -1], Buffer.alloc(2 * PAGE, 1))).rejects.toMatchObject({ code: 'E_USAGE' });
      await s.writeScattered([1], makePage('random', 78));
      const r = await s.commit(); // length: the parent's pages are inherited up to the furthest write
      expect(r.byteLength).toBe(2 * PAGE);
      await expectRestores(store, r, Buffer.concat([image.subarray(0, PAGE), makePage('random', 78)]));
    }));
});

describe('a store opened without its chunk table (catalog work)', () => {
  it('lists snapshots, refuses sessions and restores, and leaves the saved table untouched', async () => {
    const { store, image, parent } = await storeWithParent(1); // chunk-table.bin: format 1/2
    const dir = store.dir;
    await store.close();
    const tableFile = path.join(dir, TABLE_FILE);
    const savedTable = readFileSync(tableFile);
    const catalog = await Store.open(dir, { workers: 0, chunkTable: false });
    try {
      expect((await catalog.listSnapshots()).map((r) => r.id)).toEqual([parent.id]);
      await expect(catalog.beginSession({ vm: 'x' })).rejects.toMatchObject({ code: 'E_USAGE' });
      await expect(restoreSnapshot(catalog, parent, { write: () => undefined })).rejects.toMatchObject({ code: 'E_USAGE' });
    } finally {
      await catalog.close();
    }
    expect(readFileSync(tableFile).equals(savedTable)).toBe(true);
    const full = await Store.open(dir, { workers: 0 });
    try {
      expect(full.table.size).toBe(8);
      await expectRestores(full, parent, image);
    } finally {
      await full.close();
    }
  });
});

describe('single pages are gathered', () => {
  it('are stored only when sent (a block, another write, or commit), once per page; an abort drops them unstored', () =>
    withParent(async ({ store, image }) => {
      const chunksBefore = store.table.size;
      const dropped = await store.beginSession({ vm: 'x' });
      for (let i = 0; i < 3; i++) await dropped.writePage(i, makePage('random', 800 + i));
      await dropped.abort();
      expect(store.table.size).toBe(chunksBefore);
      const s = await store.beginSession({ vm: 'x' });
      await s.writePage(2, makePage('random', 810));
      expect(store.table.size).toBe(chunksBefore); // gathered, not yet sent
      await s.writePages(3, makePage('random', 811)); // another write sends the gathered page first
      await s.drain();
      expect(store.table.size).toBe(chunksBefore + 2);
      // Written twice before it is sent: only the last copy is ever stored.
      await s.writePage(4, makePage('random', 812));
      await s.writePage(4, makePage('random', 813));
      const r = await s.commit({ byteLength: 8 * PAGE });
      expect(store.table.size).toBe(chunksBefore + 3);
      await expectRestores(
        store,
        r,
        patched(image, [
          [2, makePage('random', 810)],
          [3, makePage('random', 811)],
          [4, makePage('random', 813)],
        ]),
      );
    }));
});

describe('page buffers are reused', () => {
  it('a short last page is zero-padded even in memory that held another block', async () => {
    const store = await freshStore();
    try {
      const s = await store.beginSession({ vm: 'pad', parent: 'none' });
      await s.writePages(0, makePage('random', 1)); // its buffer goes back to the pool once applied
      await s.drain();
      const short = makePage('random', 2).subarray(0, 100);
      await s.writePages(1, short); // the image's short last page
      const r = await s.commit({ byteLength: PAGE + 100 });
      await expectRestores(store, r, Buffer.concat([makePage('random', 1), short]));
      // A longer child inherits the page whole: its padding must be zeros, not the old block's bytes.
      const child = await store.beginSession({ vm: 'pad', parent: r.id });
      await child.writePages(2, makePage('random', 3));
      const c = await child.commit({ byteLength: 3 * PAGE });
      await expectRestores(store, c, Buffer.concat([makePage('random', 1), short, Buffer.alloc(PAGE - 100), makePage('random', 3)]));
    } finally {
      await store.close();
    }
  });
});

describe("a short page is only the image's last page", () => {
  it('is refused anywhere else (E_USAGE), at the write with a memory size, else at commit; a whole rewrite heals it', async () => {
    const store = await freshStore();
    try {
      const short = makePage('random', 2).subarray(0, 100);
      // Without a memory size the image's end is known at commit.
      const s = await store.beginSession({ vm: 'trunc', parent: 'none' });
      await s.writePages(0, makePage('random', 1));
      await s.writePages(1, short); // a truncated page from a daemon
      await s.writePages(2, makePage('random', 3));
      await expect(s.commit({ byteLength: 3 * PAGE })).rejects.toMatchObject({
        code: 'E_USAGE',
        message: expect.stringMatching(/page 1 was written short/),
      });
      await s.abort();
      // With one it is refused at the write itself, and nothing is recorded.
      const m = await store.beginSession({ vm: 'trunc', parent: 'none', memoryBytes: 3 * PAGE });
      await expect(m.writePages(1, short)).rejects.toMatchObject({ code: 'E_USAGE' });
      await expect(m.writePage(2, short)).rejects.toMatchObject({ code: 'E_USAGE' });
      await m.abort();
      // A short write later replaced by the whole page is no truncation.
      const h = await store.beginSession({ vm: 'trunc', parent: 'none' });
      await h.writePages(0, Buffer.concat([makePage('random', 1), short]));
      await h.writeScattered([1, 2], Buffer.concat([makePage('random', 2), makePage('random', 3)]));
      const r = await h.commit({ byteLength: 3 * PAGE });
      await expectRestores(store, r, Buffer.concat([makePage('random', 1), makePage('random', 2), makePage('random', 3)]));
      expect((await store.listSnapshots('trunc')).map((x) => x.id)).toEqual([r.id]);
    } finally {
      await store.close();
    }
  });
});

describe('sessions of one group committed separately', () => {
  it('all land in the group record, even when their commits run at once', async () => {
    const store = await freshStore();
    try {
      const sessions = await Promise.all(['a', 'b', 'c', 'd'].map((vm) => store.beginSession({ vm, group: 'epoch-1' })));
      await Promise.all(sessions.map((s, i) => s.writePages(0, Buffer.concat([makePage('random', 900 + i), makePage('compressible', i)]))));
      const records = await Promise.all(sessions.map((s) => s.commit()));
      const group = JSON.parse(
        (await store.db.get(Buffer.concat([Buffer.of(KEY_GROUP), Buffer.from('epoch-1')])))!.toString('utf8'),
      ) as GroupRecord;
      expect([...group.snapshots].sort()).toEqual(records.map((r) => r.id).sort());
      const report = await checkStore(store);
      expect(report.problems).toEqual([]);
      expect(report.warnings).toEqual([]);
    } finally {
      await store.close();
    }
  });
});

describe('abort once a commit has begun', () => {
  it("does nothing: the commit completes, and a gc meanwhile still sees the session's chunks as live", async () => {
    const store = await Store.open(await initStore(tempDir('abort-commit')), { workers: 0, packTargetBytes: 64 * 1024 });
    try {
      const image = Buffer.concat(Array.from({ length: 96 }, (_, i) => makePage('random', 7000 + i)));
      const s = await store.beginSession({ vm: 'x' });
      await s.writePages(0, image);
      const committing = s.commit();
      await s.abort();
      const gc = runGc(store, { maxUnused: { bytes: 0 } });
      const record = await committing;
      const { live } = await gc;
      // Whenever gc looked, the snapshot was live: a session, a prepared manifest or a commit record.
      expect(live.sessions + live.preparedManifests + live.snapshots).toBeGreaterThanOrEqual(1);
      expect((await restoreToBuffer(store, record)).equals(image)).toBe(true);
      expect((await checkStore(store)).problems).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
