/** What check reports, shared by its phases (src/maintenance/check-*.ts) and check.ts. */

export type ProblemKind =
  | 'pack-missing'
  | 'pack-unreadable'
  | 'pack-size'
  | 'pack-unindexed'
  | 'index-entry'
  | 'chunk-missing'
  | 'chunk-corrupt'
  /** Store format 3: a chunk number held by two packs. */
  | 'number-conflict'
  | 'payload-checksum'
  | 'manifest-missing'
  | 'manifest-corrupt'
  | 'manifest-mismatch'
  | 'catalog'
  | 'counters';

export interface CheckProblem {
  kind: ProblemKind;
  message: string;
  pack?: string;
  chunk?: string;
  snapshot?: string;
  /** Committed snapshots that cannot be restored because of this problem. */
  affects: string[];
  /** The command to run next. */
  next: string;
}

/** How many of each thing a check looked at (the report's `checked`). */
export interface CheckedCounts {
  snapshots: number;
  keptBases: number;
  packs: number;
  chunks: number;
  packsRead: number;
  chunksRead: number;
  bytesRead: number;
}

export const NEXT_REPAIR = 'vnstore check --repair-index';

/**
 * What heals snapshots whose data is lost: forgetting them, or a put of the same image. The put must
 * be parentless: a put against a parent takes the pages equal to the parent's as stored, without
 * looking them up, so it would not store a lost chunk again.
 */
export const NEXT_FORGET = (ids: string[]) =>
  ids.length > 0
    ? `vnstore forget ${ids.join(' ')} (or put the same image again with 'vnstore put --parent none': that stores lost chunks anew and heals them)`
    : NEXT_REPAIR;
