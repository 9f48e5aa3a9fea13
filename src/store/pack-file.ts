/**
 * One pack file being written, streaming: the header, then payloads handed to the file in bounded
 * batches as they arrive, then the seal. The one way packs are written (ingest, gc, repair), in the
 * rule's order (docs/FORMAT.md):
 *
 *   header, payload, table of contents, footer → fsync → rename tmp/ → packs/ → fsync packs/
 *
 * The caller indexes the sealed pack afterwards (IndexBatch.addPack): ingest at once, gc in the batch
 * that re-points the copied chunks, repair in its rebuilt index. Memory: the table of contents in
 * columns (45 B a chunk) and at most a few write batches, whatever the pack's size.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import {
  encodePackFooter,
  encodePackHeader,
  packFileName,
  CONTAINER_CODEC,
  PACK_HEADER_BYTES,
  PACK_VERSION,
  PACK_TRAILER_BYTES,
  TOC_ENTRY_BYTES,
} from '../format/pack.js';
import { encodePackFooterV3, NUMBERED_PACK_VERSIONS } from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { fsyncDir, FILE_MODE, writeFully, writevFully } from '../util/durable.js';
import type { PackRecord } from './db.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { indexOfSorted } from '../util/search.js';
import { copyBytes } from '../util/shared-bytes.js';
import { crc32OnThreadPool } from '../chunk/codec.js';

export const WRITE_BATCH_BYTES = 1024 * 1024; // small: each batch is fresh memory once per process

/**
 * Once this many bytes are written since the last one started, a datasync of the temp file starts
 * in the background (on the thread pool), so the disk writes the pack while payloads still arrive
 * and the seal's fsync finds little left to do: a consecutive snapshot's commit through the server
 * fell from 52-85 ms to 23-37 ms (bench/RESULTS.md, issue 12, session 14). Durability is unchanged:
 * the seal still fsyncs the whole file before the rename, and a failed early datasync fails the seal.
 * 4 MiB rather than 8: the seal waits for the datasync in flight, which on this VM's disk takes
 * ~0.7 ms a MiB it covers, and the commit's median fell ~6 ms (session 17); a first snapshot's
 * twice as many datasyncs showed no cost.
 */
export const EARLY_SYNC_BYTES = 4 * 1024 * 1024;

/**
 * Write batches kept for reuse: fresh memory costs a page fault per 4 KiB (docs/DESIGN.md). The
 * writer runs behind the main thread while the page cache takes fresh pages, so a few more than 4
 * batches come back at once: with 4 kept, a 10% dirty-list snapshot through the server took 6
 * fresh batches (6 MiB of first touches on the main thread); with 32 kept, a whole bench run took 5
 * in all (bench/RESULTS.md, issue 12, session 14). Unused spares cost nothing but their memory.
 */
export class BatchPool {
  private readonly spare: Buffer[] = [];
  constructor(private readonly keep = 16) {}
  take(): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(WRITE_BATCH_BYTES);
  }
  give(batch: Buffer): void {
    if (this.spare.length < this.keep) this.spare.push(batch);
  }
}

/**
 * A pack's chunks in columns: chunk k is digests[k*32 ..+32] at offsets[k], lengths[k] bytes; a page
 * in a container (codec 2) is member members[k] of the frame at offsets[k].
 */
export interface PackChunks {
  count: number;
  digests: Uint8Array;
  offsets: ArrayLike<number>;
  lengths: ArrayLike<number>;
  codecs: ArrayLike<number>;
  members?: ArrayLike<number>;
  /** Pages of the container of each container page (codec 2). */
  containerPages?: ArrayLike<number>;
}

/** Where chunk k of a pack's columns lies (its member too when it is in a container). */
export function chunkLocation(pack: number, chunks: PackChunks, k: number): ChunkLocation {
  const loc: ChunkLocation = { pack, offset: chunks.offsets[k], storedLength: chunks.lengths[k], codec: chunks.codecs[k] };
  if (loc.codec === CONTAINER_CODEC) {
    loc.member = chunks.members ? chunks.members[k] : 0;
    loc.pages = chunks.containerPages ? chunks.containerPages[k] : 1;
  }
  return loc;
}

/** A pack durable under its final name, not yet indexed: what IndexBatch.addPack takes. */
export interface SealedPack {
  record: PackRecord;
  chunks: PackChunks;
}

