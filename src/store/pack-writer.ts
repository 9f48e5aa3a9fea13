/**
 * Appends new chunks to the open pack and seals packs in the rule's order:
 *   temp file → fsync → rename into packs/ → fsync packs/ → index entries + pack record (LevelDB).
 * Chunks are visible to dedup (chunk table, and locateUnindexed over the packs' tables of contents)
 * from the moment they are appended; a commit calls flush(), so a snapshot only ever references
 * chunks in sealed, indexed packs.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { encodePackFooter, encodePackHeader, packFileName, PACK_HEADER_BYTES, TOC_ENTRY_BYTES, PACK_TRAILER_BYTES } from '../format/pack.js';
import { DIGEST_BYTES, digestsEqual, PAGE_SIZE } from '../format/pages.js';
import type { ChunkLocation, ChunkTable } from '../index/chunk-table.js';
import { fsyncDir, FILE_MODE, writeFully, writevFully } from '../util/durable.js';
import { fromSystemError } from '../util/errors.js';
import { indexOfSorted } from '../util/search.js';
import { chunkKey, encodeChunkValue, jsonValue, packKey, stampChunkGeneration, type PackRecord, type StoreDb } from './db.js';
import { addCounterDelta, sealedPackDelta } from './counters.js';

export const DEFAULT_PACK_TARGET_BYTES = 32 * 1024 * 1024;
const WRITE_BATCH_BYTES = 1024 * 1024; // small: each batch is fresh memory once per process
/** Write batches kept for reuse: fresh memory costs a page fault per 4 KiB (docs/DESIGN.md). */
const SPARE_BATCHES = 4;

interface OpenPack {
  id: number;
  tmpPath: string;
  fh: Promise<FileHandle>;
  size: number; // bytes appended so far, header included
  crc: number; // running CRC32 of the payload region handed to writes so far
  // The table of contents in columns (one object per chunk made the GC a main-thread cost).
  count: number;
  digests: Uint8Array;
  lengths: Uint16Array;
  codecs: Uint8Array;
  offsets: Uint32Array; // each chunk's offset in the pack, ascending (for lookups by table location)
  batch: Buffer | undefined; // payloads not yet handed to a write
  batchUsed: number;
  /** Full batches waiting for the writer: written together, in order, by one writev. */
  queued: { data: Buffer; batch: Buffer }[];
  draining: boolean;
  /** Settles when every batch handed over so far is written (rejects on the first failed write). */
  writes: Promise<void>;
}

export class PackWriter {
  private open: OpenPack | undefined;
  private sealing = new Set<Promise<void>>();
  private spareBatches: Buffer[] = [];
  /**
   * Packs whose chunks are not in LevelDB yet (the open pack and those sealing), by id. Their
   * tables of contents answer exact lookups for those chunks; a map keyed by digest did the same at
   * the price of a string and an object per new chunk (8% of a first snapshot's time).
   */
  private readonly unindexed = new Map<number, OpenPack>();
  /** Bumped on every failed pack: sessions that began before a failure must not commit. */
  failureEpoch = 0;
  lastFailure: Error | undefined;
  /** Ids of the packs sealed and indexed, in order (a failed session's are dropped: sealedSince). */
  private readonly sealedLog: number[] = [];

  constructor(
    private readonly packsDir: string,
    private readonly tmpDir: string,
    private readonly db: StoreDb,
    private readonly table: ChunkTable,
    private nextPackId: number,
    readonly targetBytes = DEFAULT_PACK_TARGET_BYTES,
    /** Told the new chunk-generation token after each index batch (the saved table goes stale). */
    private readonly onChunkGeneration: (token: Buffer) => void = () => undefined,
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
  ): void {
    let runStart = 0; // payload bytes [runStart, runEnd) still to copy into the open pack's batch
    let runEnd = 0;
    for (let k = 0; k < count; k++) {
      const len = lengths[k];
      const d = digestAt[k];
      if (len < 1 || len > PAGE_SIZE) throw new RangeError(`payload length ${len}`);
      if (d + DIGEST_BYTES > digests.length) throw new RangeError('digest out of range');
      const pack = this.open ?? this.startPack();
      // A run never outgrows the room left in the batch it will be copied into (a new batch when
      // there is none), so every copy lands in a reused batch, never in a one-off allocation.
      const room = pack.batch ? pack.batch.length - pack.batchUsed : WRITE_BATCH_BYTES;
      if (payloadAt[k] !== runEnd || runEnd - runStart + len > room) {
        this.copyRun(pack, payload, runStart, runEnd);
        runStart = runEnd = payloadAt[k];
      }
      const loc: ChunkLocation = { pack: pack.id, offset: pack.size + (runEnd - runStart), storedLength: len, codec: codecs[k] };
      if (pack.count === pack.lengths.length) growToc(pack);
      const at = pack.count * DIGEST_BYTES;
      for (let b = 0; b < DIGEST_BYTES; b++) pack.digests[at + b] = digests[d + b];
      pack.lengths[pack.count] = len;
      pack.codecs[pack.count] = codecs[k];
      pack.offsets[pack.count] = loc.offset;
      pack.count++;
      runEnd += len;
      this.table.insert(digests, loc, d);
      if (pack.size + (runEnd - runStart) >= this.targetBytes) {
        this.copyRun(pack, payload, runStart, runEnd);
        runStart = runEnd;
        this.sealOpen(); // the next chunk starts a new pack
      }
    }
    if (this.open) this.copyRun(this.open, payload, runStart, runEnd);
  }

