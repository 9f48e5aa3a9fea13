/**
 * A snapshot session: the API agents and the coordinator drive. Pages arrive by page index, in any
 * order, any number of times (pre-copy rounds); the last write of a page wins. Hashing and
 * compression run in the page workers; results are applied strictly in submission order, so "last"
 * means last submitted. Nothing is visible before commit; commit is durable.
 */
import path from 'node:path';
import { encodeManifest, planManifest, type ManifestHeader } from '../format/manifest.js';
import { encodeManifestV2, fullPlanBytesAtLeast, planManifestV2, type ManifestV2Plan, type NumberedPages } from '../format/manifest-v2.js';
import { NUMBERED_TOC_ENTRY_BYTES, TOC_DIGEST_BYTES, tocDigestsEqual } from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable, digestsEqual } from '../format/pages.js';
import { TOC_ENTRY_BYTES } from '../format/pack.js';
import type { PayloadLoan } from './pack-writer.js';
import { getCodec } from '../chunk/codec.js';
import { PageStatus, type HashResult } from '../chunk/page-jobs.js';
import { hashPage, hex, imageDigest } from '../chunk/hash.js';
import { chunkLossGeneration } from '../index/chunk-table.js';
import { writeFileDurable } from '../util/durable.js';
import { CorruptError, fromSystemError, VnstoreError } from '../util/errors.js';
import type { SnapshotRecord } from './db.js';
import { newSnapshotId, validateName } from './ids.js';
import { BLOCK_PAGES } from './job-sizes.js';
import type { Store } from './store.js';
import { MAX_BASE_DEPTH } from './manifest-loader.js';
import { SupersededTracker } from './superseded.js';
import { wholeDigests } from './restore.js';
import type { ReclaimHint } from './reclaim.js';
import type { LoadedNumberedManifest } from './manifest-loader-v3.js';
import { trace } from '../util/trace.js';
import { copyBytes, zeroFill } from '../util/shared-bytes.js';

/** Largest image a session accepts without a declared memory size (its page table needs 33 B a page). */
export const MAX_IMAGE_BYTES = 256 * 2 ** 30;

/**
 * Pages written (256 MiB) after which a session starts page workers that wait on demand: on the
 * project machine a consecutive put of 896 MiB took 1.27-1.53 s against 1.76-1.82 s inline, one
 * of 384 MiB 0.95 s against 0.90-0.94 s, and starting after 128 MiB made a 256 MiB put slower.
 */
const WORKERS_AFTER_PAGES = 64 * 1024;

export interface SessionOptions {
  vm: string;
  /** Group snapshot (environment epoch) this VM snapshot belongs to. */
  group?: string;
  epoch?: number;
  /** 'auto' (default): the VM's latest snapshot; 'none'; or a snapshot id/prefix. */
  parent?: 'auto' | 'none' | string;
  /** Guest memory size in bytes, when known up front; writes beyond it are rejected. */
  memoryBytes?: number;
}

export interface CommitOptions {
  /** Exact image length; default: memoryBytes, else the end of the furthest write. */
  byteLength?: number;
  /** Pages never written: take the parent's ('parent', default with a parent), zero, or fail ('error', default without). */
  unwritten?: 'parent' | 'zero' | 'error';
}

export interface SessionStats {
  pagesWritten: number;
  newChunks: number;
  newChunkBytes: number;
  /** New chunks a later write of the same page replaced (an estimate: src/store/superseded.ts). */
  supersededChunks: number;
}

export type PreparedState = 'prepared' | 'committed' | 'aborted';

export interface PreparedSnapshot {
  readonly store: Store;
  readonly record: SnapshotRecord;
  readonly failureEpoch: number;
  state: PreparedState;
  /** What the session left superseded, for the store to reclaim after the commit (src/store/reclaim.ts). */
  readonly reclaim?: ReclaimHint;
  /**
   * Format 3: the snapshot as its manifest names it, which the store's manifest cache keeps once the
   * snapshot is committed: the VM's next session begins on it without reading the manifest back and
   * looking up each page's digest again (most of an empty snapshot's BEGIN; issue 12).
   */
  readonly loaded?: LoadedNumberedManifest & { pages: PageTable };
}

export class Session {
  readonly id = newSnapshotId();
  readonly stats: SessionStats = { pagesWritten: 0, newChunks: 0, newChunkBytes: 0, supersededChunks: 0 };
  private readonly superseded = new SupersededTracker();
  private readonly pages: PageTable;
  private furthestByte = 0;
  /**
   * Format 3: the number of the chunk each page stored last, where this session stored it (else -1),
   * a hint the commit checks before it looks the page's digest up (numberPages); grown as needed.
   */
  private numberHints = new Float64Array(0);
  /** The last short page written and not since replaced by a whole one (its index and end byte). */
  private shortPage: { index: number; end: number } | undefined;
  private state: 'open' | 'committing' | 'done' = 'open';
  private applying: Promise<void> = Promise.resolve();
  /** Digests writeKnown found through the exact index whose pages are not set yet (live for gc). */
  private readonly decidedUnapplied = new Set<Uint8Array[]>();
  /** Each queued block's apply, oldest first: backpressure waits for one slot, not for the whole queue. */
  private readonly queued: Promise<void>[] = [];
  /**
   * Single pages from writePage, gathered into one block (sent before any other write, and at
   * commit); `slotOf` maps a page index to its slot, so a page written again replaces its copy.
   */
  private gathered: { indices: Uint32Array; data: Uint8Array; count: number; slotOf: Map<number, number> } | undefined;
  private inFlight = 0;
  private error: Error | undefined;
  private readonly failureEpoch: number;
  /** The writer's sealedCount when the session began: the packs a failure may leave behind follow it. */
  private readonly sealMark: number;
  private readonly maxInFlight: number;
  /**
   * Runs [start, end) of pages fillUnwritten took from the parent at the same index (pairs, in page
   * order): the manifest gives them the parent's numbers without comparing digests again.
   */
  private fromParent: number[] = [];
  /**
   * chunkLossGeneration() when fillUnwritten found every inherited chunk in the chunk table (undefined
   * when one was not): the first half of the committed snapshot's presentAt.
   */
  private inheritedPresentAt: number | undefined;

  private constructor(
    private readonly store: Store,
    readonly options: SessionOptions,
    /** On a format-3 store also the parent's numbers (a page equal to the parent's takes its number). */
    readonly parent:
      | {
          id: string;
          pages: PageTable;
          depth: number;
          numbers?: NumberedPages;
          wholeDigests?: boolean;
          /** chunkLossGeneration() at a moment every chunk of the parent was in the chunk table. */
          presentAt?: number;
          /** Format 3: the parent's manifest header (its image digest). */
          header?: ManifestHeader;
        }
      | undefined,
  ) {
    const pageCount = options.memoryBytes !== undefined ? Math.ceil(options.memoryBytes / PAGE_SIZE) : 0;
    // Without a declared size, expect the parent's: growing the table as pages arrive copies it.
    this.pages = new PageTable(pageCount, parent?.pages.pageCount ?? 0);
    this.failureEpoch = store.writer.failureEpoch;
    this.sealMark = store.writer.sealedCount;
    this.maxInFlight = Math.max(2, store.pool.plannedSize * 2 + 1);
  }

