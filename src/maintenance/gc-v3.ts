/**
 * gc on a store of format 3: mark (a bitset over chunk numbers, live-v3.ts), measure (per-pack
 * liveness from the packs' TOCs), plan (gc-plan.ts, the same store-wide target as format 2), execute
 * in crash-safe steps. Copies keep their chunks' numbers, so no manifest is rewritten. Write order per
 * step (docs/FORMAT.md, "Recovery (format 3)"):
 *
 *   1. the live chunks of the step's packs are copied into one new pack (tmp/, fsync, rename, fsync);
 *   2. one synced batch writes a `d` record for every pack the step replaces, the number mark and
 *      the counters' delta;
 *   3. in memory, the originals leave the number index before the copy joins it;
 *   4. the old files are deleted (packs/ fsynced), then their `d` records (synced).
 *
 * A kill before 2 leaves a copy whose numbers all appear in older packs: the next open deletes it.
 * After 2, the next open finishes 4 from the `d` records. Every snapshot stays readable throughout.
 */
import { promises as fsp } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { packFileName, storedShare } from '../format/pack.js';
import {
  metaCodec,
  metaMember,
  metaPages,
  metaStoredLength,
  NUMBERED_TOC_ENTRY_BYTES,
  TOC_DIGEST_BYTES,
  type TocV3,
} from '../format/pack-v3.js';
import { addCounterDelta } from '../store/counters.js';
import { deletedPackKey, deletedPackValue, keptBaseKey } from '../store/keys.js';
import { NEXT_NUMBER_KEY } from '../store/number-allocator.js';
import { storePaths } from '../store/paths.js';
import { fsyncDir } from '../util/durable.js';
import { CorruptError } from '../util/errors.js';
import { trace } from '../util/trace.js';
import { emptyGcResult, failpoint, unneededKeptBases, type GcOptions, type GcReport, type GcResult } from './gc.js';
import { gcPlanOptions, planGc, type PackLiveness } from './gc-plan.js';
import { DEFAULT_COMPACT_LEVEL } from './compact-plan.js';
import { manifestPathOf, markLiveNumbers, type LiveNumbers } from './live-v3.js';
import { numberedView, type NumberedStore } from './numbered-store.js';
import { GcFence, withMaintenanceLock } from './fence.js';
import type { Store } from '../store/store.js';
import { DigestSet } from './digest-set.js';
import { copyNumbered, tocNumbers, unitsToCopy, type CopiedPack, type CopyOptions } from './pack-copy-v3.js';

/**
 * gc's copies: the live pages of a container that lost some go into new containers at compact's
 * default level (docs/DESIGN.md, "gc keeps containers"), so forget + gc keeps what compact gained.
 */
const GC_COPY: CopyOptions = { recontainerLevel: DEFAULT_COMPACT_LEVEL };

/** gc of an open format-3 store: under the maintenance lock, with the gc fence up while it runs. */
export async function runGcNumbered(store: Store, options: GcOptions = {}): Promise<GcReport> {
  gcPlanOptions(options, store.writer.targetBytes, NUMBERED_TOC_ENTRY_BYTES); // checked before the store is touched
  return withMaintenanceLock(store, async () => {
    const fence = new GcFence(store);
    // Up before anything is read: from here on, every chunk a lookup finds is live.
    store.raiseGcFence(fence);
    try {
      const report = await runGcV3(numberedView(store, fence), options);
      if (report.result) report.result.lookupsHeld = fence.held;
      return report;
    } finally {
      store.lowerGcFence(fence);
    }
  });
}

