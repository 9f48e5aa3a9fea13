/**
 * Store format 1/2 → 3 (docs/FORMAT.md, "Upgrade"), crash-safe by a commit point:
 *
 *   1. under the store's lock, convert into DIR/upgrade/: packs (upgrade-v3.ts), manifests, and a new
 *      LevelDB with the catalog (no chunk entries), every part fsynced;
 *   2. rewrite vnstore.json with version 3 (temp, fsync, rename, fsync dir): the commit point. From
 *      here no format-1/2 vnstore opens the store (it refuses version 3), so nothing writes the old
 *      parts after they were copied;
 *   3. release the lock and swap (finishUpgradeSwap): each of db, packs, manifests replaced by its
 *      upgrade/ copy, then upgrade/ and chunk-table.bin removed. Every step is idempotent: a run
 *      killed here is finished by the next call (and, once the engine opens format 3, by its open).
 * A kill before step 2 leaves the old store as it was, plus an upgrade/ tree the next upgrade removes
 * first. The command is `vnstore upgrade` (src/cli/upgrade.ts); every open of a format-3 store
 * finishes step 3 under its lock (src/store/upgrade-swap.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CONFIG_FILE, STORE_FORMAT_VERSION_NUMBERED, type StoreConfig } from '../store/config.js';
import { finishUpgradeSwap, readRawConfig, UPGRADE_DIR } from '../store/upgrade-swap.js';
import { putCounterBase, readCounters, zeroCounters } from '../store/counters.js';
import {
  CHUNK_GEN_KEY,
  CLEAN_PACK_KEY,
  KEY_CHUNK,
  KEY_META,
  KEY_PACK,
  KEY_SNAPSHOT,
  jsonValue,
  openDb,
  type SnapshotRecord,
  type StoreDb,
} from '../store/db.js';
import { KEY_HELD, listHeld, type HeldPrepared } from '../store/held.js';
import { KEY_KEPT_BASE, listKeptBases } from '../store/keys.js';
import { freeBytes } from '../store/reserve.js';
import { NEXT_NUMBER_KEY, NumberAllocator } from '../store/number-allocator.js';
import { Store, type OpenOptions } from '../store/store.js';
import { NUMBERED_TOC_ENTRY_BYTES } from '../format/pack-v3.js';
import { exists, fsyncDir, writeFileDurable } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';
import { trace } from '../util/trace.js';
import { convertChunks, convertManifests } from './upgrade-v3.js';

export { STORE_FORMAT_VERSION_NUMBERED, UPGRADE_DIR, finishUpgradeSwap };

export interface UpgradeReport {
  upgraded: true;
  chunks: number;
  packs: number;
  manifests: number;
  manifestBytesBefore: number;
  manifestBytesAfter: number;
  /** Committed snapshots (every one converted). */
  snapshots: number;
  /** Format version before the upgrade (1 or 2). */
  formatBefore: number;
  /** Bytes of every file under the store directory, before and after. */
  storeBytesBefore: number;
  storeBytesAfter: number;
  seconds: number;
}

/** What `upgradeStore` says of a store that was at format 3 already: nothing was done. */
export interface AlreadyUpgraded {
  upgraded: false;
  formatBefore: typeof STORE_FORMAT_VERSION_NUMBERED;
}

export interface UpgradeOptions {
  /** Opens the store (the CLI waits for its lock and names a server that holds it); default Store.open. */
  open?: (dir: string, options: OpenOptions) => Promise<Store>;
  /** Seal output packs at this many payload bytes (default 32 MiB, as ingest). */
  packTargetBytes?: number;
  /** Progress of the pack copy, the long part: chunks copied so far, of all. */
  onProgress?: (doneChunks: number, totalChunks: number) => void;
}

