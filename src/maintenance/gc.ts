/**
 * gc: mark (live digests), measure (per-pack liveness from the index), plan (pure, gc-plan.ts),
 * execute in crash-safe steps. The write order, as rules (docs/OPERATIONS.md):
 *
 *   1. A rewritten pack is written under tmp/, fsynced, renamed into packs/, packs/ fsynced.
 *   2. One synced LevelDB batch moves the copied chunks' index entries to the new pack, adds its 'p'
 *      record, deletes the dead chunks' entries and the old packs' 'p' records, writes a 'd' record
 *      per old pack, adjusts the counters and the chunk generation.
 *   3. Only then are old pack files deleted (packs/ fsynced), then their 'd' records (synced).
 *   4. Kept base manifests no longer needed: their 'k' records go first (synced), then the files.
 *
 * A crash before 2 leaves an unindexed pack of valid copies (recovery indexes it, the old pack keeps
 * serving, the next gc collects whichever copy is dead); after 2, recovery finishes 3 from the 'd'
 * records. Every committed snapshot is restorable at every instant.
 */
import { performance } from 'node:perf_hooks';
import { packFileName, storedShare } from '../format/pack.js';
import { DIGEST_BYTES } from '../format/pages.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { compactAllKeys, scanChunkIndex, type PackRecord } from '../store/db.js';
import { IndexBatch } from '../store/index-batch.js';
import { chunkLocation, type SealedPack } from '../store/pack-file.js';
import { Store } from '../store/store.js';
import { CorruptError } from '../util/errors.js';
import { trace } from '../util/trace.js';
import { addCounterDelta, foldCounters, type CounterDelta } from '../store/counters.js';
import { DigestSet } from './digest-set.js';
import { GcFence, withMaintenanceLock } from './fence.js';
import { gcPlanOptions, planGc, type GcPlan, type MaxUnused, type PackLiveness } from './gc-plan.js';
import { deletedPackKey, deletedPackValue, keptBaseKey, listKeptBases, type KeptBaseRecord } from '../store/keys.js';
import { baseChainIds, baseLookup, collectInFlight, listCommitted, manifestFile, markSnapshots } from './live.js';
import { copyChunks, removePackFiles } from './pack-io.js';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../util/durable.js';

export interface GcOptions {
  /** Unused bytes gc may leave in kept packs (default 5% of the store's pack bytes after gc). */
  maxUnused?: MaxUnused;
  /** Most live bytes one run copies into new packs (default: no bound). */
  maxRepackBytes?: number;
  /** Merge small packs too. */
  repackSmall?: boolean;
  /** Plan only. */
  dryRun?: boolean;
  /** Consider only these packs (default: every indexed pack). */
  packs?: readonly number[];
}

/**
 * Drops those of `packs` that hold no live chunk (no rewrite, no merge): what a session that failed
 * on a write (a full disk) sealed, removed at once rather than left for the next gc. Chunks another
 * session references meanwhile are live, so their packs stay.
 */
export async function dropDeadPacks(store: Store, packs: readonly number[]): Promise<GcReport> {
  // Any amount of unused bytes may stay: only packs with no live chunk are planned (as drops).
  return runGc(store, { packs, maxUnused: { unlimited: true } });
}

export interface GcSkipped {
  packs: string[];
  reason: string;
}

export interface GcResult {
  packsDropped: number;
  packsRewritten: number;
  packsWritten: string[];
  chunksCopied: number;
  bytesCopied: number;
  chunksRemoved: number;
  deadBytesRemoved: number;
  /** Pack file bytes before minus after. */
  reclaimedBytes: number;
  /** Chunks the plan called dead that a concurrent session looked up meanwhile (kept). */
  chunksRescued: number;
  /** Lookups of chunks being removed, held until the index batch settled (the session re-stored them). */
  lookupsHeld: number;
  keptBasesRemoved: number;
  manifestBytesRemoved: number;
  skipped: GcSkipped[];
}

export interface GcReport {
  dryRun: boolean;
  live: { snapshots: number; chunks: number; sessions: number; preparedManifests: number };
  plan: GcPlan;
  /** Kept base manifests no longer needed (removed unless dry run). */
  keptBasesUnneeded: string[];
  result?: GcResult;
  seconds: number;
}

/**
 * Test hook: VNSTORE_GC_FAILPOINT=<point>:<n> SIGKILLs the process the nth time gc passes <point>
 * (pack-renamed, index-written, files-removed, kept-bases-unlisted), so tests can crash gc inside each
 * window of its write order deterministically, in addition to killing it at random instants.
 */
const FAILPOINT = /^([a-z-]+):(\d+)$/.exec(process.env.VNSTORE_GC_FAILPOINT ?? '');
let failpointHits = 0;
export function failpoint(point: string): void {
  if (FAILPOINT && FAILPOINT[1] === point && ++failpointHits >= Number(FAILPOINT[2])) process.kill(process.pid, 'SIGKILL');
}