  static async begin(store: Store, options: SessionOptions): Promise<Session> {
    const bad = validateName('VM', options.vm) ?? (options.group !== undefined ? validateName('group', options.group) : undefined);
    if (bad) throw new VnstoreError('E_USAGE', bad);
    if (options.memoryBytes !== undefined && (!Number.isSafeInteger(options.memoryBytes) || options.memoryBytes < 0)) {
      throw new VnstoreError('E_USAGE', `memory size must be a non-negative integer number of bytes`);
    }
    if ((options.memoryBytes ?? 0) > MAX_IMAGE_BYTES)
      throw new VnstoreError('E_USAGE', `memory size ${options.memoryBytes} is above the supported maximum (${MAX_IMAGE_BYTES} bytes)`);
    const parentSpec = options.parent ?? 'auto';
    let parent: Session['parent'];
    if (parentSpec !== 'none') {
      const rec = parentSpec === 'auto' ? await store.latestSnapshot(options.vm) : await store.resolveSnapshot(parentSpec);
      if (rec && store.isNumbered) parent = { id: rec.id, ...(await store.loadNumberedPages(rec.id)), depth: rec.baseDepth };
      else if (rec) parent = { id: rec.id, pages: await store.loadPages(rec.id), depth: rec.baseDepth };
    }
    // Without a parent every page is hashed and most are compressed: worth the workers' start-up
    // (wantWorkers starts none where thread-pool jobs serve: they need no start-up).
    if (!parent) store.pool.wantWorkers();
    trace('session begun (parent loaded)');
    return new Session(store, options, parent);
  }

  get isOpen(): boolean {
    return this.state === 'open';
  }

  /**
   * Writes pages starting at page index `firstPage`. `data` is a whole number of pages, except that
   * the image's final page may be short. Resolves once the data is queued (backpressure); the caller
   * may reuse `data` afterwards unless `transfer` is set (then the store takes ownership).
   */
  async writePages(firstPage: number, data: Uint8Array, transfer = false): Promise<void> {
    this.assertOpen();
    this.furthestByte = Math.max(this.furthestByte, this.checkRange(firstPage, data.length));
    this.noteWrite(firstPage, data.length);
    await this.sendGathered();
    const pageCount = Math.ceil(data.length / PAGE_SIZE);
    for (let p = 0; p < pageCount; p += BLOCK_PAGES) {
      const n = Math.min(BLOCK_PAGES, pageCount - p);
      const slice = data.subarray(p * PAGE_SIZE, Math.min(data.length, (p + n) * PAGE_SIZE));
      // Workers take the block's buffer by transfer: it must own a whole ArrayBuffer of full pages.
      if (
        transfer &&
        pageCount <= BLOCK_PAGES &&
        slice.length === n * PAGE_SIZE &&
        slice.byteOffset === 0 &&
        slice.buffer.byteLength === slice.length &&
        slice.buffer instanceof ArrayBuffer
      ) {
        await this.submit(firstPage + p, n, slice);
      } else await this.submit(firstPage + p, n, this.lendCopy(slice, n));
    }
  }

  /**
   * Writes pages read from a file range (a raw image on disk): the page workers read it themselves,
   * so the main thread does no copying. Same semantics as writePages.
   */
  async writeFileRange(firstPage: number, file: string, offset: number, length: number): Promise<void> {
    this.assertOpen();
    this.furthestByte = Math.max(this.furthestByte, this.checkRange(firstPage, length));
    this.noteWrite(firstPage, length);
    await this.sendGathered();
    for (let p = 0; p * PAGE_SIZE < length; p += BLOCK_PAGES) {
      const bytes = Math.min(BLOCK_PAGES * PAGE_SIZE, length - p * PAGE_SIZE);
      await this.submit(firstPage + p, Math.ceil(bytes / PAGE_SIZE), new Uint8Array(0), {
        path: file,
        offset: offset + p * PAGE_SIZE,
        length: bytes,
      });
    }
  }

  /**
   * Writes whole pages at arbitrary page indices in one call, as a migration round sends its dirty
   * pages: page k of `data` (k * PAGE_SIZE onwards) goes to page index `pageIndices[k]`. Indices may
   * repeat, within a call or across calls; the later write wins, as for separate writes. The
   * cheapest way to send a round's pages: blocks of them go out at once, with no cost per call.
   */
  async writeScattered(pageIndices: ArrayLike<number>, data: Uint8Array): Promise<void> {
    this.assertOpen();
    const count = pageIndices.length;
    if (data.length !== count * PAGE_SIZE) {
      throw new VnstoreError(
        'E_USAGE',
        `writeScattered needs ${count} whole page(s) (${count * PAGE_SIZE} bytes) for ${count} page index(es), got ${data.length} bytes`,
      );
    }
    // Every index is checked before anything is recorded: a refused call leaves no trace.
    let end = 0;
    for (let k = 0; k < count; k++) end = Math.max(end, this.checkRange(pageIndices[k], PAGE_SIZE));
    this.furthestByte = Math.max(this.furthestByte, end);
    if (this.shortPage) for (let k = 0; k < count; k++) this.noteWrite(pageIndices[k], PAGE_SIZE);
    await this.sendGathered();
    for (let p = 0; p < count; p += BLOCK_PAGES) {
      const n = Math.min(BLOCK_PAGES, count - p);
      const indices = new Uint32Array(n);
      for (let k = 0; k < n; k++) indices[k] = pageIndices[p + k];
      // A copy: the job may run after the caller reuses its buffer (as `data` is copied by lendCopy).
      await this.submit(indices, n, this.lendCopy(data.subarray(p * PAGE_SIZE, (p + n) * PAGE_SIZE), n));
    }
  }

  /**
   * writeScattered of at most BLOCK_PAGES pages whose digests a client claims (a server's received
   * pages): the block's page job hashes them (on the pool's threads, not the caller's) and stores
   * nothing of the block if any page's bytes do not hash to its claimed digest (a zero page's claim
   * is the zero page's digest). Settles once queued, as writeScattered does; `checked` settles once
   * the block was checked and applied: undefined, or the position of the first page refused, and
   * then the write left no trace in the session. It rejects only when the session failed.
   *
   * `lent`: the caller lends `data` instead of letting it be copied, and this calls `lent` once the
   * store is done with it (exactly once, also when this throws). Lent pages in shared memory at an
   * 8-byte-aligned offset are hashed and compressed where they are, with no copy: a server's PAGES
   * frames, read into such buffers, skip a copy of every received byte on its main thread.
   */
  async writeClaimed(
    pageIndices: Uint32Array,
    data: Uint8Array,
    claimedDigests: Uint8Array,
    lent?: () => void,
  ): Promise<{ checked: Promise<number | undefined> }> {
    // Read in place only where a job can: shared memory (lent without a transfer), word-aligned.
    const loan = lent && data.buffer instanceof SharedArrayBuffer && data.byteOffset % 8 === 0 ? { release: lent } : undefined;
    try {
      return await this.claimed(pageIndices, data, claimedDigests, loan);
    } finally {
      // Not lent to a job (copied, refused, or the session failed first): free now.
      (loan ? loan.release : lent)?.();
    }
  }

  private async claimed(
    pageIndices: Uint32Array,
    data: Uint8Array,
    claimedDigests: Uint8Array,
    loan: Loan | undefined,
  ): Promise<{ checked: Promise<number | undefined> }> {
    this.assertOpen();
    const n = pageIndices.length;
    if (n > BLOCK_PAGES) throw new VnstoreError('E_USAGE', `writeClaimed takes at most ${BLOCK_PAGES} pages at once, got ${n}`);
    if (claimedDigests.length !== n * DIGEST_BYTES)
      throw new VnstoreError(
        'E_USAGE',
        `writeClaimed needs ${n} digest(s) (${n * DIGEST_BYTES} bytes), got ${claimedDigests.length} bytes`,
      );
    if (data.length !== n * PAGE_SIZE)
      throw new VnstoreError('E_USAGE', `writeClaimed needs ${n} whole page(s) (${n * PAGE_SIZE} bytes), got ${data.length} bytes`);
    let end = 0;
    for (let k = 0; k < n; k++) end = Math.max(end, this.checkRange(pageIndices[k], PAGE_SIZE));
    // Recorded only once the block is taken (a refused one leaves no trace); a short page it replaces
    // is forgotten then only if no later write noted another (each note is a new object).
    const short = this.shortPage;
    const replacesShort = short !== undefined && pageIndices.includes(short.index);
    let settle!: { resolve: (refusedAt: number | undefined) => void; reject: (err: unknown) => void };
    const checked = new Promise<number | undefined>((resolve, reject) => (settle = { resolve, reject }));
    const claim: Claim = {
      digests: Uint8Array.from(claimedDigests), // the job may run after the caller reuses its buffer
      accepted: () => {
        this.furthestByte = Math.max(this.furthestByte, end);
        if (replacesShort && this.shortPage === short) this.shortPage = undefined;
      },
      settle,
    };
    await this.sendGathered();
    await this.submit(Uint32Array.from(pageIndices), n, loan ? data : this.lendCopy(data, n), undefined, claim, loan);
    return { checked };
  }

