/**
 * Appends new chunks to the open pack and seals packs in the rule's order:
 *   temp file → fsync → rename into packs/ → fsync packs/ → index entries + pack record (LevelDB).
 * Chunks are visible to dedup (chunk table, and locateUnindexed over the packs' tables of contents)
 * from the moment they are appended; a commit calls flush(), so a snapshot only ever references
 * chunks in sealed, indexed packs.
 */
import path from 'node:path';
import { DIGEST_BYTES, digestsEqual, PAGE_SIZE } from '../format/pages.js';
import type { ChunkLocation, ChunkTable } from '../index/chunk-table.js';
import { fromSystemError } from '../util/errors.js';
import type { StoreDb } from './db.js';
import { IndexBatch } from './index-batch.js';
import { BatchPool, PackFile, type SealedPack } from './pack-file.js';
import type { PackCacheWindow } from './pack-cache.js';
import { addCounterDelta, sealedPackDelta } from './counters.js';
import { packFileName, PACK_VERSION } from '../format/pack.js';
import { PACK_VERSION_PREFIXED } from '../format/pack-v3.js';

/**
 * Store format 3: chunks get numbers from the store's allocator as they are appended, and a sealed
 * pack joins the in-memory index (its TOC is the index: no LevelDB batch).
 */
export interface NumberedSealing {
  takeNumber(): number;
  addSealed(pack: number): Promise<void>;
}

export const DEFAULT_PACK_TARGET_BYTES = 32 * 1024 * 1024;

/** A payload buffer its owner lends to pack writes: it is not reused while a hold is unreleased. */
export interface PayloadLoan {
  hold(): () => void;
}

/**
 * Runs at least this long are written from the lent payload rather than copied into a write batch:
 * shorter ones would make many small writes (a consecutive snapshot's few new pages a block).
 */
const LENT_RUN_MIN_BYTES = 64 * 1024;
/**
 * Lent runs waiting for their writes at most; past that, runs are copied. Each keeps a whole payload
 * slab (4 MiB) from reuse: unbounded, eight agents' snapshots held ~110 MiB more at the server's
 * peak (bench/RESULTS.md, issue 12, session 20).
 */
const LENT_RUNS_MAX = 4;

export class PackWriter {
  private open: PackFile | undefined;
  private sealing = new Set<Promise<void>>();
  private readonly batches = new BatchPool();
  /**
   * Packs whose chunks are not in LevelDB yet (the open pack and those sealing), by id. Their
   * tables of contents answer exact lookups for those chunks; a map keyed by digest did the same at
   * the price of a string and an object per new chunk (8% of a first snapshot's time).
   */
  private readonly unindexed = new Map<number, PackFile>();
  /** Bumped on every failed pack: sessions that began before a failure must not commit. */
  failureEpoch = 0;
  lastFailure: Error | undefined;
  /** Runs lent to pack writes and not yet written (LENT_RUNS_MAX). */
  private lentRuns = 0;
  /** Ids of the packs sealed and indexed, in order (a failed session's are dropped: sealedSince). */
  private readonly sealedLog: number[] = [];

  constructor(
    readonly packsDir: string,
    readonly tmpDir: string,
    private readonly db: StoreDb,
    private readonly table: ChunkTable,
    private nextPackId: number,
    readonly targetBytes = DEFAULT_PACK_TARGET_BYTES,
    /** Told the new chunk-generation token after each index batch (the saved table goes stale). */
    private readonly onChunkGeneration: (token: Buffer) => void = () => undefined,
    /** Set on a format-3 store: version-3 packs of numbered chunks (see NumberedSealing). */
    private readonly numbered?: NumberedSealing,
    /** Told each pack sealed and indexed: keeps the newest packs' pages cached, drops older ones'. */
    private readonly cacheWindow?: PackCacheWindow,
  ) {}

  /** Queues one chunk for the open pack (its bytes are copied); locateUnindexed then finds it. */
  append(digest: Uint8Array, payload: Uint8Array, codec: number): void {
    if (digest.length !== DIGEST_BYTES) throw new RangeError('digest must be 32 bytes');
    this.appendMany(digest, [0], payload, [0], [payload.length], [codec], 1);
  }