export interface IndexedEntry {
  digest: Buffer;
  loc: ChunkLocation;
}

export async function runGc(store: Store, options: GcOptions = {}): Promise<GcReport> {
  // Loaded lazily: gc-v3 builds on this module's helpers, and format-1/2 stores never need it.
  if (store.isNumbered) return (await import('./gc-v3.js')).runGcNumbered(store, options);
  const planOptions = gcPlanOptions(options, store.writer.targetBytes);
  return withMaintenanceLock(store, async () => {
    const started = performance.now();
    const fence = new GcFence(store);
    // The fence goes up before anything is read: from here on, every chunk a lookup finds is live.
    store.raiseGcFence(fence);
    try {
      const { records, live, inflight, committed, liveness, isLive } = await markAndMeasure(store, fence, options.packs);
      const plan = planGc([...liveness.values()], planOptions);
      const kept = await listKeptBases(store.db);
      const unneeded = unneededKeptBases(committed, kept, inflight.bases);
      trace('gc: planned');
      const report: GcReport = {
        dryRun: options.dryRun ?? false,
        live: {
          snapshots: committed.length,
          chunks: live.size,
          sessions: inflight.sessions,
          preparedManifests: inflight.preparedManifests,
        },
        plan,
        keptBasesUnneeded: unneeded.map((k) => k.id),
        seconds: 0,
      };
      if (options.dryRun) {
        report.seconds = (performance.now() - started) / 1000;
        return report;
      }
      const result = emptyGcResult();
      // 4. The index entries of every pack that goes; 5. the steps.
      const entries = await collectEntries(store, new Set([...plan.drop, ...plan.rewrite]));
      const steps: number[][] = [];
      for (let i = 0; i < plan.drop.length; i += 256) steps.push(plan.drop.slice(i, i + 256));
      for (const n of plan.newPacks) steps.push(n.from);
      await executeSteps(store, fence, { records, liveness, isLive }, steps, entries, result);
      // 6. Kept base manifests nobody needs any more (recomputed: sessions may have come and gone).
      await pruneKeptBases(store, result);
      result.lookupsHeld = fence.held;
      await foldCounters(store.db);
      // Dropped and moved chunks left superseded index entries that LevelDB keeps until its own
      // compactions reach them (1.3% of a real store after forget + gc, bench/RESULTS.md). A full
      // gc drops them now; a post-commit reclaim (options.packs) leaves them, to stay cheap.
      if (!options.packs && steps.length > 0) await compactAllKeys(store.db);
      report.result = result;
      report.seconds = (performance.now() - started) / 1000;
      trace('gc: done');
      return report;
    } finally {
      store.lowerGcFence(fence);
    }
  });
}

/** What gc's mark and measure found: compact plans from the same. */
export interface Marked {
  /** The packs that may be touched: sealed and indexed when the fence went up. */
  records: Map<number, PackRecord>;
  live: DigestSet;
  inflight: Awaited<ReturnType<typeof collectInFlight>>;
  committed: Awaited<ReturnType<typeof listCommitted>>;
  liveness: Map<number, PackLiveness>;
  /** Live by the mark, or looked up by a session since the fence went up. */
  isLive: (d: Uint8Array, o?: number) => boolean;
}

/**
 * Lists the packs (`only`, or all indexed), marks the live chunks and measures each pack's liveness
 * from the index. The caller has raised `fence`.
 */
export async function markAndMeasure(store: Store, fence: GcFence, only?: readonly number[]): Promise<Marked> {
  // 1. The packs gc may touch: those sealed and indexed now. Later packs hold only newer chunks.
  const records = new Map<number, PackRecord>();
  const onlySet = only ? new Set(only) : undefined;
  for (const r of await store.listPacks()) if (!onlySet || onlySet.has(r.id)) records.set(r.id, r);
  // 2. Mark, after the pack listing (see fence.ts for why this order is safe).
  const live = new DigestSet(1 << 16);
  const inflight = await collectInFlight(store, live);
  const committed = await listCommitted(store);
  await markSnapshots(store, committed, live);
  trace('gc: marked');
  // 3. Per-pack liveness from the index.
  const liveness = new Map<number, PackLiveness>();
  for (const r of records.values()) {
    liveness.set(r.id, {
      id: r.id,
      bytes: r.bytes,
      payloadBytes: r.payloadBytes,
      chunks: r.chunks,
      indexedChunks: 0,
      indexedBytes: 0,
      liveChunks: 0,
      liveBytes: 0,
    });
  }
  const isLive = (d: Uint8Array, o = 0) => live.has(d, o) || fence.rescued(o === 0 ? d : d.subarray(o, o + 32));
  await scanIndex(store, (key, loc) => {
    const p = liveness.get(loc.pack);
    if (!p) return;
    p.indexedChunks++;
    p.indexedBytes += storedShare(loc);
    if (isLive(key, 1)) {
      p.liveChunks++;
      p.liveBytes += storedShare(loc);
    }
  });
  return { records, live, inflight, committed, liveness, isLive };
}

