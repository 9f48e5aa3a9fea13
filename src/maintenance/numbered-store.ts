/**
 * What the maintenance of a store of format 3 (gc, compact, check, repair) needs of the open store:
 * its files, its number index (NumberedChunks, the one owner of index, digest columns and
 * allocator), new pack ids, and what in-flight work references. A narrow view, so that these
 * modules see only what they use of the Store.
 */
import type { GcFence } from './fence.js';
import type { NumberSet } from './live-v3.js';
import type { StoreDb } from '../store/db.js';
import type { NumberedChunks } from '../store/numbered-chunks.js';
import type { PackReader } from '../store/pack-reader.js';
import type { Store } from '../store/store.js';

export interface NumberedStore {
  readonly dir: string;
  readonly db: StoreDb;
  readonly packs: PackReader;
  readonly numbered: NumberedChunks;
  /** Pack size at which gc and compact close a new pack (the pack writer's target). */
  readonly packTargetBytes: number;
  /** A pack id above every pack's, for a copy. */
  reservePackId(): number;
  /** Makes the page workers close the descriptors they cache for these packs (their files are gone). */
  forgetPacks(ids: readonly number[]): void;
  /**
   * Adds the numbers in-flight work references (open sessions' chunks and parents); returns how many
   * sessions, and the snapshot ids they use as delta bases.
   */
  inFlightNumbers(into: NumberSet): Promise<{ sessions: number; bases: string[] }>;
  /** Whether anything is in flight (sessions open, chunks not yet in a sealed pack). */
  busy(): boolean;
  /** Packs this open found damaged and moved to quarantine/ (check reports them). */
  readonly quarantinedOnOpen: readonly string[];
  /** The gc fence, when one is up: lookups since gc began, and lookups held while chunks go. */
  readonly fence?: Pick<GcFence, 'rescued' | 'commit'>;
}

/** The view of an open format-3 store (`fence`: the gc fence the caller raised, if any). */
export function numberedView(store: Store, fence?: GcFence): NumberedStore {
  const numbered = store.numbered;
  if (!numbered) throw new Error(`${store.dir} is not a format-3 store`);
  return {
    dir: store.dir,
    db: store.db,
    packs: store.packs,
    numbered,
    packTargetBytes: store.writer.targetBytes,
    reservePackId: () => store.writer.reservePackId(),
    forgetPacks: (ids) => store.pool.forgetPacks(store.packs.packsDir, ids),
    inFlightNumbers: async (into) => {
      const bases: string[] = [];
      let sessions = 0;
      const digests: Uint8Array[] = [];
      for (const s of store.sessions) {
        sessions++;
        for (const d of s.liveDigests()) digests.push(Uint8Array.from(d));
        if (s.parent?.numbers) into.addPages(s.parent.numbers);
        if (s.parent) bases.push(s.parent.id);
      }
      // Chunks only in the writer's open packs have no number yet: gc never touches their packs.
      for (const f of await numbered.find(digests)) if (f) into.add(f.number);
      return { sessions, bases };
    },
    busy: () => store.sessions.size > 0 || store.writer.unindexedChunks > 0,
    quarantinedOnOpen: store.recovery.packsQuarantined,
    fence,
  };
}
