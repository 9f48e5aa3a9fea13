/**
 * gc plan: a pure function from per-pack liveness to what to do with each pack. No I/O, no clock:
 * the same input always gives the same plan (tests call it directly).
 *
 *   drop     no live chunk: the pack and its index entries go (always: it costs no copying)
 *   rewrite  live chunks are copied, as stored, into new packs; the old pack goes
 *   keep     everything else (its dead chunks stay as unused bytes)
 *
 * Which packs to rewrite follows a store-wide target, as restic's prune does (docs/DESIGN.md): packs
 * are rewritten sparsest first (lowest live fraction) until the unused bytes left (dead payload in
 * kept packs) are at most `maxUnused` (a share of the store's pack bytes after gc, or a size), while
 * the bytes copied stay within `maxRepackBytes`. A per-pack live-fraction threshold left a store
 * whose forgotten snapshots were spread over half-live packs with all of its dead bytes.
 *
 * New packs are formed from whole old packs' live data, in pack id order, closing a new pack once it
 * reaches the target size; so the plan knows the new packs' exact sizes and the exact bytes reclaimed.
 */
import { PACK_HEADER_BYTES, PACK_TRAILER_BYTES, TOC_ENTRY_BYTES } from '../format/pack.js';
import { VnstoreError } from '../util/errors.js';

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

/** How many unused bytes gc may leave: a percentage of the store's pack bytes after gc, bytes, or any. */
export type MaxUnused = { percent: number } | { bytes: number } | { unlimited: true };

export interface GcPlanOptions {
  maxUnused: MaxUnused;
  /** Most live bytes one run copies (absent: no bound). */
  maxRepackBytes?: number;
  /** Also merge packs smaller than a quarter of the target size (when there are at least two). */
  repackSmall: boolean;
  /** Size at which a new pack is closed (the pack writer's target). */
  targetBytes: number;
  /** Table-of-contents bytes a copied chunk costs (default: a version-1/2 entry; format 3: digest + item). */
  tocEntryBytes?: number;
}

export const DEFAULT_MAX_UNUSED: MaxUnused = { percent: 5 };

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
    /** Dead payload bytes left in kept packs: the unused bytes after gc. */
    deadBytesKept: number;
    /** Pack file bytes after gc (kept packs and new ones). */
    packBytesAfter: number;
    /** The target for deadBytesKept this plan was made against (bytes, from maxUnused; null: unlimited). */
    maxUnusedBytes: number | null;
  };
}

export function newPackBytes(chunks: number, payloadBytes: number, tocEntryBytes = TOC_ENTRY_BYTES): number {
  return PACK_HEADER_BYTES + payloadBytes + chunks * tocEntryBytes + PACK_TRAILER_BYTES;
}

/** The unused bytes allowed when the store's pack files hold `packBytes` after gc. */
export function maxUnusedBytes(maxUnused: MaxUnused, packBytes: number): number {
  if ('unlimited' in maxUnused) return Infinity;
  return 'bytes' in maxUnused ? maxUnused.bytes : Math.floor((packBytes * maxUnused.percent) / 100);
}

function checkOptions(o: GcPlanOptions): void {
  const m = o.maxUnused;
  const bad =
    'unlimited' in m
      ? m.unlimited !== true
      : 'bytes' in m
        ? !Number.isSafeInteger(m.bytes) || m.bytes < 0
        : !(m.percent >= 0 && m.percent < 100);
  if (bad) throw new RangeError(`maxUnused must be a size >= 0, a percentage in [0, 100) or unlimited, got ${JSON.stringify(m)}`);
  if (o.maxRepackBytes !== undefined && !(Number.isSafeInteger(o.maxRepackBytes) && o.maxRepackBytes >= 0))
    throw new RangeError(`maxRepackBytes ${o.maxRepackBytes}`);
  if (!(o.targetBytes >= 4096)) throw new RangeError(`targetBytes ${o.targetBytes}`);
}

/** gc's command options as plan options, checked (E_USAGE) before the store is touched. */
export function gcPlanOptions(
  o: { maxUnused?: MaxUnused; maxRepackBytes?: number; repackSmall?: boolean },
  targetBytes: number,
  tocEntryBytes?: number,
): GcPlanOptions {
  const plan: GcPlanOptions = {
    maxUnused: o.maxUnused ?? DEFAULT_MAX_UNUSED,
    maxRepackBytes: o.maxRepackBytes,
    repackSmall: o.repackSmall ?? false,
    targetBytes,
    tocEntryBytes,
  };
  try {
    checkOptions(plan);
  } catch (err) {
    throw new VnstoreError('E_USAGE', `gc: ${(err as Error).message}`);
  }
  return plan;
}