export async function upgradeStore(dir: string, options: UpgradeOptions = {}): Promise<UpgradeReport | AlreadyUpgraded> {
  const started = performance.now();
  const open = options.open ?? ((d, o) => Store.open(d, o));
  const openOptions: OpenOptions = { workers: 0, chunkTable: false, reclaim: false };
  const before = await readRawConfig(dir);
  if (before.version === STORE_FORMAT_VERSION_NUMBERED) {
    // The open finishes a killed upgrade's swap under the lock (and refuses a store in use).
    await (await open(dir, openOptions)).close();
    return { upgraded: false, formatBefore: STORE_FORMAT_VERSION_NUMBERED };
  }
  // Measured as the user left it (the open below writes to LevelDB's log); a killed run's upgrade/ is not the store.
  const up = path.join(dir, UPGRADE_DIR);
  const storeBytesBefore = (await treeBytes(dir)) - ((await exists(up)) ? await treeBytes(up) : 0);
  const store = await open(dir, openOptions);
  let report: Omit<UpgradeReport, 'storeBytesAfter' | 'seconds'> | undefined;
  let flipped = false;
  try {
    await fsp.rm(up, { recursive: true, force: true }); // a killed upgrade's leftovers: start over
    const copyBytes = upgradeCopyBytes(
      await dirBytes(path.join(dir, 'packs')),
      (await readCounters(store.db))?.chunks ?? 0,
      await dirBytes(path.join(dir, 'manifests')),
    );
    const free = await freeBytes(dir);
    if (free < copyBytes) {
      const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
      throw new VnstoreError(
        'E_NO_SPACE',
        `${dir}: upgrade needs ${mb(copyBytes)} free beside the store (a copy of its packs); ${mb(free)} are free`,
      );
    }
    const target = { packs: path.join(up, 'packs'), manifests: path.join(up, 'manifests'), tmp: path.join(up, 'tmp') };
    const chunks = await convertChunks(store, { ...target, packTargetBytes: options.packTargetBytes, onProgress: options.onProgress });
    trace('upgrade: packs written');
    const snapshots = await store.listSnapshots();
    const kept = await listKeptBases(store.db);
    const held = await listHeld(store.db);
    const ids = [...snapshots.map((s) => s.id), ...kept.map((k) => k.id), ...held.map((h) => h.record.id)];
    const sizes = await convertManifests(store, ids, chunks.numberOf, target);
    trace('upgrade: manifests written');
    const db = openDb(path.join(up, 'db'));
    await db.open();
    await fsp.chmod(path.join(up, 'db'), 0o700); // LevelDB creates it with the process umask (as init does)
    try {
      await copyCatalog(store.db, db, sizes, {
        chunks: chunks.nextNumber,
        chunkBytes: chunks.chunkBytes,
        packs: chunks.packIds.length,
        packBytes: await dirBytes(target.packs),
        nextNumber: chunks.nextNumber,
      });
    } finally {
      await db.close();
    }
    await fsp.rm(target.tmp, { recursive: true, force: true });
    for (const d of [target.packs, target.manifests, path.join(up, 'db'), up, dir]) await fsyncDir(d);
    trace('upgrade: catalog written');
    // The temp file under upgrade/ (the same file system): a kill before its rename leaves it where
    // the next upgrade's fresh start removes it (beside vnstore.json it made that upgrade fail).
    const config: StoreConfig = { ...before, version: STORE_FORMAT_VERSION_NUMBERED };
    await writeFileDurable(
      path.join(dir, CONFIG_FILE),
      Buffer.from(JSON.stringify(config, null, 2) + '\n'),
      path.join(up, `${CONFIG_FILE}.tmp`),
    );
    flipped = true;
    trace('upgrade: flipped');
    report = {
      upgraded: true,
      chunks: chunks.nextNumber,
      packs: chunks.packIds.length,
      manifests: sizes.size,
      manifestBytesBefore: snapshots.reduce((s, r) => s + r.manifestBytes, 0) + kept.reduce((s, k) => s + k.manifestBytes, 0),
      manifestBytesAfter: [...sizes.values()].reduce((a, b) => a + b, 0),
      snapshots: snapshots.length,
      formatBefore: before.version,
      storeBytesBefore,
    };
  } catch (err) {
    // Before the flip the old store stands: drop the partial copy (a kill leaves it to the next run).
    if (!flipped) await fsp.rm(up, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  } finally {
    await store.close();
  }
  await finishUpgradeSwap(dir);
  return { ...report, storeBytesAfter: await treeBytes(dir), seconds: (performance.now() - started) / 1000 };
}

/**
 * Free bytes the upgrade needs beside the store: a copy of its packs (no dead bytes are copied, but
 * a format-3 table entry costs up to 27 B against 11: 24 B a chunk leaves a margin), of its manifests (version 2
 * is smaller), and 16 MiB for LevelDB and slack.
 */
export function upgradeCopyBytes(packBytes: number, chunks: number, manifestBytes: number): number {
  return packBytes + 24 * chunks + manifestBytes + 16 * 1024 * 1024;
}

/**
 * A snapshot record with its new manifest's size, and `addedBytes` counted as a format-3 ingest
 * would have: the same new chunk payloads (copied as stored), their format-3 table entries, the
 * version-2 manifest. Otherwise ls and stats would show figures of a layout the store no longer has.
 */
export function upgradedRecord(rec: SnapshotRecord, manifestBytes: number | undefined): SnapshotRecord {
  const bytes = manifestBytes ?? rec.manifestBytes;
  return { ...rec, manifestBytes: bytes, addedBytes: rec.newChunkBytes + rec.newChunks * NUMBERED_TOC_ENTRY_BYTES + bytes };
}

/**
 * Copies the catalog into the new database: every record but the chunk index (`c`), the pack records
 * (`p`), the chunk generation, the clean-pack mark and the counters; manifest sizes updated in the
 * snapshot, hold and kept-base records (and `addedBytes` recounted: upgradedRecord); counters refolded
 * (chunk and pack figures from the conversion); `m nextnumber` set. One synced batch.
 */
async function copyCatalog(
  from: StoreDb,
  to: StoreDb,
  sizes: ReadonlyMap<string, number>,
  converted: { chunks: number; chunkBytes: number; packs: number; packBytes: number; nextNumber: number },
): Promise<void> {
  const batch = to.batch();
  const skip = (k: Buffer) =>
    k[0] === KEY_CHUNK ||
    k[0] === KEY_PACK ||
    k.equals(CHUNK_GEN_KEY) ||
    k.equals(CLEAN_PACK_KEY) ||
    (k[0] === KEY_META && k.subarray(1).toString('latin1').startsWith('counters'));
  for await (const [k, v] of from.iterator()) {
    if (skip(k)) continue;
    if (k[0] === KEY_SNAPSHOT) {
      const rec = JSON.parse(v.toString('utf8')) as SnapshotRecord;
      batch.put(k, jsonValue(upgradedRecord(rec, sizes.get(rec.id))));
    } else if (k[0] === KEY_HELD) {
      const held = JSON.parse(v.toString('utf8')) as HeldPrepared;
      const record = upgradedRecord(held.record, sizes.get(held.record.id));
      batch.put(k, jsonValue({ ...held, record }));
    } else if (k[0] === KEY_KEPT_BASE) {
      const rec = JSON.parse(v.toString('utf8')) as { id: string; manifestBytes: number };
      rec.manifestBytes = sizes.get(rec.id) ?? rec.manifestBytes;
      batch.put(k, jsonValue(rec));
    } else batch.put(k, v);
  }
  const old = (await readCounters(from)) ?? zeroCounters();
  const manifestOf = (ids: string[]) => ids.reduce((s, id) => s + (sizes.get(id) ?? 0), 0);
  const snapshotIds: string[] = [];
  const keptIds: string[] = [];
  for await (const k of from.keys()) {
    if (k[0] === KEY_SNAPSHOT) snapshotIds.push(k.subarray(1).toString('utf8'));
    if (k[0] === KEY_KEPT_BASE) keptIds.push(k.subarray(1).toString('utf8'));
  }
  putCounterBase(batch, {
    ...old,
    manifestBytes: manifestOf(snapshotIds),
    keptBaseBytes: manifestOf(keptIds),
    chunks: converted.chunks,
    chunkBytes: converted.chunkBytes,
    packs: converted.packs,
    packBytes: converted.packBytes,
    packPayloadBytes: converted.chunkBytes,
  });
  batch.put(NEXT_NUMBER_KEY, new NumberAllocator(0, converted.nextNumber).markValue());
  await batch.write({ sync: true });
}

/** Bytes of every file under `dir`, subdirectories included. */
async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await treeBytes(p);
    else if (e.isFile()) total += (await fsp.stat(p)).size;
  }
  return total;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const f of await fsp.readdir(dir)) total += (await fsp.stat(path.join(dir, f))).size;
  return total;
}
