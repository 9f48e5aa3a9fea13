/** check, phase 5 (--read-data): re-reads packs whole, checks payload checksums, verifies every chunk. */
import { packFileName } from '../format/pack.js';
import type { Store } from '../store/store.js';
import { VnstoreError } from '../util/errors.js';
import { NEXT_REPAIR, type CheckedCounts, type CheckProblem } from './check-problems.js';
import { readPackData } from './pack-data.js';

export interface DataOptions {
  readData?: boolean;
  /** Percentage of packs to read (implies readData); default 100. */
  readDataSubsetPct?: number;
  /** Random source for the subset (tests). */
  random?: () => number;
}

export interface DataResult {
  problems: CheckProblem[];
  /** Indexed digests found damaged (hex → the problem). */
  badDigests: Map<string, CheckProblem>;
  checked: Pick<CheckedCounts, 'packsRead' | 'chunksRead' | 'bytesRead'>;
}

/** Which of the intact packs `ids` to read: none, all, or a random subset (sorted). */
export function selectPacksToRead(ids: number[], options: DataOptions): number[] {
  if (!options.readData && options.readDataSubsetPct === undefined) return [];
  const pct = options.readDataSubsetPct ?? 100;
  if (!(pct > 0 && pct <= 100)) throw new VnstoreError('E_USAGE', `--read-data-subset must be a percentage in (0, 100], got ${pct}`);
  if (pct >= 100) return ids;
  const n = Math.max(1, Math.ceil((ids.length * pct) / 100));
  const random = options.random ?? Math.random;
  const pool = [...ids];
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, Math.min(n, pool.length)).sort((a, b) => a - b);
}

/** Reads the packs of `readSet`; `indexedAt` gives, per pack, the indexed digest at each offset. */
export async function checkData(
  store: Store,
  readSet: readonly number[],
  indexedAt: Map<number, Map<number, Buffer>>,
): Promise<DataResult> {
  const dataProblems: CheckProblem[] = [];
  const badDigests = new Map<string, CheckProblem>();
  const checked = { packsRead: 0, chunksRead: 0, bytesRead: 0 };
  for (const id of readSet) {
    const name = packFileName(id);
    const res = await readPackData(store, id, indexedAt.get(id)!);
    checked.packsRead++;
    checked.chunksRead += res.chunks;
    checked.bytesRead += res.bytes;
    if (res.error) {
      const pr: CheckProblem = { kind: 'pack-unreadable', message: res.error, pack: name, affects: [], next: NEXT_REPAIR };
      dataProblems.push(pr);
      for (const d of indexedAt.get(id)!.values()) badDigests.set(d.toString('hex'), pr);
      continue;
    }
    for (const b of res.bad) {
      const hex = b.digest?.toString('hex');
      const pr: CheckProblem = {
        kind: 'chunk-corrupt',
        message: `pack ${name}: chunk ${b.index} at offset ${b.offset}${hex ? ` (${hex})` : ' (not indexed)'} ${b.why}`,
        pack: name,
        chunk: hex,
        affects: [],
        next: NEXT_REPAIR,
      };
      dataProblems.push(pr);
      if (hex) badDigests.set(hex, pr);
    }
    if (res.bad.length === 0 && !res.payloadCrcOk) {
      dataProblems.push({
        kind: 'payload-checksum',
        message: `pack ${name}: payload checksum mismatch although every chunk verifies`,
        pack: name,
        affects: [],
        next: NEXT_REPAIR,
      });
    }
  }
  return { problems: dataProblems, badDigests, checked };
}