  /**
   * Writes pages by digest alone, for chunks the store already holds (an agent offered them, and only
   * the pages the store lacks cross the network): page `pageIndices[k]` gets digest k when the exact
   * index holds that chunk. Ordered with the other writes (the last write of a page wins). Resolves
   * to 1 per page written and 0 per page whose chunk the store lacks (left as it was).
   */
  async writeKnown(pageIndices: Uint32Array, digests: Uint8Array): Promise<Uint8Array> {
    return (await this.queueKnown(pageIndices, digests)).written;
  }

  /**
   * writeKnown in two steps: settles once the write has its place in the session's order (after
   * backpressure), and `written` once it is decided which pages the store holds; the pages are set
   * later, in that order, and the caller's arrays must not change until the session commits or
   * aborts.
   *
   * The decision does not wait for the writes queued before it: which chunks the store holds does
   * not depend on this session's order, only the page table does. So a server answers an agent's
   * OFFER while the pages of its previous write are still being hashed and stored, and the agent's
   * next pages cross meanwhile; answered in order, each OFFER waited for those, and a consecutive
   * snapshot's write calls ran one at a time (bench/RESULTS.md, issue 12, session 18). An answer
   * may be stale by the time the earlier writes are applied (one of them may store a digest offered
   * here as absent); those pages then cross the wire once more and are deduplicated on arrival,
   * never lost. A digest decided present through the exact index stays live for gc until its page
   * is set (liveDigests), as the parent's chunks are for the whole session.
   */
  async queueKnown(pageIndices: Uint32Array, digests: Uint8Array): Promise<{ written: Promise<Uint8Array> }> {
    this.assertOpen();
    const n = pageIndices.length;
    if (digests.length !== n * DIGEST_BYTES)
      throw new VnstoreError('E_USAGE', `writeKnown needs ${n} digest(s) (${n * DIGEST_BYTES} bytes), got ${digests.length} bytes`);
    let end = 0;
    for (let k = 0; k < n; k++) end = Math.max(end, this.checkRange(pageIndices[k], PAGE_SIZE));
    this.furthestByte = Math.max(this.furthestByte, end);
    await this.sendGathered();
    if (this.error) throw this.error;
    // Probes ahead (anyKnowable's, then decideKnown's): each digest's, unless a trusted parent
    // answers most of them without one.
    if (!this.parent || !this.parentTrusted) this.store.table.prefetch(digests, 0, DIGEST_BYTES, n);
    if (!this.anyKnowable(pageIndices, digests)) return { written: Promise.resolve(new Uint8Array(n)) };
    const decided = this.decideKnown(pageIndices, digests);
    decided.catch(() => undefined); // the caller's, and the apply's (which fails the session)
    try {
      await this.queueInOrder(() => this.applyKnown(pageIndices, digests, decided));
    } catch (err) {
      void decided.then(
        (d) => this.decidedUnapplied.delete(d.held),
        () => undefined,
      );
      throw err;
    }
    return { written: decided.then((d) => d.written) };
  }

  /** Whether applyKnown, run now, could find any of these digests (see its first loop). */
  private anyKnowable(pageIndices: Uint32Array, digests: Uint8Array): boolean {
    const parent = this.parent?.pages;
    for (let k = 0; k < pageIndices.length; k++) {
      const page = pageIndices[k];
      const at = k * DIGEST_BYTES;
      // The parent first: no probe (a consecutive snapshot's offers answer here, at their first page).
      if (
        parent !== undefined &&
        page < parent.pageCount &&
        parent.kinds[page] === PageKind.Digest &&
        this.sameAsParent(parent.digests, page * DIGEST_BYTES, digests, at)
      )
        return true;
      // Chunks in open or sealing packs are in the table too (PackWriter.locateUnindexed).
      if (this.store.table.hasFingerprint(digests, at)) return true;
    }
    return false;
  }