  /**
   * Queues many chunks at once (a block's new pages): chunk k is named by digests[digestAt[k] ..+32]
   * and its payload is payload[payloadAt[k] ..+lengths[k]]. Same effect as append() for each, in
   * order, but payloads that lie back to back are copied as one run, and no per-chunk views are made:
   * this is the main thread's share of ingesting a first snapshot.
   */
  appendMany(
    digests: Uint8Array,
    digestAt: ArrayLike<number>,
    payload: Uint8Array,
    payloadAt: ArrayLike<number>,
    lengths: ArrayLike<number>,
    codecs: ArrayLike<number>,
    count: number,
    /** Set to each chunk's number (a format-3 store's; -1 otherwise), for the caller's hints. */
    numbersOut?: Float64Array,
    /**
     * When given, a chunk whose fingerprint the chunk table holds already is not appended and gets
     * skippedOut[k] = 1 (its caller confirms it through the exact index): the check and the insert
     * then take one probe of the table, not two.
     */
    skippedOut?: Uint8Array,
    /**
     * When given, `payload` may be written from where it is, not copied: each long run is held
     * (`hold()` returns its release, called once the run is written) until then.
     */
    lent?: PayloadLoan,
  ): void {
    let runStart = 0; // payload bytes [runStart, runEnd) still to copy into the open pack's batch
    let runEnd = 0;
    for (let k = 0; k < count; k++) {
      const len = lengths[k];
      // Checked before a pack is started for it (addEntry checks too, after the run bookkeeping).
      if (len < 1 || len > PAGE_SIZE) throw new RangeError(`payload length ${len}`);
      if (digestAt[k] + DIGEST_BYTES > digests.length) throw new RangeError('digest out of range');
      // Probed before the pack work, which leaves the table alone: the slot stays vacant till filled.
      const slot = skippedOut && this.table.vacantSlot(digests, digestAt[k]);
      if (slot === -1) {
        skippedOut![k] = 1;
        continue; // the next chunk's payload no longer follows the run: it starts a new one
      }
      const pack = this.open ?? this.startPack();
      // A run never outgrows the room left in the batch it will be copied into (a new batch when
      // there is none), so every copy lands in a reused batch, never in a one-off allocation.
      if (payloadAt[k] !== runEnd || runEnd - runStart + len > pack.batchRoom) {
        this.putRun(pack, payload, runStart, runEnd, lent);
        runStart = runEnd = payloadAt[k];
      }
      const number = this.numbered?.takeNumber();
      if (numbersOut) numbersOut[k] = number ?? -1;
      const offset = pack.addEntry(digests, digestAt[k], len, codecs[k], runEnd - runStart, number);
      runEnd += len;
      const loc = { pack: pack.id, offset, storedLength: len, codec: codecs[k] };
      if (slot === undefined) this.table.insert(digests, loc, digestAt[k]);
      else this.table.fillVacant(slot, digests, digestAt[k], loc);
      if (pack.size + (runEnd - runStart) >= this.targetBytes) {
        this.putRun(pack, payload, runStart, runEnd, lent);
        runStart = runEnd;
        this.sealOpen(); // the next chunk starts a new pack
      }
    }
    if (this.open) this.putRun(this.open, payload, runStart, runEnd, lent);
  }

  /** Writes payload[start, end) to `pack`: from where it is when lent, long and within the bound, else through a batch. */
  private putRun(pack: PackFile, payload: Uint8Array, start: number, end: number, lent: PayloadLoan | undefined): void {
    if (!lent || end - start < LENT_RUN_MIN_BYTES || this.lentRuns >= LENT_RUNS_MAX) return pack.copyRun(payload, start, end);
    const release = lent.hold();
    this.lentRuns++;
    // Never called if the write fails: runs are copied from then on if that leaves the bound reached.
    pack.lendRun(payload, start, end, () => {
      this.lentRuns--;
      release();
    });
  }

  /**
   * The exact location of a chunk appended but not yet indexed (open or sealing pack), or undefined.
   * The chunk table points at it (every append inserts it); a slot shared by two fingerprints is
   * ambiguous, and then the unindexed packs' tables of contents are searched.
   */
  locateUnindexed(digest: Uint8Array): ChunkLocation | undefined {
    if (this.unindexed.size === 0) return undefined;
    const hit = this.table.get(digest);
    if (!hit) return undefined; // every unindexed chunk is in the table (a failed pack's are removed)
    if (!hit.ambiguous) {
      const pack = this.unindexed.get(hit.location.pack);
      const k = pack ? pack.indexAt(hit.location.offset) : -1;
      return k >= 0 && digestsEqual(pack!.digests, k * DIGEST_BYTES, digest, 0) ? hit.location : undefined;
    }
    for (const pack of this.unindexed.values()) {
      for (let k = 0; k < pack.count; k++) {
        if (digestsEqual(pack.digests, k * DIGEST_BYTES, digest, 0))
          return { pack: pack.id, offset: pack.offsets[k], storedLength: pack.lengths[k], codec: pack.codecs[k] };
      }
    }
    return undefined;
  }