/** The index entries pointing into `packs`, per pack. */
export async function collectEntries(store: Store, packs: ReadonlySet<number>): Promise<Map<number, IndexedEntry[]>> {
  const entries = new Map<number, IndexedEntry[]>();
  for (const id of packs) entries.set(id, []);
  if (packs.size > 0) {
    await scanIndex(store, (key, loc) => {
      entries.get(loc.pack)?.push({ digest: Buffer.from(key.subarray(1)), loc });
    });
  }
  return entries;
}

/** Writes the live chunks of a step into new pack `packId` (sealed, not indexed): gc copies, compact compresses. */
export type CopyLive = (pending: IndexedEntry[], packId: number) => Promise<SealedPack>;

/**
 * Runs steps in the write order above: each step's old packs are replaced by new pack(s) holding
 * their live chunks (written by `copy`), or dropped when nothing in them is live. A step whose packs'
 * index entries changed since they were measured is skipped (reported in `result.skipped`).
 */
export async function executeSteps(
  store: Store,
  fence: GcFence,
  marked: Pick<Marked, 'records' | 'liveness' | 'isLive'>,
  steps: number[][],
  entries: Map<number, IndexedEntry[]>,
  result: GcResult,
  copy: CopyLive = async (pending, packId) => (await copyChunks(store, packId, pending)).sealed,
): Promise<void> {
  for (const old of steps) {
    const counts = old.map((id) => marked.liveness.get(id)!);
    const mismatch = old.find((id, i) => entries.get(id)!.length !== counts[i].indexedChunks);
    if (mismatch !== undefined) {
      result.skipped.push({
        packs: old.map(packFileName),
        reason: `index entries of pack ${packFileName(mismatch)} changed while gc ran`,
      });
      continue;
    }
    await executeStep(store, fence, marked.isLive, old, marked.records, entries, result, copy);
  }
}

/** A result with nothing done yet. */
export function emptyGcResult(): GcResult {
  return {
    packsDropped: 0,
    packsRewritten: 0,
    packsWritten: [],
    chunksCopied: 0,
    bytesCopied: 0,
    chunksRemoved: 0,
    deadBytesRemoved: 0,
    reclaimedBytes: 0,
    chunksRescued: 0,
    lookupsHeld: 0,
    keptBasesRemoved: 0,
    manifestBytesRemoved: 0,
    skipped: [],
  };
}

/** Iterates every chunk index entry (one iterator: a consistent view). */
async function scanIndex(store: Store, fn: (key: Buffer, loc: ChunkLocation) => void): Promise<void> {
  await scanChunkIndex(store.db, (k, loc) => {
    if (!loc) throw new CorruptError(`chunk index entry ${k.subarray(1).toString('hex')} does not decode; run 'vnstore check'`);
    fn(k, loc);
  });
}

/**
 * One step: copies the live (and rescued) chunks of `old` packs into new pack(s), then in one synced
 * batch re-points the index, drops the dead entries and the old packs, then deletes the old files.
 */