export class PackFile {
  /** Bytes appended so far, header included (the next chunk's offset). */
  size = PACK_HEADER_BYTES;
  /** The table of contents in columns (one object per chunk made the GC a main-thread cost). */
  count = 0;
  digests = new Uint8Array(0);
  lengths = new Uint16Array(0);
  codecs = new Uint8Array(0);
  members = new Uint8Array(0);
  containerPages = new Uint8Array(0);
  offsets = new Uint32Array(0); // ascending (a container's pages share theirs)
  /** Chunk numbers (a version-3 pack only; strictly increasing). */
  numbers = new Float64Array(0);
  private crc = 0; // running CRC32 of the payload handed to writes so far
  /** With thread-pool checksums: the running CRC32 once the last batch handed over is summed. */
  private crcChain: Promise<number> | undefined;
  private batch: Buffer | undefined; // payloads not yet handed to a write
  private batchUsed = 0;
  /**
   * Bytes waiting for the writer, written together, in order, by one writev: full batches, and runs
   * written from where they are (lendRun), each released once written.
   */
  private queued: { data: Uint8Array; batch?: Buffer; release?: () => void; summed?: Promise<number> }[] = [];
  private draining = false;
  /** Bytes written since the last early datasync started (EARLY_SYNC_BYTES), and that one while in flight. */
  private unsynced = 0;
  private earlySync: Promise<void> | undefined;
  private readonly fh: Promise<FileHandle>;
  /** Settles when every batch handed over so far is written (rejects on the first failed write). */
  private writes: Promise<void>;
  readonly tmpPath: string;

  constructor(
    readonly id: number,
    tmpDir: string,
    private readonly batches: BatchPool,
    /**
     * PACK_VERSION_CONTAINERS for a pack that may hold zstd containers (compact, gc copying them);
     * PACK_VERSION_PREFIXED (store format 3) for a pack of numbered chunks, any codec (PACK_VERSION_NUMBERED,
     * the older numbered version, for tests of stores that hold both).
     */
    readonly version = PACK_VERSION,
  ) {
    this.tmpPath = path.join(tmpDir, `${packFileName(id)}.tmp`);
    this.fh = fsp.open(this.tmpPath, 'wx', FILE_MODE);
    this.writes = quiet(this.fh.then((h) => writeFully(h, encodePackHeader(PAGE_SIZE, version))));
  }

  /** Whether this pack's chunks carry numbers (versions 3 and 4). */
  get numbered(): boolean {
    return NUMBERED_PACK_VERSIONS.includes(this.version);
  }

  /** Room left in the current write batch (a whole new batch when there is none). */
  get batchRoom(): number {
    return this.batch ? this.batch.length - this.batchUsed : WRITE_BATCH_BYTES;
  }

  /**
   * Records chunk `digests[digestAt ..+32]` of `length` bytes at the pack's current end plus `skip`
   * (payload bytes the caller hands over later, with copyRun or lendRun); returns its offset. A version-3 pack needs
   * the chunk's `number`.
   */
  addEntry(digests: Uint8Array, digestAt: number, length: number, codec: number, skip = 0, number?: number): number {
    if (length < 1 || length > PAGE_SIZE) throw new RangeError(`payload length ${length}`);
    if (digestAt + DIGEST_BYTES > digests.length) throw new RangeError('digest out of range');
    if (this.count === this.lengths.length) this.growToc();
    const offset = this.size + skip;
    const k = this.count++;
    this.numbers[k] = this.checkedNumber(number, k);
    const at = k * DIGEST_BYTES;
    for (let b = 0; b < DIGEST_BYTES; b++) this.digests[at + b] = digests[digestAt + b];
    this.lengths[k] = length;
    this.codecs[k] = codec;
    this.offsets[k] = offset;
    return offset;
  }

  /**
   * One zstd container: an entry per page (digests[k*32..] for member k, in the frame's page order),
   * then the frame's bytes once. A v2 or v3 pack only (v3: `numbers` gives member k's number); the
   * frame must fit the TOC's u16 length.
   */
  appendContainer(digests: Uint8Array, pages: number, frame: Uint8Array, numbers?: ArrayLike<number>): number {
    if (this.version === PACK_VERSION) throw new RangeError('containers need a version 2 or 3 pack');
    if (frame.length < 1 || frame.length > 0xffff) throw new RangeError(`container frame length ${frame.length}`);
    if (pages < 1 || pages > 16 || digests.length < pages * DIGEST_BYTES) throw new RangeError(`container of ${pages} pages`);
    const offset = this.size;
    for (let m = 0; m < pages; m++) {
      if (this.count === this.lengths.length) this.growToc();
      const k = this.count++;
      this.numbers[k] = this.checkedNumber(numbers?.[m], k);
      this.digests.set(digests.subarray(m * DIGEST_BYTES, (m + 1) * DIGEST_BYTES), k * DIGEST_BYTES);
      this.lengths[k] = frame.length;
      this.codecs[k] = CONTAINER_CODEC;
      this.members[k] = m;
      this.containerPages[k] = pages;
      this.offsets[k] = offset;
    }
    this.copyRun(frame, 0, frame.length);
    return offset;
  }

