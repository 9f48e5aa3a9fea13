/**
 * gc on a store of format 3, at its defaults (a 5% unused-bytes target): after a third of the
 * snapshots were forgotten, it reclaims the dead bytes, every kept snapshot reads back exactly, and
 * no manifest is rewritten (copies keep their numbers). Also: the live bitset, the copy's number
 * order with containers whose numbers interleave, and a dry run that changes nothing.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { runGc } from '../src/maintenance/gc.js';
import { measureNumbered } from '../src/maintenance/gc-v3.js';
import { markLiveNumbers, NumberSet } from '../src/maintenance/live-v3.js';
import { numberedView } from '../src/maintenance/numbered-store.js';
import type { Store } from '../src/store/store.js';
import { tocItems } from '../src/maintenance/pack-copy-v3.js';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { PAGE_SIZE } from '../src/format/pages.js';
import { compressContainers, decodeContainer } from '../src/chunk/container.js';
import { DEFAULT_COMPACT_LEVEL } from '../src/maintenance/compact-plan.js';
import { checkStore } from '../src/maintenance/check.js';
import { removeDir, restoreToBuffer } from './helpers/engine.js';
import { hashPage } from '../src/chunk/hash.js';
import { dirFileBytes } from './helpers/maintenance.js';
import { expectAllReadV3, manifestBytes, numberedStoreAfterForget, openNumbered } from './helpers/numbered.js';

const roots: string[] = [];

/** Container items in the indexed packs. */
async function containerItems(store: Store): Promise<number> {
  let n = 0;
  for (const id of store.numbered!.index.packIds)
    n += tocItems((await store.packs.readTocV3(id)).toc).filter((i) => i.codec === CONTAINER_CODEC).length;
  return n;
}

/** Every container item's frame in the indexed packs, with its decoded pages. */
async function containerFrames(store: Store): Promise<{ frame: Buffer; pages: Uint8Array }[]> {
  const out: { frame: Buffer; pages: Uint8Array }[] = [];
  for (const id of store.numbered!.index.packIds)
    for (const item of tocItems((await store.packs.readTocV3(id)).toc).filter((i) => i.codec === CONTAINER_CODEC)) {
      const frame = Buffer.from(await store.packs.read(id, item.offset, item.storedLength));
      const pages = new Uint8Array(item.pages * PAGE_SIZE);
      expect(decodeContainer(frame, pages)).toBe(item.pages);
      out.push({ frame, pages });
    }
  return out;
}

/** Per-pack liveness now, from a fresh mark. */
async function liveness(store: Store) {
  const { live } = await markLiveNumbers(store.dir, store.db);
  return measureNumbered(numberedView(store), live);
}
afterAll(() => roots.forEach(removeDir));

describe('NumberSet', () => {
  it('holds exactly the numbers added (fast-check against a Set)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 200_000 }), { maxLength: 300 }),
        fc.array(fc.integer({ min: 0, max: 250_000 }), { maxLength: 100 }),
        (added, probes) => {
          const s = new NumberSet();
          for (const n of added) s.add(n);
          const model = new Set(added);
          expect(s.size).toBe(model.size);
          for (const n of [...added, ...probes]) expect(s.has(n)).toBe(model.has(n));
        },
      ),
    );
  });
});