  /** Chunks appended but not yet indexed. */
  get unindexedChunks(): number {
    let n = 0;
    for (const pack of this.unindexed.values()) n += pack.count;
    return n;
  }

  /** Digests of the chunks appended but not yet indexed (gc keeps them). */
  *unindexedDigests(): Generator<Uint8Array> {
    for (const pack of this.unindexed.values())
      for (let k = 0; k < pack.count; k++) yield pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
  }

  /** Seals the open pack (if any) and waits until every pack appended so far is durable and indexed. */
  async flush(): Promise<void> {
    if (this.open && this.open.count > 0) this.sealOpen();
    while (this.sealing.size > 0) {
      await Promise.allSettled([...this.sealing]);
    }
  }

  /** Packs sealed so far: a mark for sealedSince. */
  get sealedCount(): number {
    return this.sealedLog.length;
  }

  /** Ids of the packs sealed since `mark` (a sealedCount). */
  sealedSince(mark: number): number[] {
    return this.sealedLog.slice(mark);
  }

  /** A pack id for a pack written outside this writer (gc rewrite, repair salvage). */
  reservePackId(): number {
    return this.nextPackId++;
  }

  /** Discards the open pack without sealing (store close after a failure). */
  async close(): Promise<void> {
    await this.flush().catch(() => undefined);
  }

  private startPack(): PackFile {
    const pack = new PackFile(this.nextPackId++, this.tmpDir, this.batches, this.numbered ? PACK_VERSION_PREFIXED : PACK_VERSION);
    this.open = pack;
    this.unindexed.set(pack.id, pack);
    return pack;
  }

  private sealOpen(): void {
    const pack = this.open;
    if (!pack) return;
    this.open = undefined;
    pack.writeBuffered();
    const p = this.seal(pack).catch(async (err: unknown) => {
      await this.discard(pack, err);
    });
    const tracked = p.finally(() => this.sealing.delete(tracked));
    this.sealing.add(tracked);
  }

  private async seal(pack: PackFile): Promise<void> {
    if (this.numbered) {
      const { sealed } = await pack.seal(this.packsDir, () => undefined);
      await this.numbered.addSealed(pack.id); // indexed: lookups find it there from now on
      this.unindexed.delete(pack.id);
      this.sealedLog.push(pack.id);
      this.sealedCached(sealed);
      return;
    }
    // The index batch is built while the fsync runs (CPU next to I/O); it is written only after the
    // pack is durable under its final name, as the write order requires.
    let batch: IndexBatch | undefined;
    let sealed: SealedPack;
    try {
      ({ sealed } = await pack.seal(this.packsDir, (s) => {
        batch = new IndexBatch(this.db).addPack(s.record, s.chunks);
        addCounterDelta(batch, sealedPackDelta(s.record)); // stats counters, same batch (src/store/counters.ts)
      }));
    } catch (err) {
      await batch?.close().catch(() => undefined);
      throw err;
    }
    const token = await batch!.write();
    this.onChunkGeneration(token);
    this.unindexed.delete(pack.id);
    this.sealedLog.push(pack.id);
    this.sealedCached(sealed);
  }

  /** Tells the page-cache window of a pack sealed and indexed under its final name. */
  private sealedCached(sealed: SealedPack): void {
    this.cacheWindow?.sealed(path.join(this.packsDir, packFileName(sealed.record.id)), sealed.record.bytes);
  }

  /** A pack that failed to seal: forget its chunks everywhere and remove the temp file. */
  private async discard(pack: PackFile, err: unknown): Promise<void> {
    this.failureEpoch++;
    this.lastFailure = fromSystemError(err, `writing pack ${packFileName(pack.id)}`);
    this.unindexed.delete(pack.id);
    for (let k = 0; k < pack.count; k++) {
      const digest = pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
      if (this.table.get(digest)?.location.pack === pack.id) this.table.remove(digest);
    }
    // Renamed but its index batch failed: nothing may use it (every session that saw its chunks fails
    // on the bumped epoch), and left in packs/ it would hold the space until recovery indexed it.
    await pack.discard(this.packsDir);
  }
}
