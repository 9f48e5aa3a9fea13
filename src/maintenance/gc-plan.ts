/**
 * gc plan: a pure function from per-pack liveness to what to do with each pack. No I/O, no clock:
 * the same input always gives the same plan (tests call it directly).
 *
 *   drop     no live chunk: the pack and its index entries go
 *   rewrite  live fraction (live payload / payload) below the threshold, or a small pack merged with
 *            others (repackSmall): live chunks are copied, as stored, into new packs; the old pack goes
 *   keep     everything else (its dead chunks stay until the pack gets sparse enough)
 *
 * New packs are formed from whole old packs' live data, in pack id order, closing a new pack once it
 * reaches the target size; so the plan knows the new packs' exact sizes and the exact bytes reclaimed.
 */
import { PACK_HEADER_BYTES, PACK_TRAILER_BYTES, TOC_ENTRY_BYTES } from '../format/pack.js';

export interface PackLiveness {
  id: number;
  /** Whole file size and payload bytes (from the pack record). */
  bytes: number;
  payloadBytes: number;
  chunks: number;
  /** Index entries pointing into this pack, and those of them that are live. */
  indexedChunks: number;
  indexedBytes: number;
  liveChunks: number;
  liveBytes: number;
}

export interface GcPlanOptions {
  /** Rewrite a pack whose live fraction is below this (0..1]; 1 = rewrite every pack with dead bytes. */
  repackBelow: number;
  /** Also merge packs smaller than a quarter of the target size (when there are at least two). */
  repackSmall: boolean;
  /** Size at which a new pack is closed (the pack writer's target). */
  targetBytes: number;
}

export const DEFAULT_REPACK_BELOW = 0.5;

export type PackAction = 'drop' | 'rewrite' | 'keep';

export interface PackDecision extends PackLiveness {
  action: PackAction;
  reason: string;
  liveFraction: number;
}

export interface PlannedPack {
  /** Old packs whose live chunks fill this new pack, in order. */
  from: number[];
  chunks: number;
  payloadBytes: number;
  bytes: number;
}

export interface GcPlan {
  options: GcPlanOptions;
  packs: PackDecision[];
  drop: number[];
  rewrite: number[];
  newPacks: PlannedPack[];
  totals: {
    packs: number;
    packBytes: number;
    liveChunks: number;
    liveBytes: number;
    /** Payload bytes not live (dead indexed chunks and unindexed copies), in all packs. */
    deadBytes: number;
    /** Index entries that will be removed (dead chunks in dropped and rewritten packs). */
    chunksRemoved: number;
    deadBytesRemoved: number;
    /** Live bytes copied into new packs. */
    bytesCopied: number;
    chunksCopied: number;
    /** File bytes freed: old files removed minus new files written. */
    reclaimBytes: number;
    /** Dead payload bytes left in kept packs. */
    deadBytesKept: number;
  };
}

export function newPackBytes(chunks: number, payloadBytes: number): number {
  return PACK_HEADER_BYTES + payloadBytes + chunks * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES;
}

export function planGc(packs: readonly PackLiveness[], options: GcPlanOptions): GcPlan {
  if (!(options.repackBelow > 0 && options.repackBelow <= 1)) throw new RangeError(`repackBelow must be in (0, 1], got ${options.repackBelow}`);
  if (!(options.targetBytes >= 4096)) throw new RangeError(`targetBytes ${options.targetBytes}`);
  const sorted = [...packs].sort((a, b) => a.id - b.id);
  const decisions: PackDecision[] = sorted.map((p) => {
    if (p.liveChunks > p.indexedChunks || p.liveBytes > p.payloadBytes || p.indexedBytes > p.payloadBytes) {
      throw new RangeError(`pack ${p.id}: inconsistent liveness`);
    }
    const liveFraction = p.payloadBytes === 0 ? 0 : p.liveBytes / p.payloadBytes;
    if (p.liveChunks === 0) return { ...p, liveFraction, action: 'drop', reason: p.chunks === 0 ? 'empty' : 'no live chunks' };
    if (p.liveBytes < p.payloadBytes && liveFraction < options.repackBelow) {
      return { ...p, liveFraction, action: 'rewrite', reason: `live ${pct(liveFraction)} < ${pct(options.repackBelow)}` };
    }
    return { ...p, liveFraction, action: 'keep', reason: p.liveBytes === p.payloadBytes ? 'all live' : `live ${pct(liveFraction)} >= ${pct(options.repackBelow)}` };
  });
  if (options.repackSmall) {
    const small = decisions.filter((d) => d.action === 'keep' && d.bytes < options.targetBytes / 4);
    const rewriting = decisions.filter((d) => d.action === 'rewrite').length;
    if (small.length >= 2 || (small.length === 1 && rewriting > 0)) {
      for (const d of small) {
        d.action = 'rewrite';
        d.reason = `small (${d.bytes} B < target/4)`;
      }
    }
  }
  const newPacks: PlannedPack[] = [];
  let cur: PlannedPack | undefined;
  for (const d of decisions) {
    if (d.action !== 'rewrite') continue;
    cur ??= { from: [], chunks: 0, payloadBytes: 0, bytes: 0 };
    cur.from.push(d.id);
    cur.chunks += d.liveChunks;
    cur.payloadBytes += d.liveBytes;
    if (PACK_HEADER_BYTES + cur.payloadBytes >= options.targetBytes) {
      cur.bytes = newPackBytes(cur.chunks, cur.payloadBytes);
      newPacks.push(cur);
      cur = undefined;
    }
  }
  if (cur) {
    cur.bytes = newPackBytes(cur.chunks, cur.payloadBytes);
    newPacks.push(cur);
  }
  const totals: GcPlan['totals'] = {
    packs: decisions.length,
    packBytes: 0,
    liveChunks: 0,
    liveBytes: 0,
    deadBytes: 0,
    chunksRemoved: 0,
    deadBytesRemoved: 0,
    bytesCopied: 0,
    chunksCopied: 0,
    reclaimBytes: 0,
    deadBytesKept: 0,
  };
  for (const d of decisions) {
    totals.packBytes += d.bytes;
    totals.liveChunks += d.liveChunks;
    totals.liveBytes += d.liveBytes;
    totals.deadBytes += d.payloadBytes - d.liveBytes;
    if (d.action === 'keep') {
      totals.deadBytesKept += d.payloadBytes - d.liveBytes;
      continue;
    }
    totals.chunksRemoved += d.indexedChunks - d.liveChunks;
    totals.deadBytesRemoved += d.payloadBytes - d.liveBytes;
    totals.reclaimBytes += d.bytes;
    if (d.action === 'rewrite') {
      totals.bytesCopied += d.liveBytes;
      totals.chunksCopied += d.liveChunks;
    }
  }
  for (const n of newPacks) totals.reclaimBytes -= n.bytes;
  return {
    options,
    packs: decisions,
    drop: decisions.filter((d) => d.action === 'drop').map((d) => d.id),
    rewrite: decisions.filter((d) => d.action === 'rewrite').map((d) => d.id),
    newPacks,
    totals,
  };
}

function pct(f: number): string {
  return `${(f * 100).toFixed(1)}%`;
}
