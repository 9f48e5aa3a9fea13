/**
 * stats on a format-3 store: the chunk and pack figures come from the packs themselves (their TOCs and
 * file sizes), since a pack's seal writes nothing to LevelDB there. What is not payload is the packs'
 * headers, TOCs and trailers, the manifests and db/ (docs/FORMAT.md, "Store format 3").
 */
import { promises as fsp } from 'node:fs';
import { PACK_HEADER_BYTES, storedShare } from '../format/pack.js';
import { metaCodec, metaMember, metaPages, metaStoredLength } from '../format/pack-v3.js';
import type { Store } from '../store/store.js';
import type { StoreCounters } from '../store/counters.js';

export type ChunkCounters = Pick<StoreCounters, 'chunks' | 'chunkBytes' | 'packs' | 'packBytes' | 'packPayloadBytes'>;

/** Chunks, their stored bytes, packs, pack file bytes and payload bytes of the indexed packs. */
export async function numberedChunkCounters(store: Store): Promise<ChunkCounters> {
  const c: ChunkCounters = { chunks: 0, chunkBytes: 0, packs: 0, packBytes: 0, packPayloadBytes: 0 };
  for (const pack of store.numbered!.index.packIds) {
    const { toc, tocOffset } = await store.packs.readTocV3(pack);
    const { size } = await fsp.stat(store.packs.packPath(pack));
    c.packs++;
    c.packBytes += size;
    c.packPayloadBytes += tocOffset - PACK_HEADER_BYTES;
    c.chunks += toc.count;
    for (let k = 0; k < toc.count; k++) {
      const m = toc.metas[k];
      c.chunkBytes += storedShare({ storedLength: metaStoredLength(m), codec: metaCodec(m), member: metaMember(m), pages: metaPages(m) });
    }
  }
  return c;
}