  /**
   * Which offered digests the store holds now (`written`: 1 per such page) without waiting for the
   * session's queued writes; `held`, those found through the exact index, stay live for gc until
   * applyKnown sets their pages.
   */
  private async decideKnown(pageIndices: Uint32Array, digests: Uint8Array): Promise<{ written: Uint8Array; held: Uint8Array[] }> {
    const n = pageIndices.length;
    const written = new Uint8Array(n);
    const held: Uint8Array[] = [];
    // Skipping the exact index where the page workers do too: a digest whose fingerprint the chunk
    // table lacks is absent (as for New; the table holds the open packs' chunks too); one it knows that
    // equals the parent's at its index is known (the parent keeps it live, as for SameAsParent).
    const parent = this.parent?.pages;
    // A page equal to a trusted parent's at its index is known without a probe. Most pages of a
    // consecutive snapshot are, and each probe is a likely cache miss in a large table.
    const trusted = this.parentTrusted;
    const ask: number[] = [];
    for (let k = 0; k < n; k++) {
      const page = pageIndices[k];
      const at = k * DIGEST_BYTES;
      const parentsDigest =
        parent !== undefined &&
        page < parent.pageCount &&
        parent.kinds[page] === PageKind.Digest &&
        this.sameAsParent(parent.digests, page * DIGEST_BYTES, digests, at);
      if (trusted && parentsDigest) written[k] = 1;
      else if (!this.store.table.hasFingerprint(digests, at))
        continue; // absent: unindexed chunks are in the table too
      else if (parentsDigest) written[k] = 1;
      else ask.push(k);
    }
    if (ask.length === 0) return { written, held };
    // Through the exact index: a gc running meanwhile sees the lookup (its fence); one that starts
    // before the page is set sees the digest among the session's (decidedUnapplied, liveDigests).
    const found = await this.store.lookupExact(ask.map((k) => digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES)));
    for (let j = 0; j < ask.length; j++) {
      if (!found[j]) continue;
      const k = ask[j];
      written[k] = 1;
      held.push(digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES));
    }
    if (held.length > 0) this.decidedUnapplied.add(held);
    return { written, held };
  }

  /**
   * writeKnown's work, in its turn: sets the pages decideKnown found present. A method, not a
   * closure made per call: each new closure was optimised anew (on-stack replacement of its loop,
   * ~24 ms of compiler thread each time, 46 times in one bench run; bench/RESULTS.md, issue 12,
   * session 14).
   */
  private async applyKnown(
    pageIndices: Uint32Array,
    digests: Uint8Array,
    decided: Promise<{ written: Uint8Array; held: Uint8Array[] }>,
  ): Promise<void> {
    const { written, held } = await decided;
    for (let k = 0; k < written.length; k++) {
      if (written[k] === 0) continue;
      const page = pageIndices[k];
      this.pages.ensure(page);
      this.pages.setDigest(page, digests, k * DIGEST_BYTES);
      this.stats.pagesWritten++;
    }
    this.decidedUnapplied.delete(held);
  }

  /** Writes all-zero pages without their bytes: `ranges` holds (first page, page count) pairs. */
  async writeZeroRanges(ranges: Uint32Array): Promise<void> {
    await (
      await this.queueZeroRanges(ranges)
    ).done;
  }

  /**
   * writeZeroRanges in two steps: settles once the write has its place in the session's order (after
   * backpressure), and `done` once it is applied; `ranges` must not change until then.
   */
  async queueZeroRanges(ranges: Uint32Array): Promise<{ done: Promise<void> }> {
    this.assertOpen();
    if (ranges.length % 2 !== 0) throw new VnstoreError('E_USAGE', 'zero ranges come in (first page, page count) pairs');
    let end = 0;
    for (let r = 0; r < ranges.length; r += 2)
      if (ranges[r + 1] > 0) end = Math.max(end, this.checkRange(ranges[r], ranges[r + 1] * PAGE_SIZE));
    this.furthestByte = Math.max(this.furthestByte, end);
    if (this.shortPage) for (let r = 0; r < ranges.length; r += 2) this.noteWrite(ranges[r], ranges[r + 1] * PAGE_SIZE);
    await this.sendGathered();
    return { done: (await this.queueInOrder(() => this.applyZeroRanges(ranges))).result };
  }

  /** writeZeroRanges's work, in its turn (a method: see applyKnown). */
  private applyZeroRanges(ranges: Uint32Array): Promise<void> {
    for (let r = 0; r < ranges.length; r += 2) {
      const first = ranges[r];
      const count = ranges[r + 1];
      if (count === 0) continue;
      this.pages.ensure(first + count - 1);
      this.pages.kinds.fill(PageKind.Zero, first, first + count);
      this.stats.pagesWritten += count;
    }
    return Promise.resolve();
  }

  /**
   * Runs `fn` after every write queued before it has been applied, and before any queued after it:
   * the page table changes in submission order. A failure fails the session, as a block's does.
   */
  private async inOrder<T>(fn: () => Promise<T>): Promise<T> {
    return (await this.queueInOrder(fn)).result;
  }

  /** inOrder in two steps: settles once `fn` has its place in the order, `result` with `fn`'s. */
  private async queueInOrder<T>(fn: () => Promise<T>): Promise<{ result: Promise<T> }> {
    while (this.inFlight >= this.maxInFlight) await this.queued[0];
    if (this.error) throw this.error;
    this.inFlight++;
    const run = this.applying.then(async () => {
      if (this.error) throw this.error;
      return fn();
    });
    this.applying = run
      .then(
        () => undefined,
        (err: unknown) => {
          this.error ??= fromSystemError(err, `session ${this.id}`);
        },
      )
      .finally(() => {
        this.inFlight--;
        this.queued.shift();
      });
    this.queued.push(this.applying);
    return { result: run };
  }

  /** Validates a write of `length` bytes at page `firstPage`; returns the byte just past it. */
  private checkRange(firstPage: number, length: number): number {
    if (!Number.isSafeInteger(firstPage) || firstPage < 0) throw new VnstoreError('E_USAGE', `bad page index ${firstPage}`);
    const pageCount = Math.ceil(length / PAGE_SIZE);
    const end = firstPage * PAGE_SIZE + length;
    if (length % PAGE_SIZE !== 0 && this.options.memoryBytes !== undefined && end !== this.options.memoryBytes) {
      throw shortPageError(firstPage + pageCount - 1, end, this.options.memoryBytes);
    }
    if (this.options.memoryBytes !== undefined && end > this.options.memoryBytes) {
      throw new VnstoreError(
        'E_SESSION',
        `write of pages ${firstPage}..${firstPage + pageCount - 1} exceeds the VM's memory size (${this.options.memoryBytes} bytes)`,
      );
    }
    if (end > MAX_IMAGE_BYTES)
      throw new VnstoreError('E_SESSION', `write at page ${firstPage} is beyond the largest supported image (${MAX_IMAGE_BYTES} bytes)`);
    return end;
  }

  /**
   * Records where a short page was written (only the image's last page may be short: prepare checks
   * it against the image length), or forgets it when a whole page replaces it.
   */
  private noteWrite(firstPage: number, length: number): void {
    if (length % PAGE_SIZE !== 0) {
      this.shortPage = { index: firstPage + Math.floor(length / PAGE_SIZE), end: firstPage * PAGE_SIZE + length };
      return;
    }
    const s = this.shortPage;
    if (s && s.index >= firstPage && s.index < firstPage + length / PAGE_SIZE) this.shortPage = undefined;
  }

  /**
   * Writes one page. Whole pages are gathered and sent a block at a time (or before any other write,
   * and at commit), so a page at a time costs about what writeScattered does (docs/API.md).
   */
  async writePage(pageIndex: number, page: Uint8Array): Promise<void> {
    if (page.length !== PAGE_SIZE) return this.writePages(pageIndex, page); // the image's short last page
    this.assertOpen();
    if (this.error) throw this.error;
    this.furthestByte = Math.max(this.furthestByte, this.checkRange(pageIndex, PAGE_SIZE));
    if (this.shortPage) this.noteWrite(pageIndex, PAGE_SIZE);
    const g = (this.gathered ??= {
      indices: new Uint32Array(BLOCK_PAGES),
      data: this.store.slabs.take(BLOCK_PAGES * PAGE_SIZE),
      count: 0,
      slotOf: new Map(),
    });
    // A page written again before its block is sent (a hot page re-sent by the next pre-copy round)
    // replaces its gathered copy: the superseded one is never hashed, compressed or stored.
    const again = g.slotOf.get(pageIndex);
    if (again !== undefined) {
      g.data.set(page, again * PAGE_SIZE);
      return;
    }
    g.slotOf.set(pageIndex, g.count);
    g.indices[g.count] = pageIndex;
    g.data.set(page, g.count * PAGE_SIZE);
    if (++g.count === BLOCK_PAGES) await this.sendGathered();
  }

  /** Submits the gathered single pages as one block (taken synchronously: later pages start a new one). */
  private async sendGathered(): Promise<void> {
    const g = this.gathered;
    if (!g) return;
    this.gathered = undefined;
    await this.submit(g.indices.slice(0, g.count), g.count, g.data.subarray(0, g.count * PAGE_SIZE));
  }

  /**
   * A copy of `src` (n pages, the last possibly short) in a lent slab, zero-padded to whole pages:
   * reused memory instead of a fresh buffer per block (docs/DESIGN.md, "No fresh memory per block").
   */
  private lendCopy(src: Uint8Array, n: number): Uint8Array {
    const out = this.store.slabs.take(n * PAGE_SIZE);
    copyBytes(out, src); // not out.set: the slab is shared memory, and received pages are unaligned
    zeroFill(out, src.length);
    return out;
  }

  /**
   * Queues one block: pages `target .. target+n-1`, or the page indices listed in `target` (one per
   * page of the block, as writeScattered sends them).
   */
  private async submit(
    target: number | Uint32Array,
    n: number,
    pages: Uint8Array,
    file?: { path: string; offset: number; length: number },
    claim?: Claim,
    loan?: Loan,
  ): Promise<void> {
    while (this.inFlight >= this.maxInFlight) await this.queued[0];
    if (this.error) throw this.error;
    // A pack failed (a full disk): this session cannot commit, so stop now, not after the whole image.
    if (this.store.writer.failureEpoch !== this.failureEpoch) throw this.writerFailure();
    const parent = this.parent?.pages;
    let parentDigests: Uint8Array | undefined;
    let parentHasDigest: Uint8Array | undefined;
    if (typeof target === 'number') {
      this.pages.ensure(target + n - 1);
      if (parent && target < parent.pageCount) {
        const m = Math.min(n, parent.pageCount - target);
        parentDigests = parent.digests.slice(target * DIGEST_BYTES, (target + m) * DIGEST_BYTES);
        parentHasDigest = new Uint8Array(n);
        for (let i = 0; i < m; i++) parentHasDigest[i] = parent.kinds[target + i] === PageKind.Digest ? 1 : 0;
      }
    } else {
      let last = 0;
      for (let i = 0; i < n; i++) last = Math.max(last, target[i]);
      this.pages.ensure(last);
      if (parent) {
        // The parent's digest for each listed page, in block order (what the worker compares with).
        parentDigests = new Uint8Array(n * DIGEST_BYTES);
        parentHasDigest = new Uint8Array(n);
        for (let i = 0; i < n; i++) {
          const page = target[i];
          if (page >= parent.pageCount || parent.kinds[page] !== PageKind.Digest) continue;
          parentHasDigest[i] = 1;
          parentDigests.set(parent.digests.subarray(page * DIGEST_BYTES, (page + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
        }
      }
    }
    // A long session pays back the workers' start-up even when its pages are cheap.
    if (this.stats.pagesWritten >= WORKERS_AFTER_PAGES) this.store.pool.wantWorkers();
    const payloadSlab = this.store.slabs.take(n * PAGE_SIZE);
    const gcsBefore = this.store.gcFencesRaised; // before the worker reads the chunk table
    const job = this.store.pool.hash({
      kind: 'hash',
      pages,
      file,
      pageCount: n,
      parentDigests,
      parentHasDigest,
      parentDigestBytes: this.parentDigestBytes,
      table: this.store.table.shared,
      packsDir: this.store.packs.packsDir,
      payloadSlab,
      claimedDigests: claim?.digests,
    });
    // The job reads lent pages until it settles: they are freed below, not by the lender.
    const release = loan?.release;
    if (loan) loan.release = undefined;
    this.inFlight++;
    this.stats.pagesWritten += n;
    this.applying = this.applying.then(async () => {
      let slab: Uint8Array | undefined;
      let pagesBack: Uint8Array | undefined;
      // The payload slab goes back to the pool once applied and every pack write from it is done.
      let holds = 1;
      const free = () => {
        if (--holds === 0) this.store.slabs.give(slab);
      };
      const payloadLoan: PayloadLoan = {
        hold: () => {
          holds++;
          return free; // called once per hold (PackFile.lendRun)
        },
      };
      try {
        const result = await job;
        slab = result.slab;
        pagesBack = result.pages;
        release?.(); // the job is done with them (apply reads only what it handed back)
        // Apply in a later turn of the event loop. Node delivers up to 1000 worker messages in one
        // turn, running each one's continuations on the spot, so applying here kept the loop from
        // turning for a whole ingest: pack writes never completed, and every write batch was fresh
        // memory (docs/DESIGN.md, "Event-loop turns").
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (result.refusedAt !== undefined) {
          this.stats.pagesWritten -= n;
          claim?.settle.resolve(result.refusedAt);
        } else if (!this.error) {
          claim?.accepted();
          await this.apply(target, n, result, gcsBefore, payloadLoan);
        }
      } catch (err) {
        this.error ??= fromSystemError(err, `session ${this.id}`);
      } finally {
        // Apply copied what it kept, or holds the payload slab until its pack writes are done (free);
        // a failed job's slabs are simply not reused, and a buffer not of the pool is left alone.
        free();
        if (!release) this.store.slabs.give(pagesBack); // lent pages are their lender's
        this.inFlight--;
        this.queued.shift();
        // Settled above when refused; otherwise now, applied or failed (a no-op once settled).
        if (claim) {
          if (this.error) claim.settle.reject(this.error);
          else claim.settle.resolve(undefined);
        }
      }
    });
    this.queued.push(this.applying);
  }

  /**
   * Applies one block's hash results, in order. Only this method mutates the page table.
   * `gcsBefore`: the store's gc count when the job was submitted.
   */
  private async apply(target: number | Uint32Array, n: number, r: HashResult, gcsBefore: number, payloadLoan: PayloadLoan): Promise<void> {
    const store = this.store;
    // A gc running now, or one that ran since the worker found its chunks: the worker's hits may name
    // chunks that gc did not see referenced (this block was not applied yet) and removed.
    const gcMeanwhile = store.gcFence !== undefined || store.gcFencesRaised !== gcsBefore;
    // A block with many new pages (LZ4 is the costliest step): workers, if they wait on demand.
    if (r.lengths.length * 5 > n) store.pool.wantWorkers();
    const confirm: number[] = [];
    // For New pages: where the worker's compressed payload starts, and its ordinal among New pages.
    const payloadAt = new Int32Array(n).fill(-1);
    const ordinalAt = new Int32Array(n).fill(-1);
    const maybeAt = new Int32Array(n).fill(-1); // ordinal in r.maybeRaw
    let payloadPos = 0;
    let newIdx = 0;
    let maybeCount = 0;
    // New pages nobody stored meanwhile go to the pack writer in one call, after the loop.
    const storeDigestAt = new Uint32Array(n);
    const storePayloadAt = new Uint32Array(n);
    const storeLength = new Uint32Array(n);
    const storeCodec = new Uint8Array(n);
    let storeCount = 0;
    const held = this.pages.digests;
    for (let i = 0; i < n; i++) {
      const page = typeof target === 'number' ? target + i : target[i];
      this.superseded.replace(page, held, page * DIGEST_BYTES, r.digests, i * DIGEST_BYTES);
    }
    // Digests of zero pages are zero bytes, ignored for Zero kinds: a contiguous block is one copy.
    if (typeof target === 'number') this.pages.digests.set(r.digests, target * DIGEST_BYTES);
    else
      for (let i = 0; i < n; i++)
        this.pages.digests.set(r.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), target[i] * DIGEST_BYTES);
    for (let i = 0; i < n; i++) {
      const st = r.status[i];
      this.pages.kinds[typeof target === 'number' ? target + i : target[i]] = st === PageStatus.Zero ? PageKind.Zero : PageKind.Digest;
      if (st === PageStatus.Zero || st === PageStatus.SameAsParent || st === PageStatus.DuplicateInBlock) continue;
      if (st === PageStatus.KnownVerified) {
        maybeAt[i] = maybeCount++;
        // While a gc runs or after one ran, every reference goes through the exact index (its fence
        // sees lookups; a chunk removed meanwhile is absent there and stored again from maybeRaw).
        if (gcMeanwhile) confirm.push(i);
        continue;
      }
      if (st === PageStatus.New) {
        const len = r.lengths[newIdx];
        payloadAt[i] = payloadPos;
        ordinalAt[i] = newIdx;
        storeDigestAt[storeCount] = i * DIGEST_BYTES;
        storePayloadAt[storeCount] = payloadPos;
        storeLength[storeCount] = len;
        storeCodec[storeCount] = r.codecs[newIdx];
        storeCount++;
        payloadPos += len;
        newIdx++;
        continue;
      }
      maybeAt[i] = maybeCount++;
      confirm.push(i); // MaybeKnown
    }
    if (storeCount > 0) {
      const numbers = store.isNumbered ? new Float64Array(storeCount) : undefined;
      // Another block or session may have stored a New page's chunk since the worker looked: the
      // writer skips those whose fingerprint the table holds now, and they are confirmed below.
      const skipped = new Uint8Array(storeCount);
      // The writer probes each New page's digest: mostly the block's all, in a first snapshot.
      if (storeCount * 4 >= n) store.table.prefetch(r.digests, 0, DIGEST_BYTES, n);
      store.writer.appendMany(
        r.digests,
        storeDigestAt,
        r.payload,
        storePayloadAt,
        storeLength,
        storeCodec,
        storeCount,
        numbers,
        skipped,
        payloadLoan,
      );
      for (let k = 0; k < storeCount; k++) {
        const i = storeDigestAt[k] / DIGEST_BYTES;
        if (skipped[k] === 1) {
          confirm.push(i);
          continue;
        }
        const page = typeof target === 'number' ? target + i : target[i];
        this.superseded.stored(page);
        this.stats.newChunks++;
        this.stats.newChunkBytes += storeLength[k];
        if (numbers) this.noteNumber(page, numbers[k]);
      }
    }
    if (confirm.length === 0) return;
    const digests = confirm.map((i) => r.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES));
    const found = await store.lookupExact(digests);
    for (let k = 0; k < confirm.length; k++) {
      if (found[k]) continue;
      // Absent after all (a fingerprint clash): store it, unless an earlier page of this batch just did.
      if (store.writer.locateUnindexed(digests[k])) continue;
      const i = confirm[k];
      this.superseded.stored(typeof target === 'number' ? target + i : target[i]);
      if (ordinalAt[i] >= 0) {
        const o = ordinalAt[i];
        this.storeChunk(digests[k], r.payload.subarray(payloadAt[i], payloadAt[i] + r.lengths[o]), r.codecs[o]);
      } else {
        const c = getCodec().compressPages(r.maybeRaw, [maybeAt[i] * PAGE_SIZE]);
        this.storeChunk(digests[k], c.payload.subarray(0, c.lengths[0]), c.codecs[0]);
      }
    }
  }

  private storeChunk(digest: Uint8Array, payload: Uint8Array, codec: number): void {
    this.store.writer.append(digest, payload, codec);
    this.stats.newChunks++;
    this.stats.newChunkBytes += payload.length;
  }

  /** Records that page `page` was stored as chunk `number` (a hint: see numberHints). */
  private noteNumber(page: number, number: number): void {
    if (page >= this.numberHints.length) {
      const grown = new Float64Array(Math.max(page + 1, this.pages.pageCount, this.numberHints.length * 2)).fill(-1);
      grown.set(this.numberHints);
      this.numberHints = grown;
    }
    this.numberHints[page] = number;
  }

  /** Waits for every queued write to be hashed and applied. */
  async drain(): Promise<void> {
    await this.sendGathered();
    while (this.inFlight > 0) await this.applying;
    await this.applying;
    if (this.error) throw this.error;
  }

  /**
   * Makes the snapshot durable but not yet visible: chunks sealed and indexed, manifest written.
   * Commit with store.commitPrepared (atomically with other VMs of a group) or use commit().
   */
  async prepare(options: CommitOptions = {}): Promise<PreparedSnapshot> {
    this.assertOpen();
    this.state = 'committing';
    try {
      await this.drain();
      trace('ingest drained');
      const byteLength = options.byteLength ?? this.options.memoryBytes ?? this.furthestByte;
      if (!Number.isSafeInteger(byteLength) || byteLength < 0) throw new VnstoreError('E_USAGE', `bad image length ${byteLength}`);
      const pageCount = Math.ceil(byteLength / PAGE_SIZE);
      // A short page anywhere but at the image's end is a truncated page: never zero-padded silently.
      if (this.shortPage && this.shortPage.end !== byteLength) throw shortPageError(this.shortPage.index, this.shortPage.end, byteLength);
      if (
        pageCount < this.pages.pageCount &&
        this.pages.kinds.subarray(pageCount, this.pages.pageCount).some((k) => k !== PageKind.Unset)
      ) {
        throw new VnstoreError('E_SESSION', `pages were written beyond the image length ${byteLength}`);
      }
      this.pages.resize(pageCount);
      await this.fillUnwritten(options.unwritten ?? (this.parent ? 'parent' : 'error'));
      if (byteLength % PAGE_SIZE !== 0) {
        await this.store.writer.flush(); // zeroTail reads the last page back from its pack
        await this.zeroTail(byteLength);
      }
      // Seal the last pack, and encode the manifest while its writes and fsync run. The manifest
      // file is written only once every pack is durable and indexed (the write order, docs/FORMAT.md).
      const flushing = this.store.writer.flush();
      // Format 3 names pages by number: those of new chunks are known once their packs are indexed
      // (the image digest is computed meanwhile all the same).
      const numberedHeader = this.store.isNumbered ? this.manifestHeader(byteLength, pageCount) : undefined;
      let manifest: BuiltManifest | undefined = numberedHeader ? undefined : this.buildManifest(byteLength, pageCount);
      await flushing;
      trace('packs flushed');
      if (this.store.writer.failureEpoch !== this.failureEpoch) throw this.writerFailure();
      manifest ??= await this.buildNumberedManifest(numberedHeader!);
      const record = await this.writeManifest(manifest);
      trace('manifest written');
      this.state = 'done';
      this.store.sessions.unregister(this);
      const loaded = manifest.numbered && {
        ...manifest.numbered,
        pages: this.committedPages(),
        wholeDigests: true, // written pages hashed here, inherited ones whole from the parent or hashInherited
        fileBytes: manifest.bytes.length,
      };
      return { store: this.store, record, failureEpoch: this.failureEpoch, state: 'prepared', reclaim: this.reclaimHint(), loaded };
    } catch (err) {
      this.state = 'done';
      this.store.sessions.unregister(this);
      const e = fromSystemError(err, `committing snapshot of VM ${this.options.vm}`);
      if (isWriteFailure(e)) await this.store.discardFailedPacks(this.sealMark);
      throw e;
    }
  }

  /** Prepares and commits this one snapshot; returns its catalog record. */
  async commit(options: CommitOptions = {}): Promise<SnapshotRecord> {
    const prepared = await this.prepare(options);
    try {
      const group = this.options.group !== undefined ? { id: this.options.group } : undefined;
      return (await this.store.commitPrepared([prepared], group))[0];
    } catch (err) {
      await this.store.abortPrepared([prepared]).catch(() => undefined);
      if (isWriteFailure(err)) await this.store.discardFailedPacks(this.sealMark);
      throw err;
    }
  }

  /**
   * Drops the session. Chunks it already stored stay in packs as garbage until gc (after a failed pack
   * write, the packs nothing live references are dropped at once: Store.discardFailedPacks). Once commit() or
   * prepare() has begun, the outcome is theirs and abort does nothing: dropping the session then
   * took it out of the live set gc reads while its manifest was still being written.
   */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'done';
    this.gathered = undefined;
    this.store.sessions.unregister(this);
    await this.applying.catch(() => undefined);
    if (this.store.writer.failureEpoch !== this.failureEpoch) {
      await this.store.writer.flush().catch(() => undefined); // every pack it filled is sealed or failed
      await this.store.discardFailedPacks(this.sealMark);
    }
  }

  /** The packs sealed since the session began, and its new and superseded bytes (after the last flush). */
  private reclaimHint(): ReclaimHint {
    const s = this.stats;
    s.supersededChunks = this.superseded.chunks;
    // Superseded chunks are counted, not measured: they are taken at the session's mean stored size.
    const mean = s.newChunks === 0 ? 0 : s.newChunkBytes / s.newChunks;
    return {
      packs: this.store.writer.sealedSince(this.sealMark),
      newBytes: s.newChunkBytes,
      supersededBytes: Math.round(Math.min(s.newChunks, s.supersededChunks) * mean),
    };
  }

  private writerFailure(): Error {
    return this.store.writer.lastFailure ?? new VnstoreError('E_IO', 'a pack write failed during the session');
  }

  /** Digests this session references so far (gc must treat them as live while it is open). */
  *liveDigests(): Generator<Uint8Array> {
    for (let i = 0; i < this.pages.pageCount; i++) if (this.pages.kinds[i] === PageKind.Digest) yield this.pages.digestAt(i);
    for (const held of this.decidedUnapplied) yield* held;
  }

  /**
   * Bytes past the image length are not part of the image: a short last page is named and stored
   * zero-padded (docs/FORMAT.md), even when it was written whole or inherited from a longer parent.
   * Returns true when it stored a new chunk.
   */
  private async zeroTail(byteLength: number): Promise<boolean> {
    const tail = byteLength % PAGE_SIZE;
    const last = this.pages.pageCount - 1;
    if (tail === 0 || last < 0 || this.pages.kinds[last] !== PageKind.Digest) return false;
    const page = await this.store.readChunk(this.pages.digestAt(last), `VM ${this.options.vm} page ${last}`);
    if (page.subarray(tail).every((b) => b === 0)) return false;
    page.fill(0, tail);
    if (page.every((b) => b === 0)) {
      this.pages.setZero(last);
      return false;
    }
    const digest = hashPage(page);
    this.superseded.replace(last, this.pages.digests, last * DIGEST_BYTES, digest, 0);
    this.pages.setDigest(last, digest);
    const [known] = await this.store.lookupExact([digest]);
    if (known) return false;
    const c = getCodec().compressPages(page, [0]);
    this.storeChunk(digest, c.payload.subarray(0, c.lengths[0]), c.codecs[0]);
    this.superseded.stored(last);
    return true;
  }

  private async fillUnwritten(mode: 'parent' | 'zero' | 'error'): Promise<void> {
    const pages = this.pages;
    const parent = this.parent?.pages;
    const table = this.store.table;
    let unset = 0;
    const unknown: number[] = []; // inherited pages whose chunk the chunk table does not know
    // Inherited digest pages, only where their whole digests must be read (hashInherited).
    const hashing = this.parentDigestBytes < DIGEST_BYTES;
    const inherited: number[] = [];
    const fromParent: number[] = [];
    const kinds = pages.kinds;
    const losses = chunkLossGeneration();
    const trusted = this.parentTrusted; // no inherited page need ask
    for (let i = 0; i < pages.pageCount;) {
      if (kinds[i] !== PageKind.Unset) {
        i++;
        continue;
      }
      // A run of unwritten pages [i, end) is filled at once: most of a dirty-list snapshot is one or a
      // few long runs, and one copy of their digests costs far less than a call per page (issue 12).
      let end = i + 1;
      while (end < pages.pageCount && kinds[end] === PageKind.Unset) end++;
      if (mode === 'error') unset += end - i;
      else {
        const inherit = mode === 'parent' && parent ? Math.min(end, parent.pageCount) : i;
        if (inherit > i) {
          pages.digests.set(parent!.digests.subarray(i * DIGEST_BYTES, inherit * DIGEST_BYTES), i * DIGEST_BYTES);
          fromParent.push(i, inherit);
        }
        for (let k = i; k < inherit; k++) {
          // The parent's digest slot of a non-digest page may be stale: such a page becomes zero here.
          if (parent!.kinds[k] !== PageKind.Digest) kinds[k] = PageKind.Zero;
          else {
            kinds[k] = PageKind.Digest;
            if (hashing) inherited.push(k);
            if (!trusted && !table.hasFingerprint(parent!.digests, k * DIGEST_BYTES)) unknown.push(k);
          }
        }
        kinds.fill(PageKind.Zero, Math.max(i, inherit), end);
      }
      i = end;
    }
    if (unset > 0) throw new VnstoreError('E_SESSION', `${unset} page(s) of the image were never written`);
    if (unknown.length > 0) await this.checkInherited(unknown);
    if (hashing && inherited.length > 0) await this.hashInherited(inherited);
    this.fromParent = fromParent;
    this.inheritedPresentAt = unknown.length === 0 ? losses : undefined;
  }

  /**
   * Every chunk of the parent was in the chunk table (its presentAt) and no chunk table has lost a
   * fingerprint since: a page with the parent's digest at its index needs no lookup.
   */
  private get parentTrusted(): boolean {
    const at = this.parent?.presentAt;
    return at !== undefined && at === chunkLossGeneration();
  }

  /**
   * chunkLossGeneration() at a moment every chunk this snapshot names was in the chunk table, once
   * its pages are numbered (undefined when unknown): a child that begins on it while the count has
   * not moved need not look its inherited pages up (an empty snapshot of 256 MiB looked up 65,536;
   * issue 12). Numbering found each page it resolved in the table; inherited pages were trusted or
   * looked up; other pages equal to an untrusted parent's are looked up here.
   */
  private presentAt(fromParent: readonly number[]): number | undefined {
    const at = this.inheritedPresentAt;
    if (at === undefined || chunkLossGeneration() !== at) return undefined;
    if (!this.parent || this.parentTrusted) return at;
    const { kinds, digests, pageCount } = this.pages;
    const table = this.store.table;
    let run = 0;
    for (let p = 0; p < pageCount; p++) {
      if (run < fromParent.length && p === fromParent[run]) {
        p = fromParent[run + 1] - 1;
        run += 2;
      } else if (kinds[p] === PageKind.Digest && !table.hasFingerprint(digests, p * DIGEST_BYTES)) return undefined;
    }
    return at;
  }

  /**
   * Bytes of the parent's digests a page compares with: a format-3 parent's come from pack TOCs,
   * which keep the first 24 bytes of each (docs/DESIGN.md, "A 24-byte digest prefix in the TOC").
   */
  private get parentDigestBytes(): number {
    return this.parent?.numbers && !this.parent.wholeDigests ? TOC_DIGEST_BYTES : DIGEST_BYTES;
  }

  private sameAsParent(parentDigests: Uint8Array, parentAt: number, digests: Uint8Array, at: number): boolean {
    return this.parentDigestBytes < DIGEST_BYTES
      ? tocDigestsEqual(parentDigests, parentAt, digests, at)
      : digestsEqual(parentDigests, parentAt, digests, at);
  }

  /**
   * Inherited pages of a format-3 parent know only their digest's TOC prefix; the image digest binds
   * whole digests, so their chunks are read and hashed (each checked against its prefix). The price of
   * the shorter TOC, paid by sessions that leave pages unwritten (a dirty-list put), not by restore.
   */
  private async hashInherited(pageIndices: number[]): Promise<void> {
    const parent = this.parent!;
    const wanted = new Uint8Array(parent.pages.pageCount);
    for (const p of pageIndices) wanted[p] = 1;
    // Decoded and hashed as a restore of the parent's windows that hold them, in the page workers.
    const digests = await wholeDigests(this.store, parent.id, parent.pages, parent.numbers!, wanted);
    for (const p of pageIndices) this.pages.setDigest(p, digests, p * DIGEST_BYTES);
  }

  /**
   * An inherited page names its chunk without bytes to store it again, so the chunk must exist. The
   * chunk table knows every chunk the store holds; one it does not know is confirmed against the
   * exact index before the commit is refused (after a repair dropped a corrupt pack, say).
   */
  private async checkInherited(pageIndices: number[]): Promise<void> {
    const digests = pageIndices.map((i) => this.pages.digestAt(i));
    const found = await this.store.lookupExact(digests);
    const missing = pageIndices.filter((_, k) => !found[k]);
    if (missing.length === 0) return;
    throw new CorruptError(
      `${missing.length} page(s) left unwritten would inherit chunks of parent snapshot ${this.parent!.id} that the store no longer holds ` +
        `(first: page ${missing[0]}, chunk ${hex(this.pages.digestAt(missing[0]).subarray(0, this.parentDigestBytes))}); ` +
        `write those pages, or begin with no parent; run 'vnstore check'`,
    );
  }

  /** The manifest's header (not yet with its base). */
  private manifestHeader(byteLength: number, pageCount: number): ManifestHeader {
    const meta = { id: this.id, vm: this.options.vm, group: this.options.group, parent: this.parent?.id, time: new Date().toISOString() };
    return {
      meta,
      byteLength,
      pageCount,
      imageDigest: this.parentImageDigest(byteLength, pageCount) ?? imageDigest(this.pages, byteLength),
    };
  }

  /**
   * The parent's image digest when this image is the parent's: every page taken from it unchanged,
   * at the same length, and the parent's table held whole digests (this process computed its digest
   * from them, as imageDigest would now). Hashing a 256 MiB image's 2 MiB of digests is ~2 ms.
   */
  private parentImageDigest(byteLength: number, pageCount: number): Uint8Array | undefined {
    const header = this.parent?.header;
    // A short last page may have been cut anew (zeroTail): hashed as usual.
    if (!header || !this.parent!.wholeDigests || header.byteLength !== byteLength || byteLength % PAGE_SIZE !== 0) return undefined;
    const whole = this.fromParent.length === 2 && this.fromParent[0] === 0 && this.fromParent[1] === pageCount;
    return whole ? header.imageDigest : undefined;
  }

  /** The catalog record that will point at a manifest of `manifestBytes` (`tocBytes`: a new chunk's table entry). */
  private snapshotRecord(
    header: ManifestHeader,
    base: string | undefined,
    baseDepth: number,
    zeroPages: number,
    manifestBytes: number,
    tocBytes: number,
  ): SnapshotRecord {
    return {
      id: this.id,
      vm: this.options.vm,
      group: this.options.group,
      epoch: this.options.epoch,
      time: header.meta.time,
      parent: this.parent?.id,
      base,
      baseDepth,
      byteLength: header.byteLength,
      pageCount: header.pageCount,
      zeroPages,
      imageDigest: Buffer.from(header.imageDigest).toString('hex'),
      newChunks: this.stats.newChunks,
      newChunkBytes: this.stats.newChunkBytes,
      manifestBytes,
      addedBytes: this.stats.newChunkBytes + this.stats.newChunks * tocBytes + manifestBytes,
    };
  }

  /**
   * Format 3: the version-2 manifest, pages named by number (every pack sealed and indexed by now),
   * delta-encoded against the parent under the same rule as version 1.
   */
  private async buildNumberedManifest(header: ManifestHeader): Promise<Required<BuiltManifest>> {
    const parent = this.parent?.numbers ? { pages: this.parent.pages, numbers: this.parent.numbers } : undefined;
    // zeroTail may have replaced a short last page after it was inherited: that page is numbered anew.
    const inheritedUpTo = header.byteLength % PAGE_SIZE === 0 ? header.pageCount : header.pageCount - 1;
    const fromParent = parent ? clipRuns(this.fromParent, inheritedUpTo) : undefined;
    const numbers = await this.store.numbered!.numberPages(
      this.pages,
      parent,
      `snapshot of VM ${this.options.vm}`,
      fromParent,
      this.numberHints,
    );
    this.numberHints = new Float64Array(0); // used: a committed session's object may outlive it
    const presentAt = this.presentAt(fromParent ?? []);
    let plan: ManifestV2Plan | undefined;
    let base: string | undefined;
    let baseDepth = 0;
    if (this.parent && parent && this.parent.depth < MAX_BASE_DEPTH) {
      // The delta wins when smaller than the full plan; a bound on the full plan's size most often
      // decides without planning it (the same choice as comparing both plans).
      const delta = planManifestV2(numbers, parent.numbers);
      const deltaBytes = delta.bodyBytes + Buffer.byteLength(this.parent.id);
      if (deltaBytes >= fullPlanBytesAtLeast(numbers)) plan = planManifestV2(numbers);
      if (!plan || deltaBytes < plan.bodyBytes) {
        plan = delta;
        base = this.parent.id;
        baseDepth = this.parent.depth + 1;
      }
    }
    plan ??= planManifestV2(numbers);
    const encoded = encodeManifestV2({ ...header, baseId: base }, numbers, plan.base, plan);
    // A new chunk costs its digest and (at most) one item in its pack's table.
    const record = this.snapshotRecord(header, base, baseDepth, encoded.stats.zeroPages, encoded.bytes.length, NUMBERED_TOC_ENTRY_BYTES);
    return { bytes: encoded.bytes, record, numbered: { header: { ...header, baseId: base }, numbers, presentAt } };
  }

  /**
   * The page table as a reader of the manifest gets it (read-v3's pageDigests), but with each page's
   * whole digest where a reader gets the TOC's 24-byte prefix: exactly pageCount pages, and zero
   * digest bytes where a page is zero (an inherited zero page may keep its parent's stale digest
   * slot). The session is done with it, so it is handed over in place when it is already that size:
   * a copy of a 256 MiB image's table was 2 MiB of fresh memory per snapshot.
   */
  private committedPages(): PageTable {
    const n = this.pages.pageCount;
    let out = this.pages;
    if (out.kinds.length !== n || out.digests.length !== n * DIGEST_BYTES) {
      out = new PageTable(n);
      out.kinds.set(this.pages.kinds.subarray(0, n));
      out.digests.set(this.pages.digests.subarray(0, n * DIGEST_BYTES));
    }
    for (let i = 0; i < n; i++) if (out.kinds[i] !== PageKind.Digest) out.digests.fill(0, i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
    return out;
  }

  /** The manifest's bytes and the catalog record that will point at it (not yet written). */
  private buildManifest(byteLength: number, pageCount: number): BuiltManifest {
    const header = this.manifestHeader(byteLength, pageCount);
    // Delta-encode against the parent when the chain stays short and it actually saves space.
    let plan = planManifest(this.pages);
    let base: string | undefined;
    let baseDepth = 0;
    if (this.parent && this.parent.depth < MAX_BASE_DEPTH) {
      const delta = planManifest(this.pages, this.parent.pages);
      if (delta.bodyBytes + Buffer.byteLength(this.parent.id) < plan.bodyBytes) {
        plan = delta;
        base = this.parent.id;
        baseDepth = this.parent.depth + 1;
      }
    }
    const encoded = encodeManifest({ ...header, baseId: base }, this.pages, plan.base, plan);
    const record = this.snapshotRecord(header, base, baseDepth, encoded.stats.zeroPages, encoded.bytes.length, TOC_ENTRY_BYTES);
    return { bytes: encoded.bytes, record };
  }

  private async writeManifest(manifest: BuiltManifest): Promise<SnapshotRecord> {
    const dest = this.store.manifestPath(this.id);
    await writeFileDurable(dest, manifest.bytes, path.join(path.dirname(dest), `${this.id}.vnm.tmp`));
    return manifest.record;
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new VnstoreError('E_SESSION', `session ${this.id} is no longer open`);
  }
}

