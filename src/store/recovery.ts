/**
 * Open-time recovery (Store.open runs it before loading the chunk table). Below the store and the
 * maintenance commands: it reads the catalog and packs, never a Store.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packFileName, parsePackFileName, storedShare } from '../format/pack.js';
import { fsyncDir } from '../util/durable.js';
import { CorruptError } from '../util/errors.js';
import { addCounterDelta, recoveredPackDelta } from './counters.js';
import { chunkKey, decodeChunkValue, KEY_PACK, KEY_SNAPSHOT, prefixedKey, prefixRange, type PackRecord, type StoreDb } from './db.js';
import { IndexBatch } from './index-batch.js';
import { isHeld } from './held.js';
import { deletedPackKey, keptBaseKey, KEY_DELETED_PACK } from './keys.js';
import { entryLocation, type PackReader } from './pack-reader.js';
import { storePaths } from './paths.js';
import { quarantinePack } from './quarantine.js';

export interface RecoveryReport {
  tempFilesRemoved: number;
  packsIndexed: number;
  packsQuarantined: string[];
  orphanManifestsRemoved: number;
  /** Format 3: copies a killed gc or compact left, deleted (their originals hold every number). */
  copiesRemoved?: number[];
  /** Format 3: packs sharing only some numbers with older packs (damage), left out of the index. */
  conflictingPacks?: number[];
}

/**
 * Recovery on open, before anything reads the store: temp files go, deletions gc began are finished,
 * packs sealed but not indexed are indexed (or quarantined when they do not read back), manifests
 * that never got a commit record go (unless held or a kept base).
 */
export async function recover(dir: string, db: StoreDb, packs: PackReader): Promise<RecoveryReport> {
  const p = storePaths(dir);
  const report: RecoveryReport = { tempFilesRemoved: 0, packsIndexed: 0, packsQuarantined: [], orphanManifestsRemoved: 0 };
  // 1. Temp files are never referenced by anything committed.
  report.tempFilesRemoved = await removeTempFiles(dir);
  // 1b. Packs gc removed from the index but had not yet deleted: finish the deletion (never re-index).
  await finishPackDeletions(dir, db);
  // 2. Packs renamed into place but not indexed (crash between rename and the index batch).
  const indexed = new Set<number>();
  for await (const k of db.keys(prefixRange(Buffer.of(KEY_PACK)))) indexed.add(k.readUInt32BE(1));
  for (const name of await fsp.readdir(p.packs)) {
    const id = parsePackFileName(name);
    if (id === undefined || indexed.has(id)) continue;
    const file = path.join(p.packs, name);
    try {
      const entries = await packs.readChunks(id);
      const batch = new IndexBatch(db);
      for (const e of entries) batch.putChunk(e.digest, entryLocation(id, e));
      const stat = await fsp.stat(file);
      const payloadBytes = entries.reduce((s, e) => s + storedShare(e), 0);
      const rec: PackRecord = { id, chunks: entries.length, bytes: stat.size, payloadBytes, sealedAt: stat.mtime.toISOString() };
      batch.putPackRecord(rec);
      // Counters: a gc-rewritten pack's chunks may already be indexed (in the pack it replaces).
      const prior = await db.getMany(entries.map((e) => chunkKey(e.digest)));
      addCounterDelta(
        batch,
        recoveredPackDelta(
          rec,
          entries.map((e) => ({ digest: e.digest, storedLength: storedShare(e) })),
          prior.map((v) => (v === undefined ? undefined : storedShare(decodeChunkValue(v)))),
        ),
      );
      await batch.write({ sync: true });
      report.packsIndexed++;
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      await quarantinePack(dir, packs, name);
      report.packsQuarantined.push(name);
    }
  }
  // 3. Manifests written but never committed (crash between manifest and commit record).
  report.orphanManifestsRemoved = await removeOrphanManifests(dir, db);
  return report;
}

/** Empties tmp/ (nothing committed references a temp file); returns how many entries went. */
export async function removeTempFiles(dir: string): Promise<number> {
  const tmp = storePaths(dir).tmp;
  let removed = 0;
  for (const name of await fsp.readdir(tmp)) {
    await fsp.rm(path.join(tmp, name), { force: true, recursive: true });
    removed++;
  }
  return removed;
}

/**
 * Removes manifests written but never committed (a crash between manifest and commit record),
 * unless held or a kept base; returns how many went.
 */
export async function removeOrphanManifests(dir: string, db: StoreDb): Promise<number> {
  const manifests = storePaths(dir).manifests;
  let removed = 0;
  for (const name of await fsp.readdir(manifests)) {
    const m = /^([0-9a-f]{16})\.vnm(\.tmp)?$/.exec(name);
    if (!m) continue;
    if (m[2] || (await db.get(prefixedKey(KEY_SNAPSHOT, m[1]))) === undefined) {
      if (!m[2] && ((await isKeptBase(db, m[1])) || (await isHeld(db, m[1])))) continue;
      await fsp.rm(path.join(manifests, name), { force: true });
      removed++;
    }
  }
  return removed;
}

/**
 * A manifest with no commit record may still be the delta base of a committed snapshot: forget then
 * wrote a 'k' record for it in the same batch that removed its commit record (src/store/keys.ts).
 */
async function isKeptBase(db: StoreDb, id: string): Promise<boolean> {
  return (await db.get(keptBaseKey(id))) !== undefined;
}

/**
 * A 'd' record says gc removed the pack from the index (in the same batch that moved its live chunks
 * elsewhere) and a crash stopped it before the file was deleted. Delete the file now: re-indexing it as
 * an "unindexed pack" would resurrect dead chunks. Returns the number of files removed.
 */
export async function finishPackDeletions(dir: string, db: StoreDb): Promise<number> {
  const ids: number[] = [];
  for await (const k of db.keys(prefixRange(Buffer.of(KEY_DELETED_PACK)))) ids.push(k.readUInt32BE(1));
  if (ids.length === 0) return 0;
  const packs = storePaths(dir).packs;
  let removed = 0;
  for (const id of ids) {
    const file = path.join(packs, packFileName(id));
    try {
      await fsp.rm(file);
      removed++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  await fsyncDir(packs);
  const batch = db.batch();
  for (const id of ids) batch.del(deletedPackKey(id));
  await batch.write({ sync: true });
  return removed;
}
