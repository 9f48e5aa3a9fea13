/**
 * Reclaiming superseded pre-copy chunks after a commit. A pre-copy session stores a page's chunk as
 * soon as it arrives (the rounds are never slowed down); a later round that sends the page again with
 * other content leaves the first chunk dead in the session's packs. Once the commit record is durable,
 * the store asks its sweeper (gc, injected at open: the store layer imports no maintenance) to
 * reclaim the packs sealed since the session began, in the background: the commit has already
 * resolved. gc's own steps keep it crash-safe, and its live set (committed and prepared manifests,
 * open sessions, the lookup fence) keeps every chunk another session deduplicated against.
 *
 * One reclaim runs at a time per store; requests made meanwhile are merged into the next run. close()
 * waits for the run in progress and any merged request, so a one-shot process does not exit mid-way.
 */
import type { Store } from './store.js';
import { trace } from '../util/trace.js';

/** What a prepared session left behind, for the store to weigh after its commit. */
export interface ReclaimHint {
  /** Packs sealed since the session began (other sessions' chunks may share them). */
  packs: readonly number[];
  /** Bytes of the chunks the session stored first, and the part of them later rounds replaced. */
  newBytes: number;
  supersededBytes: number;
}

/** What the store asks of maintenance to remove garbage it made itself (gcSweeper in src/maintenance). */
export interface PackSweeper {
  /** True when it works on store format 3 (a format-3 store ignores a sweeper that does not). */
  readonly numbered?: boolean;
  /** Drops those of `packs` that hold no live chunk (a failed or killed session's packs). */
  dropDead(store: Store, packs: readonly number[]): Promise<unknown>;
  /** gc limited to `packs`: dead chunks in them are dropped or rewritten away. */
  reclaim(store: Store, packs: readonly number[]): Promise<unknown>;
}

export interface ReclaimPolicy {
  /** Reclaim when at least this share of a session's new bytes was superseded... */
  minShare: number;
  /** ...and at least this many bytes. */
  minBytes: number;
}

/**
 * 5%: gc's default target for unused bytes (DEFAULT_MAX_UNUSED); below it a gc of these packs plans
 * nothing but wholly dead packs. 4 MiB: a reclaim marks the whole store (every manifest, two scans of
 * the chunk index) whatever it frees; less than an eighth of a default pack is left for 'vnstore gc'.
 */
export const DEFAULT_RECLAIM_POLICY: ReclaimPolicy = { minShare: 0.05, minBytes: 4 * 1024 * 1024 };

/** Whether a commit's superseded bytes are worth a reclaim (pure: tests call it directly). */
export function worthReclaiming(hint: ReclaimHint, policy: ReclaimPolicy = DEFAULT_RECLAIM_POLICY): boolean {
  return hint.packs.length > 0 && hint.supersededBytes >= policy.minBytes && hint.supersededBytes >= hint.newBytes * policy.minShare;
}

/** VNSTORE_RECLAIM=0 (or off, false, no) turns reclaiming at commit off; anything else leaves it on. */
export function reclaimFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return !/^(0|off|false|no)$/i.test(env.VNSTORE_RECLAIM ?? '');
}

export class Reclaimer {
  private running: Promise<void> | undefined;
  private readonly pending = new Set<number>();
  private closed = false;
  /** Runs started, and the last run's failure (best effort: what a failed run leaves is gc's). */
  runs = 0;
  lastError: unknown;

  constructor(
    private readonly store: Store,
    private readonly sweeper: PackSweeper | undefined,
    private readonly enabled: boolean,
    private readonly policy: ReclaimPolicy = DEFAULT_RECLAIM_POLICY,
  ) {}

  /** After a durable commit: starts (or queues) a reclaim of the hinted packs when worth it. */
  afterCommit(hint: ReclaimHint | undefined): void {
    if (!hint || !this.sweeper || !this.enabled || this.closed || !worthReclaiming(hint, this.policy)) return;
    for (const id of hint.packs) this.pending.add(id);
    this.running ??= this.drain();
  }

  /** Resolves once no reclaim runs or waits. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Takes no more requests and waits for what was asked (close of the store). */
  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
  }

  private async drain(): Promise<void> {
    // A turn later: the commit's caller gets its record before the reclaim takes the event loop.
    await new Promise<void>((resolve) => setImmediate(resolve));
    try {
      while (this.pending.size > 0) {
        const packs = [...this.pending].sort((a, b) => a - b);
        this.pending.clear();
        this.runs++;
        try {
          await this.sweeper!.reclaim(this.store, packs);
          trace(`reclaim: ${packs.length} pack(s) considered`);
        } catch (err) {
          this.lastError = err; // left as garbage: 'vnstore gc' removes it
        }
      }
    } finally {
      this.running = undefined;
    }
  }
}
