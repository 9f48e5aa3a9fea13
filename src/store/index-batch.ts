/**
 * The one builder of LevelDB batches that change chunk index entries: a sealed pack's entries and its
 * 'p' record, entries moved or removed, old pack records removed, and, on write, a fresh chunk
 * generation token (the saved chunk table goes stale: table-file.ts). Other records of the same
 * atomic change (counter deltas, 'd' records) go through put/del.
 */
import type { ChunkLocation } from '../index/chunk-table.js';
import { DIGEST_BYTES } from '../format/pages.js';
import { chunkKey, encodeChunkValue, jsonValue, packKey, stampChunkGeneration, type PackRecord, type StoreDb } from './db.js';
import { chunkLocation, type PackChunks } from './pack-file.js';

export class IndexBatch {
  private readonly batch;

  constructor(db: StoreDb) {
    this.batch = db.batch();
  }

  /** Indexes a sealed pack: an entry per chunk (pointing into it) and its pack record. */
  addPack(record: PackRecord, chunks: PackChunks): this {
    for (let k = 0; k < chunks.count; k++) {
      const digest = chunks.digests.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
      this.batch.put(chunkKey(digest), encodeChunkValue(chunkLocation(record.id, chunks, k)));
    }
    return this.putPackRecord(record);
  }

  /** A pack record alone (its entries are added one by one, where they are not a sealed pack's columns). */
  putPackRecord(record: PackRecord): this {
    this.batch.put(packKey(record.id), jsonValue(record));
    return this;
  }

  putChunk(digest: Uint8Array, loc: ChunkLocation): this {
    this.batch.put(chunkKey(digest), encodeChunkValue(loc));
    return this;
  }

  removeChunk(digest: Uint8Array): this {
    this.batch.del(chunkKey(digest));
    return this;
  }

  removePack(id: number): this {
    this.batch.del(packKey(id));
    return this;
  }

  put(key: Buffer, value: Buffer): this {
    this.batch.put(key, value);
    return this;
  }

  del(key: Buffer): this {
    this.batch.del(key);
    return this;
  }

  /** Stamps a new chunk generation and writes the batch; returns the token. */
  async write(options: { sync?: boolean } = {}): Promise<Buffer> {
    const token = stampChunkGeneration(this.batch);
    await this.batch.write(options);
    return token;
  }

  close(): Promise<void> {
    return this.batch.close();
  }
}
