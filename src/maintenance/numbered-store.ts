/**
 * What the maintenance of a store of format 3 (gc, compact, check, repair) needs of it, and a view of
 * one over its files alone. The engine's open store provides the same members; the file view serves
 * tests and offline maintenance, and does only the part of recovery maintenance relies on
 * (docs/FORMAT.md, "Recovery (format 3)"): `d` records finished, a killed gc's copies deleted.
 */
import { closeSync, openSync, promises as fsp, readSync } from 'node:fs';
import path from 'node:path';
import { packFileName, parsePackFileName } from '../format/pack.js';
import { DIGEST_BYTES } from '../format/pages.js';
import { CONFIG_FILE } from '../store/config.js';
import { openDb, type StoreDb } from '../store/db.js';
import { deletedPackKey, listDeletedPacks } from '../store/keys.js';
import { StoreLock } from '../store/lock.js';
import { NumberAllocator, readNextNumber } from '../store/number-allocator.js';
import { loadNumberIndex, type NumberIndexLoad } from '../store/number-load.js';
import { PackReader, type PackTocV3 } from '../store/pack-reader.js';
import { DEFAULT_PACK_TARGET_BYTES } from '../store/pack-writer.js';
import { storePaths } from '../store/paths.js';
import { ensurePrivateDir, fsyncDir } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';
import type { NumberSet } from './live-v3.js';

export const STORE_FORMAT_NUMBERED = 3;

export interface NumberedStore {
  readonly dir: string;
  readonly db: StoreDb;
  readonly packs: PackReader;
  /** The number index and where each pack's digest column is (owned by the store). */
  readonly load: NumberIndexLoad;
  /** The value of `m nextnumber` for a batch that removes data (never below any number given). */
  numberMark(): Buffer;
  /** A pack id above every pack's, for a copy. */
  reservePackId(): number;
  /** Pack size at which gc and compact close a new pack (the pack writer's target). */
  readonly packTargetBytes: number;
  /**
   * Adds the numbers in-flight work references (open sessions' pages and parents, unsealed chunks);
   * returns how many sessions, and the snapshot ids they use as delta bases.
   */
  inFlightNumbers?(into: NumberSet): { sessions: number; bases: string[] };
}

/** Swaps packs in the in-memory index after their synced `d` batch: the originals out, then the copies in. */
export function replaceIndexedPacks(
  packsDir: string,
  load: NumberIndexLoad,
  removed: readonly { pack: number; digests: Uint8Array }[],
  added: readonly { pack: number; read: PackTocV3 }[],
): void {
  for (const r of removed) {
    load.index.removePack(r.pack, r.digests);
    load.digestColumns.delete(r.pack);
  }
  for (const a of added) {
    const overlap = load.index.addPack(a.pack, a.read.toc, (pack, entry) => digestOnDisk(packsDir, load, pack, entry));
    if (overlap.length > 0) throw new Error(`pack ${packFileName(a.pack)} overlaps packs ${overlap.join(', ')}`);
    load.digestColumns.set(a.pack, a.read.tocOffset + a.read.toc.digestsAt);
  }
}

/** Entry `entry`'s digest read from its pack's TOC (fingerprint clashes only: rare, synchronous). */
function digestOnDisk(packsDir: string, load: NumberIndexLoad, pack: number, entry: number): Uint8Array {
  const at = load.digestColumns.get(pack);
  if (at === undefined) throw new Error(`pack ${packFileName(pack)} is not indexed`);
  const fd = openSync(path.join(packsDir, packFileName(pack)), 'r');
  try {
    const out = Buffer.alloc(DIGEST_BYTES);
    if (readSync(fd, out, 0, DIGEST_BYTES, at + DIGEST_BYTES * entry) !== DIGEST_BYTES)
      throw new Error(`pack ${packFileName(pack)}: short TOC`);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** A format-3 store opened over its files, under its lock (no sessions: nothing is in flight). */
export class NumberedFiles implements NumberedStore {
  private nextPack: number;
  private constructor(
    readonly dir: string,
    readonly db: StoreDb,
    readonly packs: PackReader,
    readonly load: NumberIndexLoad,
    private readonly lock: StoreLock,
    private readonly numbers: NumberAllocator,
    maxPack: number,
    readonly packTargetBytes: number,
  ) {
    this.nextPack = maxPack + 1;
  }

  static async open(dir: string, packTargetBytes = DEFAULT_PACK_TARGET_BYTES): Promise<NumberedFiles> {
    const p = storePaths(dir);
    const config = JSON.parse(await fsp.readFile(path.join(dir, CONFIG_FILE), 'utf8')) as { version?: number };
    if (config.version !== STORE_FORMAT_NUMBERED) {
      throw new VnstoreError(
        'E_FORMAT_VERSION',
        `${dir} is at store format version ${String(config.version)}, not ${STORE_FORMAT_NUMBERED}`,
      );
    }
    const lock = await StoreLock.acquire(p.lock);
    const db = openDb(p.db);
    try {
      await db.open();
      for (const d of [p.packs, p.tmp]) await ensurePrivateDir(d);
      const packs = new PackReader(p.packs);
      await finishDeletedPacks(dir, db);
      const ids = await packIdsIn(p.packs);
      const load = await loadNumberIndex(packs, ids);
      // A killed gc's or compact's copy: every number is in an older pack (redone by the next run).
      for (const id of load.copies) await fsp.rm(path.join(p.packs, packFileName(id)), { force: true });
      if (load.copies.length > 0) await fsyncDir(p.packs);
      const quarantined = await packIdsIn(p.quarantine).catch(() => [] as number[]);
      const maxPack = Math.max(0, ...ids, ...quarantined);
      const numbers = new NumberAllocator(await readNextNumber(db), load.index.nextNumber);
      return new NumberedFiles(dir, db, packs, load, lock, numbers, maxPack, packTargetBytes);
    } catch (err) {
      await db.close().catch(() => undefined);
      await lock.release().catch(() => undefined);
      throw err;
    }
  }

  numberMark(): Buffer {
    return this.numbers.markValue();
  }

  reservePackId(): number {
    return this.nextPack++;
  }

  async close(): Promise<void> {
    await this.packs.close();
    await this.db.close();
    await this.lock.release();
  }
}

/** The pack ids of the pack files in `dir` (version 3 is checked when their TOCs are read). */
export async function packIdsIn(dir: string): Promise<number[]> {
  const ids: number[] = [];
  for (const name of await fsp.readdir(dir)) {
    const id = parsePackFileName(name);
    if (id !== undefined) ids.push(id);
  }
  return ids.sort((a, b) => a - b);
}

/** Packs whose `d` record is written: their files go, then the records (as recovery does). */
export async function finishDeletedPacks(dir: string, db: StoreDb): Promise<number> {
  const deleted = await listDeletedPacks(db);
  if (deleted.length === 0) return 0;
  const packsDir = storePaths(dir).packs;
  for (const d of deleted) await fsp.rm(path.join(packsDir, packFileName(d.id)), { force: true });
  await fsyncDir(packsDir);
  const batch = db.batch();
  for (const d of deleted) batch.del(deletedPackKey(d.id));
  await batch.write({ sync: true });
  return deleted.length;
}