async function executeStep(
  store: Store,
  fence: GcFence,
  isLive: (d: Uint8Array) => boolean,
  old: number[],
  records: Map<number, PackRecord>,
  entries: Map<number, IndexedEntry[]>,
  result: GcResult,
  copy: CopyLive,
): Promise<void> {
  const all = old.flatMap((id) => entries.get(id)!);
  let pending = all.filter((e) => isLive(e.digest));
  let doomed = all.filter((e) => !isLive(e.digest));
  const written: SealedPack[] = [];
  let rescued = 0;
  try {
    for (;;) {
      if (pending.length > 0) {
        written.push(await copy(pending, store.writer.reservePackId()));
        trace('gc: pack written');
        failpoint('pack-renamed');
      }
      // Rescue check: a lookup found a doomed chunk since we looked (a session now references it).
      // Synchronous from here to the batch below: no lookup can slip in between.
      const late = doomed.filter((e) => fence.rescued(e.digest));
      if (late.length === 0) break;
      rescued += late.length;
      const lateSet = new Set(late);
      doomed = doomed.filter((e) => !lateSet.has(e));
      pending = late;
    }
  } catch (err) {
    // Nothing is indexed yet: remove the copies we wrote and leave the old packs untouched.
    await removePackFiles(
      store,
      written.map((w) => w.record.id),
    ).catch(() => undefined);
    if (err instanceof CorruptError) {
      result.skipped.push({ packs: old.map(packFileName), reason: err.message });
      return;
    }
    throw err;
  }
  const doomedSet = new DigestSet(Math.max(16, doomed.length));
  for (const e of doomed) doomedSet.add(e.digest);
  const oldRecords = old.map((id) => records.get(id)!);
  const delta: CounterDelta = {
    packs: written.length - old.length,
    packBytes: 0,
    packPayloadBytes: 0,
    chunks: -doomed.length,
    chunkBytes: 0,
  };
  for (const r of oldRecords) {
    delta.packBytes! -= r.bytes;
    delta.packPayloadBytes! -= r.payloadBytes;
  }
  for (const w of written) {
    delta.packBytes! += w.record.bytes;
    delta.packPayloadBytes! += w.record.payloadBytes;
  }
  const moved: { digest: Uint8Array; loc: ChunkLocation }[] = [];
  for (const { record, chunks: c } of written) {
    for (let k = 0; k < c.count; k++)
      moved.push({
        digest: c.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES),
        loc: chunkLocation(record.id, c, k),
      });
  }
  // Every old entry goes; the moved chunks come back with their new bytes (re-containered by gc,
  // compressed by compact), the dead ones do not.
  for (const e of all) delta.chunkBytes! -= storedShare(e.loc);
  const movedBytes = moved.reduce((s, m) => s + storedShare(m.loc), 0);
  delta.chunkBytes! += movedBytes;
  const at = new Date().toISOString();
  await fence.commit(doomedSet, async () => {
    const batch = new IndexBatch(store.db);
    for (const w of written) batch.addPack(w.record, w.chunks); // the copied chunks' entries now point into it
    for (const e of doomed) batch.removeChunk(e.digest);
    for (const id of old) {
      batch.removePack(id);
      batch.put(deletedPackKey(id), deletedPackValue({ id, reason: written.length > 0 ? 'gc-rewrite' : 'gc-drop', at }));
    }
    addCounterDelta(batch, delta);
    const token = await batch.write({ sync: true });
    // The in-memory table follows the index before any lookup is let through.
    store.indexChanged(token, { relocated: moved, removed: doomed.map((e) => e.digest) });
  });
  trace('gc: index updated');
  failpoint('index-written');
  // Reads that resolved an old location just before the batch still find the (unlinked) file.
  for (const id of old) await store.packs.retire(id);
  await removePackFiles(store, old);
  failpoint('files-removed');
  const batch = store.db.batch();
  for (const id of old) batch.del(deletedPackKey(id));
  await batch.write({ sync: true });
  trace('gc: packs removed');
  for (const w of written) result.packsWritten.push(packFileName(w.record.id));
  const rewritten = written.length > 0 || old.some((id) => (entries.get(id) ?? []).some((e) => isLive(e.digest)));
  if (rewritten) result.packsRewritten += old.length;
  else result.packsDropped += old.length;
  result.chunksCopied += moved.length;
  result.bytesCopied += moved.reduce((s, m) => s + m.loc.storedLength, 0);
  result.chunksRemoved += doomed.length;
  result.deadBytesRemoved += oldRecords.reduce((s, r) => s + r.payloadBytes, 0) - moved.reduce((s, m) => s + m.loc.storedLength, 0);
  result.reclaimedBytes += -delta.packBytes!;
  result.chunksRescued += rescued;
}

export function unneededKeptBases(
  committed: Parameters<typeof baseLookup>[0],
  kept: KeptBaseRecord[],
  inflightBases: Set<string>,
): KeptBaseRecord[] {
  if (kept.length === 0) return [];
  const baseOf = baseLookup(committed, kept);
  const needed = baseChainIds(
    committed.map((r) => r.id),
    baseOf,
  );
  for (const b of inflightBases) needed.add(b);
  for (const b of baseChainIds(inflightBases, baseOf)) needed.add(b);
  return kept.filter((k) => !needed.has(k.id));
}

async function pruneKeptBases(store: Store, result: GcResult): Promise<void> {
  const kept = await listKeptBases(store.db);
  if (kept.length === 0) return;
  const scratch = new DigestSet(16);
  const inflight = await collectInFlight(store, scratch);
  const committed = await listCommitted(store);
  const remove = unneededKeptBases(committed, kept, inflight.bases);
  if (remove.length === 0) return;
  const batch = store.db.batch();
  for (const k of remove) batch.del(keptBaseKey(k.id));
  addCounterDelta(batch, { keptBases: -remove.length, keptBaseBytes: -remove.reduce((s, k) => s + k.manifestBytes, 0) });
  await batch.write({ sync: true });
  failpoint('kept-bases-unlisted');
  for (const k of remove) await fsp.rm(manifestFile(store, k.id), { force: true });
  await fsyncDir(path.join(Store.paths(store.dir).manifests));
  result.keptBasesRemoved += remove.length;
  result.manifestBytesRemoved += remove.reduce((s, k) => s + k.manifestBytes, 0);
}