export async function runGcV3(store: NumberedStore, options: GcOptions = {}): Promise<GcReport> {
  const planOptions = gcPlanOptions(options, store.packTargetBytes, NUMBERED_TOC_ENTRY_BYTES);
  const started = performance.now();
  const candidates = packsBeforeMark(store, options.packs);
  const marked = await markLiveNumbers(store.dir, store.db, store.inFlightNumbers?.bind(store));
  trace('gc: marked');
  const liveness = await measureNumbered(store, marked.live, candidates);
  const plan = planGc(liveness, planOptions);
  const unneeded = unneededKeptBases(marked.committed, marked.kept, marked.inFlightBases);
  trace('gc: planned');
  const report: GcReport = {
    dryRun: options.dryRun ?? false,
    live: {
      snapshots: marked.committed.length,
      chunks: marked.live.size,
      sessions: marked.sessions,
      preparedManifests: marked.inFlightManifests,
    },
    plan,
    keptBasesUnneeded: unneeded.map((k) => k.id),
    seconds: 0,
  };
  if (!options.dryRun) {
    const result = emptyGcResult();
    const steps: number[][] = [];
    for (let i = 0; i < plan.drop.length; i += 256) steps.push(plan.drop.slice(i, i + 256));
    for (const n of plan.newPacks) steps.push(n.from);
    for (const old of steps) await replacePacks(store, old, (n) => marked.live.has(n), result, GC_COPY);
    await pruneKeptBasesV3(store, marked, result);
    report.result = result;
    trace('gc: done');
  }
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

/**
 * The packs gc or compact may touch, listed BEFORE the live set is marked (`only`: of those). A pack
 * sealed later holds chunks a session wrote that the mark could not number yet (they were still in
 * the writer's open pack) and that no manifest names until the session commits: measured against
 * that mark, it would look dead and be dropped under the commit that names it.
 */
export function packsBeforeMark(store: NumberedStore, only?: readonly number[]): number[] {
  const indexed = store.numbered.index.packIds;
  if (!only) return indexed;
  const set = new Set(indexed);
  return only.filter((p) => set.has(p));
}

/** Per-pack liveness of the indexed packs (`only`: of those), from their TOCs. */
export async function measureNumbered(
  store: NumberedStore,
  live: { has(n: number): boolean },
  only?: readonly number[],
): Promise<PackLiveness[]> {
  const onlySet = only ? new Set(only) : undefined;
  const out: PackLiveness[] = [];
  for (const id of store.numbered.index.packIds.sort((a, b) => a - b)) {
    if (onlySet && !onlySet.has(id)) continue;
    const { toc, tocOffset } = await store.packs.readTocV3(id);
    const { size } = await fsp.stat(store.packs.packPath(id));
    const p: PackLiveness = {
      id,
      bytes: size,
      payloadBytes: tocOffset - 16,
      chunks: toc.count,
      indexedChunks: toc.count,
      indexedBytes: 0,
      liveChunks: 0,
      liveBytes: 0,
    };
    const numbers = tocNumbers(toc);
    for (let k = 0; k < toc.count; k++) {
      const share = entryShare(toc, k);
      p.indexedBytes += share;
      if (live.has(numbers[k])) {
        p.liveChunks++;
        p.liveBytes += share;
      }
    }
    out.push(p);
  }
  return out;
}

/** Entry k's share of its stored payload (a container's frame split evenly over its pages). */
export function entryShare(toc: TocV3, k: number): number {
  const meta = toc.metas[k];
  return storedShare({ storedLength: metaStoredLength(meta), codec: metaCodec(meta), member: metaMember(meta), pages: metaPages(meta) });
}

type StepTocs = Map<number, { toc: TocV3; bytes: number; payloadBytes: number }>;

/**
 * One step: the chunks of `old` packs that `keep` names (and those a session looked up since gc
 * began: the fence's journal) are copied into one new pack (none: the packs are dropped), then the
 * `d` batch, the index swap, the files' removal. A chunk that does not verify skips the step
 * (reported) and leaves the packs as they were.
 */
export async function replacePacks(
  store: NumberedStore,
  old: readonly number[],
  keep: (n: number) => boolean,
  result: GcResult,
  copyOptions: CopyOptions = {},
  reason = 'gc',
): Promise<void> {
  const tocs: StepTocs = new Map();
  for (const id of old) {
    const { toc, tocOffset } = await store.packs.readTocV3(id);
    tocs.set(id, { toc, bytes: (await fsp.stat(store.packs.packPath(id))).size, payloadBytes: tocOffset - 16 });
  }
  const fence = store.fence;
  const rescued = new Set<number>();
  const kept = (toc: TocV3) => (n: number, k: number) => {
    if (keep(n) || rescued.has(n)) return true;
    if (!fence?.rescued(toc.digests.subarray(k * TOC_DIGEST_BYTES, (k + 1) * TOC_DIGEST_BYTES))) return false;
    rescued.add(n);
    return true;
  };
  let copied: CopiedPack | undefined;
  let doomed: DigestSet;
  for (;;) {
    const units = old.flatMap((id) => unitsToCopy(id, tocs.get(id)!.toc, kept(tocs.get(id)!.toc)));
    const copiedRescues = rescued.size;
    if (units.length > 0) {
      try {
        copied = await copyNumbered(store, store.reservePackId(), units, copyOptions);
      } catch (err) {
        if (!(err instanceof CorruptError)) throw err;
        result.skipped.push({ packs: old.map(packFileName), reason: err.message });
        return;
      }
      trace(`${reason}: pack written`);
      failpoint('pack-renamed');
    }
    // From this check to the fence's commit below nothing awaits: no lookup slips in between.
    doomed = doomedChunks(tocs, kept);
    if (rescued.size === copiedRescues) break;
    if (copied) await discardCopy(store, copied.pack); // redone with the late rescues in it
    copied = undefined;
  }
  result.chunksRescued += rescued.size;
  const at = new Date().toISOString();
  const swap = async () => {
    const batch = store.db.batch();
    for (const id of old)
      batch.put(deletedPackKey(id), deletedPackValue({ id, reason: copied ? `${reason}-rewrite` : `${reason}-drop`, at }));
    batch.put(NEXT_NUMBER_KEY, store.numbered.allocator.markValue());
    await batch.write({ sync: true }); // no counter delta: format 3 counts packs and chunks from the packs
    // In memory, after the batch: the originals leave the index before the copy joins it.
    await store.numbered.replacePacks(
      old.map((id) => ({ pack: id, digests: tocs.get(id)!.toc.digests })),
      copied ? [copied.pack] : [],
    );
  };
  await (fence ? fence.commit(doomed, swap) : swap());
  trace(`${reason}: index updated`);
  failpoint('index-written');
  // Reads that located a chunk in an old pack just before the swap still find the (unlinked) file.
  for (const id of old) await store.packs.retire(id);
  for (const id of old) await fsp.rm(store.packs.packPath(id), { force: true });
  store.forgetPacks(old); // else a worker that read them keeps the unlinked files open
  await fsyncDir(store.packs.packsDir);
  failpoint('files-removed');
  const done = store.db.batch();
  for (const id of old) done.del(deletedPackKey(id));
  await done.write({ sync: true });
  trace(`${reason}: packs removed`);
  const chunksBefore = [...tocs.values()].reduce((s, t) => s + t.toc.count, 0);
  const payloadBefore = [...tocs.values()].reduce((s, t) => s + t.payloadBytes, 0);
  if (copied) {
    result.packsWritten.push(packFileName(copied.pack));
    result.packsRewritten += old.length;
    result.chunksCopied += copied.chunks;
    result.bytesCopied += copied.payloadBytes;
  } else result.packsDropped += old.length;
  result.chunksRemoved += chunksBefore - (copied?.chunks ?? 0);
  result.deadBytesRemoved += payloadBefore - (copied?.payloadBytes ?? 0);
  result.reclaimedBytes += [...tocs.values()].reduce((s, t) => s + t.bytes, 0) - (copied?.bytes ?? 0);
}

/** The digests of the chunks of a step's packs that `kept` does not keep. */
function doomedChunks(tocs: StepTocs, kept: (toc: TocV3) => (n: number, k: number) => boolean): DigestSet {
  const doomed = new DigestSet(64, TOC_DIGEST_BYTES);
  for (const { toc } of tocs.values()) {
    const keeps = kept(toc);
    const numbers = tocNumbers(toc);
    for (let k = 0; k < toc.count; k++) if (!keeps(numbers[k], k)) doomed.add(toc.digests, k * TOC_DIGEST_BYTES);
  }
  return doomed;
}

/** Removes a copy that never joined the index. */
async function discardCopy(store: NumberedStore, pack: number): Promise<void> {
  await store.packs.evict(pack);
  await fsp.rm(store.packs.packPath(pack), { force: true });
  store.forgetPacks([pack]);
  await fsyncDir(store.packs.packsDir);
}

/** Kept base manifests no chain needs any more: their `k` records go (synced), then the files. */
async function pruneKeptBasesV3(store: NumberedStore, marked: LiveNumbers, result: GcResult): Promise<void> {
  // Recomputed when sessions may have come and gone while gc ran (an open engine store).
  const now = store.inFlightNumbers ? await markLiveNumbers(store.dir, store.db, store.inFlightNumbers.bind(store)) : marked;
  const remove = unneededKeptBases(now.committed, now.kept, new Set([...now.inFlightBases, ...marked.inFlightBases]));
  if (remove.length === 0) return;
  const batch = store.db.batch();
  for (const k of remove) batch.del(keptBaseKey(k.id));
  const bytes = remove.reduce((s, k) => s + k.manifestBytes, 0);
  addCounterDelta(batch, { keptBases: -remove.length, keptBaseBytes: -bytes });
  await batch.write({ sync: true });
  failpoint('kept-bases-unlisted');
  for (const k of remove) await fsp.rm(manifestPathOf(store.dir, k.id), { force: true });
  await fsyncDir(storePaths(store.dir).manifests);
  result.keptBasesRemoved += remove.length;
  result.manifestBytesRemoved += bytes;
}