/** A manifest encoded and the catalog record that will point at it; format 3 adds what the store keeps of it once committed. */
interface BuiltManifest {
  bytes: Buffer;
  record: SnapshotRecord;
  numbered?: { header: ManifestHeader; numbers: NumberedPages; presentAt?: number };
}

/** Runs [start, end) (pairs, in order) cut to end at `limit`. */
function clipRuns(runs: readonly number[], limit: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < runs.length && runs[r] < limit; r += 2) out.push(runs[r], Math.min(runs[r + 1], limit));
  return out;
}

/** A failure to write (a full disk, an I/O error), after which the session's packs are garbage. */
function isWriteFailure(err: unknown): boolean {
  return err instanceof VnstoreError && (err.code === 'E_NO_SPACE' || err.code === 'E_IO');
}

function shortPageError(index: number, end: number, imageBytes: number): VnstoreError {
  return new VnstoreError(
    'E_USAGE',
    `page ${index} was written short (${end - index * PAGE_SIZE} of ${PAGE_SIZE} bytes), but only the image's last page may be short and the image is ${imageBytes} bytes: a truncated page is refused, never padded with zeros`,
  );
}

/** Pages a caller lends a job in place: `release` frees them; the job takes it (clears it) when it starts. */
interface Loan {
  release: (() => void) | undefined;
}

/** A writeClaimed block's claim: the digests its job checks, and what to do once it is checked. */
interface Claim {
  digests: Uint8Array;
  /** Records the write in the session (its furthest byte, a short page it replaced): taken. */
  accepted: () => void;
  settle: { resolve: (refusedAt: number | undefined) => void; reject: (err: unknown) => void };
}
