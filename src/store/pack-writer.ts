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
import { PAGE_SIZE } from '../format/pages.js';
import type { ChunkLocation, ChunkTable } from '../index/chunk-table.js';
import { fsyncDir, FILE_MODE, writeFully } from '../util/durable.js';
import { fromSystemError } from '../util/errors.js';
import { chunkKey, encodeChunkValue, jsonValue, packKey, stampChunkGeneration, type PackRecord, type StoreDb } from './db.js';
import { addCounterDelta, sealedPackDelta } from '../maintenance/counters.js';

export const DEFAULT_PACK_TARGET_BYTES = 32 * 1024 * 1024;
const WRITE_BATCH_BYTES = 4 * 1024 * 1024;

interface OpenPack {
  id: number;
  tmpPath: string;
  fh: Promise<FileHandle>;
  size: number; // bytes appended so far, header included
  crc: number; // running CRC32 of the payload region
  entries: { digest: Uint8Array; storedLength: number; codec: number }[];
  buffered: Uint8Array[];
  bufferedBytes: number;
  writes: Promise<void>;
}

export class PackWriter {
  private open: OpenPack | undefined;
  private sealing = new Set<Promise<void>>();
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

  /** Queues a chunk for the open pack and returns where it will live. */
  append(digest: Uint8Array, payload: Uint8Array, codec: number): ChunkLocation {
    if (payload.length < 1 || payload.length > PAGE_SIZE) throw new RangeError(`payload length ${payload.length}`);
    const pack = this.open ?? this.startPack();
    const loc: ChunkLocation = { pack: pack.id, offset: pack.size, storedLength: payload.length, codec };
    const d = Uint8Array.from(digest);
    pack.entries.push({ digest: d, storedLength: payload.length, codec });
    pack.buffered.push(payload);
    pack.bufferedBytes += payload.length;
    pack.size += payload.length;
    pack.crc = crc32(payload, pack.crc);
    this.openEntries.set(Buffer.from(d).toString('latin1'), loc);
    this.table.insert(d, loc);
    if (pack.bufferedBytes >= WRITE_BATCH_BYTES) this.writeBuffered(pack);
    if (pack.size >= this.targetBytes) this.sealOpen();
    return loc;
  }

  /** Seals the open pack (if any) and waits until every pack appended so far is durable and indexed. */
  async flush(): Promise<void> {
    if (this.open && this.open.entries.length > 0) this.sealOpen();
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
      entries: [],
      buffered: [],
      bufferedBytes: 0,
      writes: fh.then(async (h) => {
        await writeFully(h, header);
      }),
    };
    this.open = pack;
    return pack;
  }

  private writeBuffered(pack: OpenPack): void {
    if (pack.bufferedBytes === 0) return;
    const data = Buffer.concat(pack.buffered, pack.bufferedBytes);
    pack.buffered = [];
    pack.bufferedBytes = 0;
    pack.writes = pack.writes.then(async () => {
      const h = await pack.fh;
      await writeFully(h, data);
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
    const footer = encodePackFooter(pack.entries, pack.size, pack.crc);
    await writeFully(h, footer);
    await h.sync();
    await h.close();
    const finalPath = path.join(this.packsDir, packFileName(pack.id));
    await fsp.rename(pack.tmpPath, finalPath);
    await fsyncDir(this.packsDir);
    const batch = this.db.batch();
    let offset = PACK_HEADER_BYTES;
    for (const e of pack.entries) {
      batch.put(chunkKey(e.digest), encodeChunkValue({ pack: pack.id, offset, storedLength: e.storedLength, codec: e.codec }));
      offset += e.storedLength;
    }
    const record: PackRecord = {
      id: pack.id,
      chunks: pack.entries.length,
      bytes: pack.size + pack.entries.length * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES,
      payloadBytes: pack.size - PACK_HEADER_BYTES,
      sealedAt: new Date().toISOString(),
    };
    batch.put(packKey(pack.id), jsonValue(record));
    addCounterDelta(batch, sealedPackDelta(record)); // stats counters, in the same batch (src/maintenance/counters.ts)
    const token = stampChunkGeneration(batch);
    await batch.write();
    this.onChunkGeneration(token);
    for (const e of pack.entries) this.openEntries.delete(Buffer.from(e.digest).toString('latin1'));
  }

  /** A pack that failed to seal: forget its chunks everywhere and remove the temp file. */
  private async discard(pack: OpenPack, err: unknown): Promise<void> {
    this.failureEpoch++;
    this.lastFailure = fromSystemError(err, `writing pack ${packFileName(pack.id)}`);
    for (const e of pack.entries) {
      const key = Buffer.from(e.digest).toString('latin1');
      const loc = this.openEntries.get(key);
      if (loc && loc.pack === pack.id) {
        this.openEntries.delete(key);
        this.table.remove(e.digest);
      }
    }
    await pack.fh.then((h) => h.close()).catch(() => undefined);
    await fsp.rm(pack.tmpPath, { force: true }).catch(() => undefined);
  }
}
