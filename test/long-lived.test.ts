/**
 * A long-lived process (the snapshot daemon): one store, its page workers started from open, many
 * puts and restores. A path names a file only at the moment of the call: an image replaced at the
 * same path between two puts, or a restore output removed and created again under the same name,
 * must be read and written as the files they are now (workers once kept descriptors by path); and
 * packs that gc removes must not stay open in any thread (their space would not be freed). And the
 * daemon's mix: sessions of several groups at once (pre-copy rewrites, aborts), forget and gc while
 * they run, restores racing a gc that rewrites packs; everything committed restores exactly and
 * check finds nothing (sessions of one group committed at once once dropped each other's ids).
 */
import { existsSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { restoreSnapshot } from '../src/store/restore.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { checkStore, forget, runGc } from '../src/maintenance/index.js';
import { makePage, initStore, tempDirs, restoreToBuffer, PAGE, type PageKindSpec } from './helpers/engine.js';

const tempDir = tempDirs();

/** An image of `pages` pages (several 4 MiB blocks, so the workers take some), distinct per seed. */
function image(seed: number, pages = 2600): Buffer {
  const kinds: PageKindSpec[] = ['compressible', 'random', 'zero', 'sparse'];
  return Buffer.concat(Array.from({ length: pages }, (_, i) => makePage(kinds[(i * 5 + seed) % 4], seed * 100000 + i)));
}

async function openWithWorkers(root: string, packTargetBytes?: number, format?: number): Promise<Store> {
  const dir = await initStore(root, format);
  const store = await Store.open(dir, { workers: 1, packTargetBytes });
  await store.pool.whenReady();
  expect(store.pool.size).toBe(1);
  return store;
}

/** restore -o as the CLI does it with a sparse file: the workers write verified windows into it. */
async function restoreToFile(store: Store, record: SnapshotRecord, file: string): Promise<void> {
  const fh = await open(file, 'wx');
  try {
    const writeAll = async (b: Uint8Array, position?: number) => {
      for (let off = 0; off < b.length;)
        off += (await fh.write(b, off, b.length - off, position === undefined ? null : position + off)).bytesWritten;
    };
    await restoreSnapshot(store, record, {
      write: (b) => writeAll(b),
      writeAt: (b, pos) => writeAll(b, pos),
      setLength: (n) => fh.truncate(n),
      filePath: file,
    });
  } finally {
    await fh.close();
  }
}

describe('one long-lived process, workers started from open', () => {
  it('restores to the same output path again and again, each time into the new file', async () => {
    const root = tempDir('longlived');
    const store = await openWithWorkers(root);
    try {
      const images = [image(1), image(2), image(3)];
      const records: SnapshotRecord[] = [];
      for (const [i, img] of images.entries()) {
        const s = await store.beginSession({ vm: `vm${i}` });
        await s.writePages(0, img);
        records.push(await s.commit());
      }
      const out = path.join(root, 'restored.img');
      for (let round = 0; round < 2; round++) {
        for (const [i, rec] of records.entries()) {
          await restoreToFile(store, rec, out);
          expect(readFileSync(out).equals(images[i]), `round ${round}, image ${i}`).toBe(true);
          rmSync(out);
        }
      }
      expect(store.pool.jobCounts.worker).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
  });

  it('reads an image replaced at the same path between two puts as the new file', async () => {
    const root = tempDir('longlived');
    const store = await openWithWorkers(root);
    try {
      const file = path.join(root, 'vm.img');
      const images = [image(4), image(5), image(6)];
      const records: SnapshotRecord[] = [];
      for (const img of images) {
        // An agent writes the next image beside the old one and renames it into place.
        writeFileSync(`${file}.new`, img);
        renameSync(`${file}.new`, file);
        const s = await store.beginSession({ vm: 'vm', parent: 'none' });
        await s.writeFileRange(0, file, 0, img.length);
        records.push(await s.commit());
      }
      for (const [i, rec] of records.entries()) {
        const out = path.join(root, `out${i}.img`);
        await restoreToFile(store, rec, out);
        expect(readFileSync(out).equals(images[i]), `image ${i}`).toBe(true);
      }
      expect(store.pool.jobCounts.worker).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
  });

  it.runIf(existsSync('/proc/self/fd'))('keeps no descriptor of a pack gc removed, in any thread', async () => {
    const root = tempDir('longlived');
    const store = await openWithWorkers(root, 1 << 20); // small packs: each image fills packs of its own
    try {
      const images = [image(7), image(8)];
      const records: SnapshotRecord[] = [];
      for (const [i, img] of images.entries()) {
        const s = await store.beginSession({ vm: `vm${i}` });
        await s.writePages(0, img);
        records.push(await s.commit());
      }
      // Restores read every pack through the threads' descriptor caches.
      for (const [i, rec] of records.entries()) {
        const out = path.join(root, `before${i}.img`);
        await restoreToFile(store, rec, out);
        expect(readFileSync(out).equals(images[i])).toBe(true);
      }
      await forget(store, { ids: [records[0].id] });
      store.packs.retireGraceMs = 0; // the main thread's reader keeps a removed pack open 10 s by design
      const report = await runGc(store, { maxUnused: { bytes: 0 } });
      expect(report.result!.packsDropped + report.result!.packsRewritten).toBeGreaterThan(0);
      await restoreToFile(store, records[1], path.join(root, 'after.img')); // worker jobs after gc's
      // The reader's (zero) grace timers and the workers' forget messages settle within moments.
      const packsDir = path.join(root, 'store', 'packs');
      const removedStillOpen = () =>
        readdirSync('/proc/self/fd')
          .map((fd) => {
            try {
              return readlinkSync(`/proc/self/fd/${fd}`);
            } catch {
              return '';
            }
          })
          .filter((target) => target.startsWith(packsDir) && target.endsWith('(deleted)'));
      for (let waited = 0; removedStillOpen().length > 0 && waited < 2000; waited += 20)
        await new Promise((resolve) => setTimeout(resolve, 20));
      expect(removedStillOpen()).toEqual([]);
    } finally {
      await store.close();
    }
  });

  // Format 3 lost chunks here (7 runs of 8) until gc listed its packs before the mark: a pack sealed
  // meanwhile held a session's new chunks, unnumbered at the mark, and was dropped under its commit.
  // Later, about 1 loaded run in 20 failed to begin a session: its parent's pages were located during
  // gc's index swap (test/gc-swap-lookup, docs/FORMAT3-STATUS.md).
  const servesMany = async (format: number) => {
    const store = await openWithWorkers(tempDir('mix'), undefined, format);
    try {
      const kinds: PageKindSpec[] = ['zero', 'zero', 'compressible', 'sparse', 'random'];
      /** Shared pages (seeds below 64) at different offsets per VM, the rest its own. */
      const imageOf = (seed: number, pages: number) =>
        Buffer.concat(
          Array.from({ length: pages }, (_, i) =>
            makePage(kinds[(seed + i) % 5], (seed * 7 + i) % 3 === 0 ? (seed + i) % 64 : 1000 + seed * 1000 + i),
          ),
        );
      const live = new Map<string, { record: SnapshotRecord; image: Buffer }>();
      const gcs: Promise<unknown>[] = [];
      for (let round = 0; round < 6; round++) {
        const vms = ['a', 'b', 'c', 'd'];
        const sessions = await Promise.all(vms.map((vm) => store.beginSession({ vm, group: `r${round}` })));
        const images = vms.map((_, k) => imageOf(round * 10 + k, 260 + k * 37));
        // Pre-copy style: the whole image, then some pages again with new contents (last write wins).
        await Promise.all(
          sessions.map(async (s, k) => {
            await s.writePages(0, images[k]);
            for (let j = 0; j < 12; j++) {
              const p = (j * 13 + k) % (images[k].length / PAGE);
              const page = makePage('random', 500000 + round * 1000 + k * 100 + j);
              page.copy(images[k], p * PAGE);
              await s.writePage(p, page);
            }
          }),
        );
        if (round >= 2) gcs.push(runGc(store, { maxUnused: { percent: 10 } }));
        const aborted = round % vms.length;
        await sessions[aborted].abort();
        const records = await Promise.all(sessions.map((s, k) => (k === aborted ? undefined : s.commit())));
        records.forEach((record, k) => record && live.set(record.id, { record, image: images[k] }));
        if (round >= 3) for (const d of (await forget(store, { groups: [`r${round - 3}`] })).forgotten) live.delete(d.id);
      }
      await Promise.all(gcs);
      const racing = [...live.values()].map(async ({ record, image }) => (await restoreToBuffer(store, record)).equals(image));
      await runGc(store, { maxUnused: { bytes: 0 }, repackSmall: true });
      expect(await Promise.all(racing)).toEqual([...live.values()].map(() => true));
      expect(live.size).toBe(9); // rounds 3-5 kept, three VMs each
      for (const { record, image } of live.values()) expect((await restoreToBuffer(store, record)).equals(image)).toBe(true);
      const report = await checkStore(store);
      expect(report.problems).toEqual([]);
      expect(report.warnings).toEqual([]);
    } finally {
      await store.close();
    }
  };
  it.each([1, 3])(
    'store format %i: serves many sessions of several groups at once, with aborts, forget and gc meanwhile, and restores racing a gc',
    (format) => servesMany(format),
  );
});
