/**
 * The gc fence: how gc and ingest in the same process stay out of each other's way without a long
 * lock. While gc runs, the store passes every exact index lookup through the fence
 * (store.lookupExact), which
 *   - journals each digest a lookup found: a session is about to reference it, so gc treats it as
 *     live (rescues it) even if the mark said dead;
 *   - during the short window in which gc's index batch that removes chunks is being written, makes a
 *     lookup of one of those chunks wait for the batch and then answer "absent", so the session
 *     stores a fresh copy (its pack is sealed after gc's batch, never before).
 * Chunks a session references without a lookup (same digest as its parent at the same page index,
 * unwritten pages inherited from the parent) are live through the session's parent page table, which
 * gc collects; new chunks live in packs gc does not touch (sealed after gc listed the packs). A page
 * a worker found stored before a gc began and that the session applies after it ended is confirmed
 * through the exact index all the same (Session.apply compares the store's gcFencesRaised).
 */
import type { ChunkLocation } from '../index/chunk-table.js';
import type { Store } from '../store/store.js';
import { DigestSet } from './digest-set.js';
import { TOC_DIGEST_BYTES } from '../format/pack-v3.js';
import { DIGEST_BYTES } from '../format/pages.js';

export class GcFence {
  /** Digests found by lookups since the fence went up. */
  readonly journal: DigestSet;
  /** Every removing batch of this gc run, in order; `seq` counts them. */
  private readonly commits: { seq: number; doomed: DigestSet; done: Promise<void> }[] = [];
  private seq = 0;
  /** Lookups held back until a removing batch settled (then answered "absent"). */
  held = 0;

  constructor(private readonly store: Store) {
    // Format 3 compares digests by the 24-byte prefix its TOCs keep (a doomed chunk is known by that).
    this.journal = new DigestSet(4096, store.isNumbered ? TOC_DIGEST_BYTES : DIGEST_BYTES);
  }

  /** Taken by store.lookupExact before it reads the index (see afterLookup). */
  get lookupStart(): number {
    return this.seq;
  }

  /**
   * Called by store.lookupExact with its results; may replace some of them (see above). A lookup
   * that began before a removing batch may still have read the index as it was before that batch,
   * even if the batch has finished since: every batch begun at or after `startSeq` is checked, and a
   * digest it removes is looked up again once it settled.
   */
  async afterLookup(digests: Uint8Array[], found: (ChunkLocation | undefined)[], startSeq = 0): Promise<void> {
    const relevant = this.commits.filter((c) => c.seq >= startSeq);
    let waitFor: number[] | undefined;
    const waits = new Set<Promise<void>>();
    for (let i = 0; i < digests.length; i++) {
      if (!found[i]) continue;
      const c = relevant.find((r) => r.doomed.has(digests[i]));
      if (c) {
        (waitFor ??= []).push(i);
        waits.add(c.done);
      } else this.journal.add(digests[i]);
    }
    if (!waitFor) return;
    this.held += waitFor.length;
    await Promise.all([...waits].map((w) => w.catch(() => undefined)));
    const again = await this.store.lookupExact(waitFor.map((i) => digests[i]));
    waitFor.forEach((i, k) => (found[i] = again[k]));
  }

  /** True when a lookup found this digest since the fence went up. */
  rescued(digest: Uint8Array): boolean {
    return this.journal.has(digest);
  }

  /**
   * Runs `write` (the index batch removing `doomed`, then the in-memory table update) with lookups of
   * those digests held back until it settles. Call synchronously after the last rescue check.
   */
  async commit<T>(doomed: DigestSet, write: () => Promise<T>): Promise<T> {
    let release!: () => void;
    const done = new Promise<void>((resolve) => (release = resolve));
    this.commits.push({ seq: ++this.seq, doomed, done });
    try {
      return await write();
    } finally {
      release();
    }
  }
}

/** One maintenance operation (gc, forget, repair, counter fold) at a time per store. */
const locks = new WeakMap<Store, Promise<unknown>>();

export async function withMaintenanceLock<T>(store: Store, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(store) ?? Promise.resolve();
  const run = prev.catch(() => undefined).then(fn);
  locks.set(
    store,
    run.catch(() => undefined),
  );
  return run;
}
