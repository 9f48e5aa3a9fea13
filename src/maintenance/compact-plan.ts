/**
 * compact plan: a pure function from per-pack facts to the packs compact rewrites into zstd
 * containers, grouped into steps (one new pack each). No I/O; the clock is passed in.
 *
 * A pack is compacted when it is cold (sealed at least `minAgeMs` before `now`: pre-copy rounds and
 * the next snapshots rewrite recent pages, and compressing them again would be wasted work) and at
 * least a quarter of its live chunks are LZ4 pages (a pack compact wrote holds containers, plus the
 * few pages zstd could not shrink: it is not picked again; pages LZ4 could not shrink either, stored
 * raw, are random-like and gain nothing). Packs with no live chunk are gc's.
 */
export interface CompactPackFacts {
  id: number;
  bytes: number;
  /** When the pack was sealed (ms since the epoch). */
  sealedAtMs: number;
  liveChunks: number;
  liveBytes: number;
  /** Live chunks stored as LZ4 pages, and their bytes. */
  lz4LiveChunks: number;
  lz4LiveBytes: number;
}

export interface CompactPlanOptions {
  now: number;
  minAgeMs: number;
  /** Most live bytes one run reads and recompresses (absent: no bound). */
  maxRepackBytes?: number;
  /** Live bytes gathered into one step (one new pack). */
  targetBytes: number;
}

/** Default --min-age: packs sealed in the last 15 minutes stay as they are. */
export const DEFAULT_MIN_AGE_MS = 15 * 60 * 1000;
/**
 * Default --level: the zstd level compact writes containers at. Chosen by measurement on real guest
 * memory (docs/DESIGN.md, "zstd for cold chunks"); bound (d) stays defined at zstd-3 (ZSTD_DEFAULT_LEVEL).
 */
export const DEFAULT_COMPACT_LEVEL = 8;
/** LZ4 share of a pack's live chunks from which compacting it is worth it. */
export const MIN_LZ4_SHARE = 0.25;

export interface CompactDecision {
  id: number;
  action: 'compact' | 'skip';
  reason: string;
}

export interface CompactPlan {
  packs: CompactDecision[];
  /** Old packs per step, in pack id order (ingest order: roughly the order restores read them). */
  steps: number[][];
  totals: { packs: number; packsChosen: number; liveChunks: number; liveBytes: number; packBytes: number };
}

export function planCompact(packs: readonly CompactPackFacts[], o: CompactPlanOptions): CompactPlan {
  if (!(o.minAgeMs >= 0)) throw new RangeError('minimum age must be 0 or more');
  if (o.maxRepackBytes !== undefined && !(o.maxRepackBytes >= 0)) throw new RangeError('--max-repack must be 0 or more');
  if (!(o.targetBytes > 0)) throw new RangeError('target pack size must be positive');
  const sorted = [...packs].sort((a, b) => a.id - b.id);
  const decisions: CompactDecision[] = [];
  const steps: number[][] = [];
  const totals = { packs: packs.length, packsChosen: 0, liveChunks: 0, liveBytes: 0, packBytes: 0 };
  let step: number[] = [];
  let stepBytes = 0;
  for (const p of sorted) {
    const skip = (reason: string) => decisions.push({ id: p.id, action: 'skip', reason });
    if (p.liveChunks === 0) {
      skip('no live chunk (gc drops it)');
      continue;
    }
    if (p.lz4LiveChunks < MIN_LZ4_SHARE * p.liveChunks) {
      skip('already compact');
      continue;
    }
    if (o.now - p.sealedAtMs < o.minAgeMs) {
      skip('recent (younger than --min-age)');
      continue;
    }
    if (o.maxRepackBytes !== undefined && totals.liveBytes + p.liveBytes > o.maxRepackBytes) {
      skip('beyond --max-repack');
      continue;
    }
    decisions.push({ id: p.id, action: 'compact', reason: `${p.lz4LiveChunks} LZ4 page(s) live` });
    totals.packsChosen++;
    totals.liveChunks += p.liveChunks;
    totals.liveBytes += p.liveBytes;
    totals.packBytes += p.bytes;
    step.push(p.id);
    stepBytes += p.liveBytes;
    if (stepBytes >= o.targetBytes) {
      steps.push(step);
      step = [];
      stepBytes = 0;
    }
  }
  if (step.length > 0) steps.push(step);
  return { packs: decisions, steps, totals };
}
