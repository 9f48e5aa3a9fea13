/**
 * compact: rewrites cold LZ4 pages into zstd containers (pack format 2) of up to 16 distinct pages,
 * in first-seen order: the order in which a restore of the snapshot that brought each page reads it
 * (snapshots oldest first, pages in order), so that neighbours in a container are read together.
 *
 * It is gc with another copy: the same fence (concurrent with open sessions), the same mark and
 * measure, the same crash-safe steps (gc.ts executeSteps: new pack durable, one synced index batch
 * moving the chunks and writing 'd' records, then the old files go). Only the planner (compact-plan.ts)
 * and the copy differ: pages are decoded, verified, and compressed on the libuv thread pool.
 */
import { performance } from 'node:perf_hooks';
import { getZstd } from '../chunk/zstd.js';
import { ChunkCodec } from '../chunk/codec.js';
import { DIGEST_BYTES, PageKind } from '../format/pages.js';
import { foldCounters } from '../store/counters.js';
import { compactAllKeys, scanChunkIndex } from '../store/db.js';
import { Store } from '../store/store.js';
import { allowContainerPacks } from '../store/config.js';
import { VnstoreError } from '../util/errors.js';
import { trace } from '../util/trace.js';
import { DEFAULT_COMPACT_LEVEL, DEFAULT_MIN_AGE_MS, planCompact, type CompactPackFacts, type CompactPlan } from './compact-plan.js';
import { DigestSet } from './digest-set.js';
import { GcFence, withMaintenanceLock } from './fence.js';
import { collectEntries, emptyGcResult, executeSteps, markAndMeasure, type GcResult, type IndexedEntry } from './gc.js';
import { copyChunks } from './pack-io.js';

export interface CompactOptions {
  /** zstd level, 1..19 (default DEFAULT_COMPACT_LEVEL: docs/DESIGN.md). */
  level?: number;
  /** Packs sealed less than this long ago stay as they are (default 15 minutes). */
  minAgeMs?: number;
  /** Most live bytes one run recompresses (default: no bound). */
  maxRepackBytes?: number;
  dryRun?: boolean;
  /** Chunks recompressed so far, of the plan's total (for a progress bar). */
  onProgress?: (done: number, total: number) => void;
  /** The clock (tests pass one). */
  now?: () => number;
}

export interface CompactReport {
  dryRun: boolean;
  level: number;
  minAgeMs: number;
  live: { snapshots: number; chunks: number; sessions: number };
  plan: CompactPlan;
  /** Pack file bytes of the store before and after. */
  packBytesBefore: number;
  packBytesAfter?: number;
  result?: GcResult;
  seconds: number;
}

export const MAX_COMPACT_LEVEL = 19;

/** compact's options, checked (E_USAGE, E_UNSUPPORTED) before the store is touched. */
export function compactSettings(options: CompactOptions, targetBytes: number): { level: number; minAgeMs: number; now: () => number } {
  const level = options.level ?? DEFAULT_COMPACT_LEVEL;
  if (!Number.isInteger(level) || level < 1 || level > MAX_COMPACT_LEVEL) {
    throw new VnstoreError('E_USAGE', `compact: --level takes a whole number from 1 to ${MAX_COMPACT_LEVEL}, got ${level}`);
  }
  const minAgeMs = options.minAgeMs ?? DEFAULT_MIN_AGE_MS;
  const now = options.now ?? Date.now;
  try {
    planCompact([], { now: now(), minAgeMs, maxRepackBytes: options.maxRepackBytes, targetBytes });
  } catch (err) {
    throw new VnstoreError('E_USAGE', `compact: ${(err as Error).message}`);
  }
  if (!options.dryRun && !getZstd().canCompress) {
    throw new VnstoreError(
      'E_UNSUPPORTED',
      "compact needs libzstd (libzstd.so.1) and vnstore's native addon; install libzstd1 and run 'vnstore version' to see why it is not used (reading compacted packs does not need it)",
    );
  }
  return { level, minAgeMs, now };
}