export function planGc(packs: readonly PackLiveness[], options: GcPlanOptions): GcPlan {
  checkOptions(options);
  const sorted = [...packs].sort((a, b) => a.id - b.id);
  const decisions: PackDecision[] = sorted.map((p) => {
    if (p.liveChunks > p.indexedChunks || p.liveBytes > p.payloadBytes || p.indexedBytes > p.payloadBytes) {
      throw new RangeError(`pack ${p.id}: inconsistent liveness`);
    }
    const liveFraction = p.payloadBytes === 0 ? 0 : p.liveBytes / p.payloadBytes;
    if (p.liveChunks === 0) return { ...p, liveFraction, action: 'drop', reason: p.chunks === 0 ? 'empty' : 'no live chunks' };
    return { ...p, liveFraction, action: 'keep', reason: p.liveBytes === p.payloadBytes ? 'all live' : '' };
  });
  // Sparsest first: the most unused bytes reclaimed per byte copied (ties: lower id first).
  const candidates = decisions
    .filter((d) => d.action === 'keep' && d.liveBytes < d.payloadBytes)
    .sort((a, b) => a.liveFraction - b.liveFraction || a.id - b.id);
  // What the store holds after gc, as rewrites are decided: each rewritten pack's live chunks
  // counted as they will be stored (payload and table entries; the new packs' framing, a few dozen
  // bytes each, only adds to the real total, so the target computed here is never above the final).
  let unused = 0;
  let after = 0;
  for (const d of decisions) {
    if (d.action === 'drop') continue;
    unused += d.payloadBytes - d.liveBytes;
    after += d.bytes;
  }
  const maxRepack = options.maxRepackBytes ?? Infinity;
  let copied = 0;
  for (const d of candidates) {
    const target = maxUnusedBytes(options.maxUnused, after);
    if (unused <= target) {
      d.reason = `unused within target (${unused} <= ${target} B)`;
      continue;
    }
    if (copied + d.liveBytes > maxRepack) {
      d.reason = `over --max-repack (${copied} + ${d.liveBytes} > ${maxRepack} B)`;
      continue;
    }
    d.action = 'rewrite';
    d.reason = `live ${pct(d.liveFraction)}; unused ${unused} B > target ${target} B`;
    copied += d.liveBytes;
    unused -= d.payloadBytes - d.liveBytes;
    after -= d.bytes - (d.liveBytes + d.liveChunks * (options.tocEntryBytes ?? TOC_ENTRY_BYTES));
  }
  if (options.repackSmall) {
    const small = decisions.filter((d) => d.action === 'keep' && d.bytes < options.targetBytes / 4);
    const rewriting = decisions.filter((d) => d.action === 'rewrite').length;
    if (small.length >= 2 || (small.length === 1 && rewriting > 0)) {
      for (const d of small) {
        if (copied + d.liveBytes > maxRepack) continue;
        copied += d.liveBytes;
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
      cur.bytes = newPackBytes(cur.chunks, cur.payloadBytes, options.tocEntryBytes);
      newPacks.push(cur);
      cur = undefined;
    }
  }
  if (cur) {
    cur.bytes = newPackBytes(cur.chunks, cur.payloadBytes, options.tocEntryBytes);
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
    packBytesAfter: 0,
    maxUnusedBytes: 0,
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
  totals.packBytesAfter = totals.packBytes - totals.reclaimBytes;
  const target = maxUnusedBytes(options.maxUnused, totals.packBytesAfter);
  totals.maxUnusedBytes = target === Infinity ? null : target;
  return {
    options,
    packs: decisions,
    drop: decisions.filter((d) => d.action === 'drop').map((d) => d.id),
    rewrite: decisions.filter((d) => d.action === 'rewrite').map((d) => d.id),
    newPacks,
    totals,
  };
}

/**
 * Parses `--max-unused`: "5%" (of the store's pack bytes after gc), a size ("200M", "1.5GiB",
 * "0"), or "unlimited". Returns undefined for anything else.
 */
export function parseMaxUnused(text: string): MaxUnused | undefined {
  const t = text.trim();
  if (t === 'unlimited') return { unlimited: true };
  const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(t);
  if (m) {
    const percent = Number(m[1]);
    return percent < 100 ? { percent } : undefined;
  }
  const bytes = parseSize(t);
  return bytes === undefined ? undefined : { bytes };
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/** A byte size: a number with an optional binary unit (K, M, G, T; KiB, MB... all powers of 1024). */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) return undefined;
  return Math.floor(Number(m[1]) * unit);
}

function pct(f: number): string {
  return `${(f * 100).toFixed(1)}%`;
}