  /** Copies payload[start, end) into the pack's write batch (one set), flushing a full batch first. */
  private copyRun(pack: OpenPack, payload: Uint8Array, start: number, end: number): void {
    if (end <= start) return;
    const n = end - start;
    if (pack.batch && pack.batchUsed + n > pack.batch.length) this.writeBuffered(pack);
    pack.batch ??= this.spareBatches.pop() ?? Buffer.allocUnsafeSlow(WRITE_BATCH_BYTES);
    pack.batch.set(payload.subarray(start, end), pack.batchUsed);
    pack.batchUsed += n;
    pack.size += n;
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
      const k = pack ? tocIndexAt(pack, hit.location.offset) : -1;
      return k >= 0 && digestsEqual(pack!.digests, k * DIGEST_BYTES, digest, 0) ? hit.location : undefined;
    }
    for (const pack of this.unindexed.values()) {
      for (let k = 0; k < pack.count; k++) {
        if (digestsEqual(pack.digests, k * DIGEST_BYTES, digest, 0)) return { pack: pack.id, offset: pack.offsets[k], storedLength: pack.lengths[k], codec: pack.codecs[k] };
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
    for (const pack of this.unindexed.values()) for (let k = 0; k < pack.count; k++) yield pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
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

  private startPack(): OpenPack {
    const id = this.nextPackId++;
    const tmpPath = path.join(this.tmpDir, `${packFileName(id)}.tmp`);
    const header = encodePackHeader(PAGE_SIZE);
    const fh = fsp.open(tmpPath, 'wx', FILE_MODE);
    const pack: OpenPack = {
      id,
      tmpPath,
      fh,
      size: PACK_HEADER_BYTES,
      crc: 0,
      count: 0,
      digests: new Uint8Array(0),
      lengths: new Uint16Array(0),
      codecs: new Uint8Array(0),
      offsets: new Uint32Array(0),
      batch: undefined,
      batchUsed: 0,
      queued: [],
      draining: false,
      writes: quiet(
        fh.then(async (h) => {
          await writeFully(h, header);
        }),
      ),
    };
    this.open = pack;
    this.unindexed.set(id, pack);
    return pack;
  }

  /** Hands the pack's buffered payloads to the writer (in order); the buffer is reused once written. */
  private writeBuffered(pack: OpenPack): void {
    const batch = pack.batch;
    const used = pack.batchUsed;
    pack.batch = undefined;
    pack.batchUsed = 0;
    if (!batch) return;
    if (used === 0) {
      this.recycle(batch);
      return;
    }
    const data = batch.subarray(0, used);
    pack.crc = crc32(data, pack.crc);
    pack.queued.push({ data, batch });
    if (!pack.draining) {
      pack.draining = true;
      pack.writes = quiet(pack.writes.then(() => this.drainWrites(pack)));
    }
  }

  /**
   * Writes queued batches until none is left. Whatever queued up while a write was in flight goes
   * out in the next single writev: a main thread busy with ingest turns its event loop only every few
   * milliseconds, and one write per turn fell behind and piled up fresh batches (docs/DESIGN.md).
   */
  private async drainWrites(pack: OpenPack): Promise<void> {
    try {
      const h = await pack.fh;
      while (pack.queued.length > 0) {
        const items = pack.queued.splice(0);
        await writevFully(h, items.map((q) => q.data));
        for (const q of items) this.recycle(q.batch);
      }
    } finally {
      pack.draining = false;
    }
  }

  private recycle(batch: Buffer): void {
    if (this.spareBatches.length < SPARE_BATCHES) this.spareBatches.push(batch);
  }

  private sealOpen(): void {
    const pack = this.open;
    if (!pack) return;
    this.open = undefined;
    this.writeBuffered(pack);
    const p = this.seal(pack).catch(async (err: unknown) => {
      await this.discard(pack, err);
    });
    const tracked = p.finally(() => this.sealing.delete(tracked));
    this.sealing.add(tracked);
  }

  private async seal(pack: OpenPack): Promise<void> {
    await pack.writes;
    const h = await pack.fh;
    const footer = encodePackFooter(pack, pack.size, pack.crc);
    await writeFully(h, footer);
    // The index batch is built while the fsync runs (CPU next to I/O); it is written only after the
    // pack is durable under its final name, as the write order requires.
    const synced = h.sync();
    synced.catch(() => undefined); // awaited below; a failure must not surface as unhandled first
    const batch = this.indexBatch(pack);
    try {
      await synced;
      await h.close();
      await fsp.rename(pack.tmpPath, path.join(this.packsDir, packFileName(pack.id)));
      await fsyncDir(this.packsDir);
    } catch (err) {
      await batch.close().catch(() => undefined);
      throw err;
    }
    await batch.write();
    this.onChunkGeneration(batch.token);
    this.unindexed.delete(pack.id);
    this.sealedLog.push(pack.id);
  }

  /** The LevelDB batch that indexes a sealed pack: its chunks, its pack record, the stats counters. */
  private indexBatch(pack: OpenPack): { write(): Promise<void>; close(): Promise<void>; token: Buffer } {
    const batch = this.db.batch();
    for (let k = 0; k < pack.count; k++) {
      const digest = pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
      batch.put(chunkKey(digest), encodeChunkValue({ pack: pack.id, offset: pack.offsets[k], storedLength: pack.lengths[k], codec: pack.codecs[k] }));
    }
    const record: PackRecord = {
      id: pack.id,
      chunks: pack.count,
      bytes: pack.size + pack.count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES,
      payloadBytes: pack.size - PACK_HEADER_BYTES,
      sealedAt: new Date().toISOString(),
    };
    batch.put(packKey(pack.id), jsonValue(record));
    addCounterDelta(batch, sealedPackDelta(record)); // stats counters, in the same batch (src/store/counters.ts)
    const token = stampChunkGeneration(batch);
    return { write: () => batch.write(), close: () => batch.close(), token };
  }

  /** A pack that failed to seal: forget its chunks everywhere and remove the temp file. */
  private async discard(pack: OpenPack, err: unknown): Promise<void> {
    this.failureEpoch++;
    this.lastFailure = fromSystemError(err, `writing pack ${packFileName(pack.id)}`);
    this.unindexed.delete(pack.id);
    for (let k = 0; k < pack.count; k++) {
      const digest = pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
      if (this.table.get(digest)?.location.pack === pack.id) this.table.remove(digest);
    }
    await pack.fh.then((h) => h.close()).catch(() => undefined);
    await fsp.rm(pack.tmpPath, { force: true }).catch(() => undefined);
    // Renamed but its index batch failed: nothing may use it (every session that saw its chunks fails
    // on the bumped epoch), and left in packs/ it would hold the space until recovery indexed it.
    await fsp.rm(path.join(this.packsDir, packFileName(pack.id)), { force: true }).catch(() => undefined);
  }
}

/**
 * Marks a pack's write chain as handled: its failure is reported when the seal awaits it, and a
 * failure met before that (a full disk while batches are still queued) must not end the process as
 * an unhandled rejection. Returns the same promise.
 */
function quiet(p: Promise<void>): Promise<void> {
  p.catch(() => undefined);
  return p;
}

/** TOC index of the chunk at `offset` in an unindexed pack (offsets ascend), or -1. */
function tocIndexAt(pack: OpenPack, offset: number): number {
  return indexOfSorted(pack.offsets, offset, pack.count);
}


/** Doubles the table-of-contents columns of an open pack. */
function growToc(pack: OpenPack): void {
  const cap = Math.max(1024, pack.lengths.length * 2);
  const digests = new Uint8Array(cap * DIGEST_BYTES);
  digests.set(pack.digests);
  const lengths = new Uint16Array(cap);
  lengths.set(pack.lengths);
  const codecs = new Uint8Array(cap);
  codecs.set(pack.codecs);
  const offsets = new Uint32Array(cap);
  offsets.set(pack.offsets);
  pack.digests = digests;
  pack.lengths = lengths;
  pack.codecs = codecs;
  pack.offsets = offsets;
}
