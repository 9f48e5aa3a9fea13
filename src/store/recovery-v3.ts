/**
 * Open-time recovery of a format-3 store (docs/FORMAT.md, "Recovery (format 3)"), run under the
 * store's lock after the upgrade's swap is finished and LevelDB is open: temp files go, deletions gc
 * or compact recorded (`d`) are finished, the index is built from every pack's TOC, the copies a
 * killed gc or compact left (every number held by an older pack) are deleted, damaged packs are
 * quarantined, and the number allocator is seeded; then orphan manifests go as on format 1/2.
 * There is no unindexed pack to index: a sealed pack describes itself.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packFileName, parsePackFileName } from '../format/pack.js';
import { fsyncDir } from '../util/durable.js';
import type { StoreDb } from './db.js';
import { NEXT_NUMBER_KEY, NumberAllocator, readNextNumber } from './number-allocator.js';
import { loadNumberIndex } from './number-load.js';
import { NumberedChunks } from './numbered-chunks.js';
import type { PackReader } from './pack-reader.js';
import { storePaths } from './paths.js';
import { quarantinePack } from './quarantine.js';
import { finishPackDeletions, removeOrphanManifests, removeTempFiles, type RecoveryReport } from './recovery.js';

export async function recoverNumbered(
  dir: string,
  db: StoreDb,
  packs: PackReader,
): Promise<{ report: RecoveryReport; chunks: NumberedChunks }> {
  const p = storePaths(dir);
  const report: RecoveryReport = { tempFilesRemoved: 0, packsIndexed: 0, packsQuarantined: [], orphanManifestsRemoved: 0 };
  report.tempFilesRemoved = await removeTempFiles(dir);
  await finishPackDeletions(dir, db);
  const ids: number[] = [];
  for (const name of await fsp.readdir(p.packs)) {
    const id = parsePackFileName(name);
    if (id !== undefined) ids.push(id);
  }
  // The fingerprint table is filled on first need (NumberedChunks.ensureDigests): a restore needs none.
  const load = await loadNumberIndex(packs, ids, undefined, false);
  // A killed gc's or compact's copy: its originals are all indexed, and the next run redoes the work.
  for (const id of load.copies) {
    await packs.evict(id);
    await fsp.rm(path.join(p.packs, packFileName(id)), { force: true });
  }
  if (load.copies.length > 0) await fsyncDir(p.packs);
  report.copiesRemoved = load.copies;
  // Conflicting packs stay where they are, out of the index, for check to report; numbers stay above theirs.
  let pastPacks = load.index.nextNumber;
  for (const c of load.conflicting) {
    const { toc } = await packs.readTocV3(c.pack);
    for (let r = 0; r < toc.runStarts.length; r++) pastPacks = Math.max(pastPacks, toc.runStarts[r] + toc.runLengths[r]);
  }
  report.conflictingPacks = load.conflicting.map((c) => c.pack);
  for (const d of load.damaged) {
    await quarantinePack(dir, packs, packFileName(d.pack));
    report.packsQuarantined.push(packFileName(d.pack));
  }
  const allocator = new NumberAllocator(await readNextNumber(db), pastPacks);
  // A quarantined pack's numbers are unknown now: the mark, in a synced batch, keeps them from reuse.
  if (load.damaged.length > 0) await db.batch().put(NEXT_NUMBER_KEY, allocator.markValue()).write({ sync: true });
  report.orphanManifestsRemoved = await removeOrphanManifests(dir, db);
  return {
    report,
    chunks: new NumberedChunks(load.index, load.digestColumns, allocator, packs, { digestsLoaded: false, kept: load.digests }),
  };
}
