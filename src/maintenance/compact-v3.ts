/**
 * compact on a store of format 3: cold packs whose live chunks are mostly LZ4 pages are rewritten
 * with those pages in zstd containers of up to 16, each page keeping its number. Containers are
 * formed in number order, which is first-seen order (numbers are given as chunks are first stored),
 * so a restore reads a container's neighbours together. The planner is format 2's (compact-plan.ts,
 * with a pack's file time as its seal time: format 3 keeps no pack records, and counting only the LZ4
 * pages a container can take, which keeps a second run from redoing the first); each step is gc-v3's
 * (copy, `d` batch, index swap, files), under the same fence.
 */
import { promises as fsp } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { ChunkCodec } from '../chunk/codec.js';
import { metaCodec } from '../format/pack-v3.js';
import type { Store } from '../store/store.js';
import { trace } from '../util/trace.js';
import { compactSettings, type CompactOptions, type CompactReport } from './compact.js';
import { planCompact, type CompactPackFacts } from './compact-plan.js';
import { GcFence, withMaintenanceLock } from './fence.js';
import { emptyGcResult } from './gc.js';
import { entryShare, measureNumbered, packsBeforeMark, replacePacks } from './gc-v3.js';
import { markLiveNumbers } from './live-v3.js';
import { numberedView, type NumberedStore } from './numbered-store.js';
import { tocNumbers } from './pack-copy-v3.js';

export async function runCompactNumbered(store: Store, options: CompactOptions = {}): Promise<CompactReport> {
  const { level, minAgeMs, now } = compactSettings(options, store.writer.targetBytes);
  return withMaintenanceLock(store, async () => {
    const fence = new GcFence(store);
    store.raiseGcFence(fence);
    try {
      const report = await compactNumbered(numberedView(store, fence), options, level, minAgeMs, now());
      if (report.result) report.result.lookupsHeld = fence.held;
      return report;
    } finally {
      store.lowerGcFence(fence);
    }
  });
}

async function compactNumbered(
  store: NumberedStore,
  options: CompactOptions,
  level: number,
  minAgeMs: number,
  nowMs: number,
): Promise<CompactReport> {
  const started = performance.now();
  const candidates = packsBeforeMark(store); // before the mark: see packsBeforeMark
  const marked = await markLiveNumbers(store.dir, store.db, store.inFlightNumbers.bind(store));
  const live = (n: number) => marked.live.has(n);
  const facts: CompactPackFacts[] = [];
  for (const l of await measureNumbered(store, marked.live, candidates)) {
    const { toc } = await store.packs.readTocV3(l.id);
    const numbers = tocNumbers(toc);
    const f: CompactPackFacts = {
      id: l.id,
      bytes: l.bytes,
      sealedAtMs: 0,
      liveChunks: l.liveChunks,
      liveBytes: l.liveBytes,
      lz4LiveChunks: 0,
      lz4LiveBytes: 0,
    };
    f.sealedAtMs = (await fsp.stat(store.packs.packPath(l.id))).mtimeMs;
    // LZ4 pages a container can take: live, next to another live LZ4 page (a raw page ends a container,
    // so a page between two raw ones stays LZ4 however often compact runs).
    const lz4 = (k: number) => k >= 0 && k < toc.count && metaCodec(toc.metas[k]) === ChunkCodec.Lz4 && live(numbers[k]);
    for (let k = 0; k < toc.count; k++) {
      if (!lz4(k) || !(lz4(k - 1) || lz4(k + 1))) continue;
      f.lz4LiveChunks++;
      f.lz4LiveBytes += entryShare(toc, k);
    }
    facts.push(f);
  }
  const plan = planCompact(facts, { now: nowMs, minAgeMs, maxRepackBytes: options.maxRepackBytes, targetBytes: store.packTargetBytes });
  trace('compact: planned');
  const packBytesBefore = facts.reduce((s, f) => s + f.bytes, 0);
  const report: CompactReport = {
    dryRun: options.dryRun ?? false,
    level,
    minAgeMs,
    live: { snapshots: marked.committed.length, chunks: marked.live.size, sessions: marked.sessions },
    plan,
    packBytesBefore,
    seconds: 0,
  };
  if (!options.dryRun && plan.steps.length > 0) {
    const result = emptyGcResult();
    const total = plan.totals.liveChunks;
    let done = 0;
    options.onProgress?.(0, total);
    for (const step of plan.steps) {
      const base = done;
      await replacePacks(
        store,
        step,
        live,
        result,
        { compactLevel: level, onChunks: (n) => options.onProgress?.(Math.min(total, base + n), total) },
        'compact',
      );
      done = result.chunksCopied;
    }
    report.result = result;
    report.packBytesAfter = packBytesBefore - result.reclaimedBytes;
  }
  report.seconds = (performance.now() - started) / 1000;
  trace('compact: done');
  return report;
}