export async function runCompact(store: Store, options: CompactOptions = {}): Promise<CompactReport> {
  // Loaded lazily: compact-v3 builds on this module's settings, and format-1/2 stores never need it.
  if (store.isNumbered) return (await import('./compact-v3.js')).runCompactNumbered(store, options);
  const { level, minAgeMs, now } = compactSettings(options, store.writer.targetBytes);
  return withMaintenanceLock(store, async () => {
    const started = performance.now();
    const fence = new GcFence(store);
    store.raiseGcFence(fence);
    try {
      const marked = await markAndMeasure(store, fence);
      const facts = await packFacts(store, marked);
      const plan = planCompact(facts, {
        now: now(),
        minAgeMs,
        maxRepackBytes: options.maxRepackBytes,
        targetBytes: store.writer.targetBytes,
      });
      trace('compact: planned');
      const packBytesBefore = [...marked.records.values()].reduce((s, r) => s + r.bytes, 0);
      const report: CompactReport = {
        dryRun: options.dryRun ?? false,
        level,
        minAgeMs,
        live: { snapshots: marked.committed.length, chunks: marked.live.size, sessions: marked.inflight.sessions },
        plan,
        packBytesBefore,
        seconds: 0,
      };
      if (!options.dryRun && plan.steps.length > 0) {
        await allowContainerPacks(store.dir, Store.paths(store.dir).tmp, store.config);
        const entries = await collectEntries(store, new Set(plan.steps.flat()));
        const rank = await firstSeenRanks(store, marked.committed, entries);
        const result = emptyGcResult();
        let done = 0;
        const total = plan.totals.liveChunks;
        options.onProgress?.(0, total);
        await executeSteps(store, fence, marked, plan.steps, entries, result, async (pending, packId) => {
          const ordered = pending
            .map((e) => ({ e, r: rank(e) }))
            .sort((a, b) => a.r - b.r)
            .map((x) => x.e);
          const base = done;
          const { sealed } = await copyChunks(store, packId, ordered, {
            compactLevel: level,
            onChunks: (n) => options.onProgress?.(Math.min(total, base + n), total),
          });
          done += pending.length;
          return sealed;
        });
        result.lookupsHeld = fence.held;
        await foldCounters(store.db);
        // Every moved chunk left a superseded index entry behind: drop them now, not at LevelDB's leisure.
        await compactAllKeys(store.db);
        report.result = result;
        report.packBytesAfter = packBytesBefore - result.reclaimedBytes;
      }
      report.seconds = (performance.now() - started) / 1000;
      trace('compact: done');
      return report;
    } finally {
      store.lowerGcFence(fence);
    }
  });
}

/** Per-pack facts for the planner: liveness from the mark, LZ4 pages counted from the index. */
async function packFacts(store: Store, marked: Awaited<ReturnType<typeof markAndMeasure>>): Promise<CompactPackFacts[]> {
  const facts = new Map<number, CompactPackFacts>();
  for (const [id, l] of marked.liveness) {
    const sealedAtMs = Date.parse(marked.records.get(id)!.sealedAt);
    facts.set(id, {
      id,
      bytes: l.bytes,
      sealedAtMs: Number.isFinite(sealedAtMs) ? sealedAtMs : 0,
      liveChunks: l.liveChunks,
      liveBytes: l.liveBytes,
      lz4LiveChunks: 0,
      lz4LiveBytes: 0,
    });
  }
  await scanChunkIndex(store.db, (k, loc) => {
    if (!loc || loc.codec !== ChunkCodec.Lz4) return;
    const f = facts.get(loc.pack);
    if (!f || !marked.isLive(k, 1)) return;
    f.lz4LiveChunks++;
    f.lz4LiveBytes += loc.storedLength;
  });
  return [...facts.values()];
}

/**
 * The first-seen rank of every chunk in `entries`: walking committed snapshots oldest first, pages in
 * order, the nth distinct chunk met has rank n. Chunks no snapshot names (open sessions') come last.
 */
async function firstSeenRanks(
  store: Store,
  committed: readonly { id: string }[],
  entries: Map<number, IndexedEntry[]>,
): Promise<(e: IndexedEntry) => number> {
  const all = [...entries.values()].flat();
  const set = new DigestSet(Math.max(1024, all.length));
  for (const e of all) set.add(e.digest);
  const ranks = new Float64Array(set.ordinalCapacity).fill(Infinity);
  let next = 0;
  for (const r of committed) {
    if (next === set.size) break;
    const pages = await store.loadPages(r.id);
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] !== PageKind.Digest) continue;
      const ord = set.find(pages.digests, i * DIGEST_BYTES);
      if (ord >= 0 && ranks[ord] === Infinity) ranks[ord] = next++;
    }
  }
  return (e) => {
    const r = ranks[set.find(e.digest)];
    return r === Infinity ? Number.MAX_SAFE_INTEGER : r;
  };
}
