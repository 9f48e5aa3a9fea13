/**
 * Appends new chunks to the open pack and seals packs in the rule's order:
 *   temp file → fsync → rename into packs/ → fsync packs/ → index entries + pack record (LevelDB).
 * Chunks are visible to dedup (chunk table, openEntries) from the moment they are appended; a commit
 * calls flush(), so a snapshot only ever references chunks in sealed, indexed packs.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { encodePackFooter, encodePackHeader, packFileName, PACK_HEADER_BYTES, TOC_ENTRY_BYTES, PACK_TRAILER_BYTES } from '../format/pack.js';
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import type { ChunkLocation, ChunkTable } from '../index/chunk-table.js';
import { fsyncDir, FILE_MODE, writeFully } from '../util/durable.js';
import { fromSystemError } from '../util/errors.js';
import { chunkKey, encodeChunkValue, jsonValue, packKey, stampChunkGeneration, type PackRecord, type StoreDb } from './db.js';
import { addCounterDelta, sealedPackDelta } from '../maintenance/counters.js';

export const DEFAULT_PACK_TARGET_BYTES = 32 * 1024 * 1024;
const WRITE_BATCH_BYTES = 4 * 1024 * 1024;
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
  batch: Buffer | undefined; // payloads not yet handed to a write
  batchUsed: number;
  writes: Promise<void>;
}

export class PackWriter {
  private open: OpenPack | undefined;
  private sealing = new Set<Promise<void>>();
  private spareBatches: Buffer[] = [];
  /** Exact digest → location of chunks not yet in LevelDB (open or sealing packs). */
  readonly openEntries = new Map<string, ChunkLocation>();
  /** Bumped on every failed pack: sessions that began before a failure must not commit. */
  failureEpoch = 0;
  lastFailure: Error | undefined;

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

  /** Queues a chunk for the open pack (its bytes are copied) and returns where it will live. */
  append(digest: Uint8Array, payload: Uint8Array, codec: number): ChunkLocation {
    if (payload.length < 1 || payload.length > PAGE_SIZE) throw new RangeError(`payload length ${payload.length}`);
    if (digest.length !== DIGEST_BYTES) throw new RangeError('digest must be 32 bytes');
    const pack = this.open ?? this.startPack();
    const loc: ChunkLocation = { pack: pack.id, offset: pack.size, storedLength: payload.length, codec };
    if (pack.count === pack.lengths.length) growToc(pack);
    pack.digests.set(digest, pack.count * DIGEST_BYTES);
    pack.lengths[pack.count] = payload.length;
    pack.codecs[pack.count] = codec;
    pack.count++;
    if (pack.batch && pack.batchUsed + payload.length > pack.batch.length) this.writeBuffered(pack);
    pack.batch ??= this.spareBatches.pop() ?? Buffer.allocUnsafeSlow(WRITE_BATCH_BYTES);
    pack.batch.set(payload, pack.batchUsed);
    pack.batchUsed += payload.length;
    pack.size += payload.length;
    this.openEntries.set(digestKey(digest), loc);
    this.table.insert(digest, loc);
    if (pack.size >= this.targetBytes) this.sealOpen();
    return loc;
  }

  /** Seals the open pack (if any) and waits until every pack appended so far is durable and indexed. */
  async flush(): Promise<void> {
    if (this.open && this.open.count > 0) this.sealOpen();
    while (this.sealing.size > 0) {
      await Promise.allSettled([...this.sealing]);
    }
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
      batch: undefined,
      batchUsed: 0,
      writes: fh.then(async (h) => {
        await writeFully(h, header);
      }),
    };
    this.open = pack;
    return pack;
  }

  /** Hands the pack's buffered payloads to a write (in order); the buffer is reused once written. */
  private writeBuffered(pack: OpenPack): void {
    const batch = pack.batch;
    const used = pack.batchUsed;
    pack.batch = undefined;
    pack.batchUsed = 0;
    if (!batch) return;
    if (used === 0) {
      this.spareBatches.push(batch);
      return;
    }
    const data = batch.subarray(0, used);
    pack.crc = crc32(data, pack.crc);
    pack.writes = pack.writes
      .then(async () => {
        const h = await pack.fh;
        await writeFully(h, data);
      })
      .finally(() => {
        if (this.spareBatches.length < SPARE_BATCHES) this.spareBatches.push(batch);
      });
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
    await h.sync();
    await h.close();
    const finalPath = path.join(this.packsDir, packFileName(pack.id));
    await fsp.rename(pack.tmpPath, finalPath);
    await fsyncDir(this.packsDir);
    const batch = this.db.batch();
    let offset = PACK_HEADER_BYTES;
    for (let k = 0; k < pack.count; k++) {
      const digest = pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
      batch.put(chunkKey(digest), encodeChunkValue({ pack: pack.id, offset, storedLength: pack.lengths[k], codec: pack.codecs[k] }));
      offset += pack.lengths[k];
    }
    const record: PackRecord = {
      id: pack.id,
      chunks: pack.count,
      bytes: pack.size + pack.count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES,
      payloadBytes: pack.size - PACK_HEADER_BYTES,
      sealedAt: new Date().toISOString(),
    };
    batch.put(packKey(pack.id), jsonValue(record));
    addCounterDelta(batch, sealedPackDelta(record)); // stats counters, in the same batch (src/maintenance/counters.ts)
    const token = stampChunkGeneration(batch);
    await batch.write();
    this.onChunkGeneration(token);
    for (let k = 0; k < pack.count; k++) this.openEntries.delete(digestKey(pack.digests, k * DIGEST_BYTES));
  }

  /** A pack that failed to seal: forget its chunks everywhere and remove the temp file. */
  private async discard(pack: OpenPack, err: unknown): Promise<void> {
    this.failureEpoch++;
    this.lastFailure = fromSystemError(err, `writing pack ${packFileName(pack.id)}`);
    for (let k = 0; k < pack.count; k++) {
      const key = digestKey(pack.digests, k * DIGEST_BYTES);
      const loc = this.openEntries.get(key);
      if (loc && loc.pack === pack.id) {
        this.openEntries.delete(key);
        this.table.remove(pack.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES));
      }
    }
    await pack.fh.then((h) => h.close()).catch(() => undefined);
    await fsp.rm(pack.tmpPath, { force: true }).catch(() => undefined);
  }
}

/** The openEntries key of a digest (its 32 bytes as a latin1 string; no copy of the bytes first). */
export function digestKey(digests: Uint8Array, offset = 0): string {
  return Buffer.from(digests.buffer, digests.byteOffset + offset, DIGEST_BYTES).toString('latin1');
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
  pack.digests = digests;
  pack.lengths = lengths;
  pack.codecs = codecs;
}