  /** One chunk: its entry and its bytes (and, in a version-3 pack, its number). */
  append(digest: Uint8Array, payload: Uint8Array, codec: number, number?: number): number {
    if (digest.length !== DIGEST_BYTES) throw new RangeError('digest must be 32 bytes');
    const offset = this.addEntry(digest, 0, payload.length, codec, 0, number);
    this.copyRun(payload, 0, payload.length);
    return offset;
  }

  /** Copies payload[start, end) to the pack's end through the write batch, flushing a full batch first. */
  copyRun(payload: Uint8Array, start: number, end: number): void {
    if (end <= start) return;
    const n = end - start;
    if (this.batch && this.batchUsed + n > this.batch.length) this.writeBuffered();
    this.batch ??= this.batches.take();
    if (n > this.batch.length) throw new RangeError(`run of ${n} bytes exceeds a write batch`);
    // Not batch.set: payloads come from a shared slab at any offset (src/util/shared-bytes.ts).
    copyBytes(this.batch, payload.subarray(start, end), this.batchUsed);
    this.batchUsed += n;
    this.size += n;
  }

  /**
   * Queues payload[start, end) to be written from where it is, after every byte before it: a long
   * run out of a page job's payload slab, which copyRun would copy into a batch first (~11 ms of the
   * server's main thread per 256 MiB first snapshot; bench/RESULTS.md, issue 12, session 20).
   * `release` is called once, when the bytes are written; never if the write fails (the pack is lost then).
   */
  lendRun(payload: Uint8Array, start: number, end: number, release: () => void): void {
    this.writeBuffered(); // the bytes before it go first
    this.size += end - start;
    this.queueWrite(payload.subarray(start, end), undefined, release);
  }

  /** Settles once every byte handed over so far is written (rejects if a write failed). */
  written(): Promise<void> {
    this.writeBuffered();
    return this.writes;
  }

  /** Hands the buffered payloads to the writer (in order); the batch is reused once written. */
  writeBuffered(): void {
    const batch = this.batch;
    const used = this.batchUsed;
    this.batch = undefined;
    this.batchUsed = 0;
    if (!batch) return;
    if (used === 0) {
      this.batches.give(batch);
      return;
    }
    this.queueWrite(batch.subarray(0, used), batch);
  }

  /** Hands `data` to the writer (in order): `batch` is reused, `release` called, once it is written. */
  private queueWrite(data: Uint8Array, batch?: Buffer, release?: () => void): void {
    // The payload's checksum: on the thread pool where the addon serves (~30 ms of a first snapshot's
    // main thread through the server), one write after the other; else here.
    let summed: Promise<number> | undefined;
    const sum = threadPoolCrc();
    if (sum) {
      summed = quiet((this.crcChain ?? Promise.resolve(this.crc)).then((crc) => sum(data, crc)));
      this.crcChain = summed;
    } else this.crc = crc32(data, this.crc);
    this.queued.push({ data, batch, release, summed });
    if (!this.draining) {
      this.draining = true;
      this.writes = quiet(this.writes.then(() => this.drainWrites()));
    }
  }

  /**
   * Writes queued batches until none is left. Whatever queued up while a write was in flight goes
   * out in the next single writev: a main thread busy with ingest turns its event loop only every few
   * milliseconds, and one write per turn fell behind and piled up fresh batches (docs/DESIGN.md).
   */
  private async drainWrites(): Promise<void> {
    try {
      const h = await this.fh;
      while (this.queued.length > 0) {
        const items = this.queued.splice(0);
        await writevFully(
          h,
          items.map((q) => q.data),
        );
        for (const q of items) {
          this.unsynced += q.data.length;
          if (q.summed) await q.summed; // its checksum reads the bytes too (a failure fails the writes)
          if (q.batch) this.batches.give(q.batch);
          q.release?.();
        }
        if (this.unsynced >= EARLY_SYNC_BYTES && !this.earlySync) this.startEarlySync(h);
      }
    } finally {
      this.draining = false;
    }
  }

  /** Starts a background datasync; the seal awaits the one in flight (a failure fails the seal). */
  private startEarlySync(h: FileHandle): void {
    this.unsynced = 0;
    const started = h.datasync();
    this.earlySync = started;
    started.then(
      () => {
        if (this.earlySync === started) this.earlySync = undefined;
      },
      () => undefined, // kept in earlySync: the seal awaits it and fails
    );
  }