describe('gc on store format 3', () => {
  it('with defaults after forgetting a third: reclaims, every kept snapshot exact, manifests untouched', async () => {
    const fx = await numberedStoreAfterForget('gc-v3');
    roots.push(fx.root);
    const before = manifestBytes(fx.dir, fx.expected.keys());
    const packsBefore = dirFileBytes(path.join(fx.dir, 'packs'));
    let files = await openNumbered(fx.dir);
    try {
      const dry = await runGc(files, { dryRun: true });
      expect(dry.result).toBeUndefined();
      expect(dirFileBytes(path.join(fx.dir, 'packs'))).toEqual(packsBefore);
      const report = await runGc(files);
      const r = report.result!;
      expect(r.skipped).toEqual([]);
      expect(r.reclaimedBytes).toBeGreaterThan(0);
      expect(r.packsRewritten + r.packsDropped).toBeGreaterThan(0);
      expect(r.reclaimedBytes).toBe(packsBefore.bytes - dirFileBytes(path.join(fx.dir, 'packs')).bytes);
      expect(report.keptBasesUnneeded).toEqual([]); // a's first is still a's second's base
      await expectAllReadV3(files, fx.expected, 'after gc, same process');
    } finally {
      await files.close();
    }
    // Reopened from the files: the unused bytes left are within the 5% target, nothing dead in a pack
    // beyond it, check --read-data is clean, and a second gc has nothing to do.
    files = await openNumbered(fx.dir);
    try {
      expect(files.recovery.packsQuarantined).toEqual([]);
      expect(files.recovery.copiesRemoved).toEqual([]);
      expect(files.recovery.conflictingPacks).toEqual([]);
      await expectAllReadV3(files, fx.expected, 'after gc, reopened');
      const after = await liveness(files);
      const packBytes = after.reduce((s, p) => s + p.bytes, 0);
      const unused = after.reduce((s, p) => s + p.payloadBytes - p.liveBytes, 0);
      expect(unused).toBeLessThanOrEqual(0.05 * packBytes);
      expect(packBytes).toBe(dirFileBytes(path.join(fx.dir, 'packs')).bytes);
      const check = await checkStore(files, { readData: true });
      expect(check.problems).toEqual([]);
      const again = await runGc(files);
      expect(again.result!.reclaimedBytes).toBe(0);
    } finally {
      await files.close();
    }
    const manifests = manifestBytes(fx.dir, fx.expected.keys());
    for (const [id, bytes] of before) expect(manifests.get(id)!.equals(bytes), `manifest ${id} not rewritten`).toBe(true);
    expect(readdirSync(path.join(fx.dir, 'tmp'))).toEqual([]);
  });

  it('with --max-unused 0 leaves no dead chunk, splitting containers that lost pages', async () => {
    const fx = await numberedStoreAfterForget('gc-v3-zero');
    roots.push(fx.root);
    const files = await openNumbered(fx.dir);
    try {
      const containersBefore = await containerItems(files);
      expect(containersBefore).toBeGreaterThan(0);
      const report = await runGc(files, { maxUnused: { bytes: 0 } });
      expect(report.plan.totals.deadBytesKept).toBe(0);
      expect(report.result!.packsRewritten).toBeGreaterThan(0);
      expect(await containerItems(files)).toBeGreaterThan(0);
      const after = await liveness(files);
      for (const p of after) expect(p.liveChunks, `pack ${p.id}`).toBe(p.chunks);
      await expectAllReadV3(files, fx.expected, 'after gc --max-unused 0');
    } finally {
      await files.close();
    }
  });

  it("re-containers a split container's live pages at compact's default level (forget + gc keeps compact's gain)", async () => {
    const fx = await numberedStoreAfterForget('gc-v3-level');
    roots.push(fx.root);
    const files = await openNumbered(fx.dir);
    try {
      const before = new Set((await containerFrames(files)).map((c) => c.frame.toString('hex')));
      expect(before.size).toBeGreaterThan(0);
      await runGc(files, { maxUnused: { bytes: 0 } });
      // Frames gc wrote: each is exactly its pages compressed at DEFAULT_COMPACT_LEVEL (zstd is
      // deterministic), and at least one of them would be another frame at zstd-3.
      const made = (await containerFrames(files)).filter((c) => !before.has(c.frame.toString('hex')));
      expect(made.length).toBeGreaterThan(0);
      let differsAt3 = 0;
      for (const { frame, pages } of made) {
        const at = async (level: number) => {
          const z = await compressContainers(pages, [pages.length / PAGE_SIZE], level);
          return Buffer.from(z.payload.subarray(0, z.lengths[0]));
        };
        expect((await at(DEFAULT_COMPACT_LEVEL)).equals(frame)).toBe(true);
        if (!(await at(3)).equals(frame)) differsAt3++;
      }
      expect(differsAt3).toBeGreaterThan(0);
      await expectAllReadV3(files, fx.expected, 'after gc re-containered');
      expect((await checkStore(files, { readData: true })).problems).toEqual([]);
    } finally {
      await files.close();
    }
  });

  it('a session storing the forgotten pages again while gc runs: its lookups rescue them, its snapshot restores exactly', async () => {
    const fx = await numberedStoreAfterForget('gc-v3-session');
    roots.push(fx.root);
    const img = fx.forgottenImages.get(fx.forgotten[2])!; // c's last: its new pages are dead
    const store = await openNumbered(fx.dir);
    try {
      const s = await store.beginSession({ vm: 'z', parent: 'none' });
      await s.writePages(0, img); // deduplicated against the dead chunks: the session names them
      const report = await runGc(store, { maxUnused: { bytes: 0 } });
      expect(report.live.sessions).toBe(1);
      expect(report.result!.chunksRescued).toBeGreaterThan(0); // found by the session's lookups (the fence)
      // The chunks the session names are still stored (gc removed none of them).
      const digests: Buffer[] = [];
      for (let p = 0; p * 4096 < img.length; p++) {
        const pg = img.subarray(p * 4096, (p + 1) * 4096);
        if (pg.some((b) => b !== 0)) digests.push(hashPage(pg));
      }
      expect((await store.numbered!.find(digests)).filter((f) => f === undefined)).toHaveLength(0);
      const rec = await s.commit({ byteLength: img.length, unwritten: 'zero' });
      expect((await restoreToBuffer(store, rec)).equals(img)).toBe(true);
      fx.expected.set(rec.id, img);
      await expectAllReadV3(store, fx.expected, 'after gc with a session');
      expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