  /** The TOC and trailer the seal writes. */
  private footer(): Buffer {
    if (!this.numbered) return encodePackFooter(this, this.size, this.crc);
    return encodePackFooterV3(this, this.size, this.crc, this.version);
  }

  /**
   * The pack record the seal produces (exact: before version 3 the footer's size follows from the
   * chunk count; a version-3 footer's is passed by the seal).
   */
  record(footerBytes = this.count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES): PackRecord {
    return {
      id: this.id,
      chunks: this.count,
      bytes: this.size + footerBytes,
      payloadBytes: this.size - PACK_HEADER_BYTES,
      sealedAt: new Date().toISOString(),
    };
  }

  /**
   * Footer, fsync, rename into `packsDir`, fsync of the directory. `whileSyncing` runs while the
   * fsync is in flight (ingest builds its index batch there: CPU next to I/O). On failure the temp
   * file is left to discard().
   */
  async seal<T>(packsDir: string, whileSyncing: (sealed: SealedPack) => T): Promise<{ sealed: SealedPack; during: T }> {
    await this.written();
    if (this.crcChain) this.crc = await this.crcChain;
    const h = await this.fh;
    const footer = this.footer();
    await writeFully(h, footer);
    // The fsync starts beside an early datasync still in flight, not after it: both wait on the same
    // writeback, and the seal ends at the later of the two (a failure of either fails it).
    const early = this.earlySync;
    const synced = h.sync();
    synced.catch(() => undefined); // awaited below; a failure must not surface as unhandled first
    const sealed: SealedPack = { record: this.record(footer.length), chunks: this };
    const during = whileSyncing(sealed);
    await synced;
    if (early) await early;
    await h.close();
    await fsp.rename(this.tmpPath, path.join(packsDir, packFileName(this.id)));
    await fsyncDir(packsDir);
    return { sealed, during };
  }

  /** Removes what a failed pack left: the temp file, and the final file if the rename happened. */
  async discard(packsDir: string): Promise<void> {
    await this.fh.then((h) => h.close()).catch(() => undefined);
    await fsp.rm(this.tmpPath, { force: true }).catch(() => undefined);
    await fsp.rm(path.join(packsDir, packFileName(this.id)), { force: true }).catch(() => undefined);
  }

  /** Index of the chunk at `offset` (offsets ascend), or -1. */
  indexAt(offset: number): number {
    return indexOfSorted(this.offsets, offset, this.count);
  }

  /** A version-3 pack's entry k needs a number above its predecessor's; other versions take none. */
  private checkedNumber(number: number | undefined, k: number): number {
    if (!this.numbered) {
      if (number !== undefined) throw new RangeError(`a version-${this.version} pack has no chunk numbers`);
      return 0;
    }
    if (number === undefined || !Number.isSafeInteger(number) || (k > 0 && number <= this.numbers[k - 1])) {
      throw new RangeError(
        `chunk ${k} of pack ${this.id}: number ${String(number)} does not follow ${k > 0 ? this.numbers[k - 1] : 'nothing'}`,
      );
    }
    return number;
  }

  /** Doubles the table-of-contents columns. */
  private growToc(): void {
    const cap = Math.max(1024, this.lengths.length * 2);
    const digests = new Uint8Array(cap * DIGEST_BYTES);
    digests.set(this.digests);
    const lengths = new Uint16Array(cap);
    lengths.set(this.lengths);
    const codecs = new Uint8Array(cap);
    codecs.set(this.codecs);
    const members = new Uint8Array(cap);
    members.set(this.members);
    const containerPages = new Uint8Array(cap);
    containerPages.set(this.containerPages);
    const offsets = new Uint32Array(cap);
    offsets.set(this.offsets);
    const numbers = new Float64Array(this.numbered ? cap : 0);
    numbers.set(this.numbers);
    this.digests = digests;
    this.lengths = lengths;
    this.codecs = codecs;
    this.members = members;
    this.containerPages = containerPages;
    this.offsets = offsets;
    this.numbers = numbers;
  }
}

/**
 * Marks a pack's write chain as handled: its failure is reported when the seal awaits it, and a
 * failure met before that (a full disk while batches are still queued) must not end the process as
 * an unhandled rejection. Returns the same promise.
 */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

let threadPoolSum: ((data: Uint8Array, crc: number) => Promise<number>) | null | undefined;

/** The addon's thread-pool CRC32, or null without it (looked up once, when a pack first needs it). */
function threadPoolCrc(): ((data: Uint8Array, crc: number) => Promise<number>) | null {
  if (threadPoolSum === undefined) threadPoolSum = crc32OnThreadPool() ?? null;
  return threadPoolSum;
}
