/**
 * stats on a format-3 store: the chunk and pack figures come from the packs themselves (their TOCs and
 * file sizes), since a pack's seal writes nothing to LevelDB there. What is not payload is the packs'
 * headers, TOCs and trailers, the manifests and db/ (docs/FORMAT.md, "Store format 3"). --exact and
 * --detail read the version-2 manifests (numbers) and the TOCs, as stats.ts reads digests and `c` entries.
 */
import { promises as fsp } from 'node:fs';
import { PACK_HEADER_BYTES, storedShare } from '../format/pack.js';
import { NUMBERED_TOC_ENTRY_BYTES, metaCodec, metaMember, metaPages, metaStoredLength } from '../format/pack-v3.js';
import { PageKind } from '../format/pages.js';
import { zeroCounters, type StoreCounters } from '../store/counters.js';
import type { SnapshotRecord } from '../store/db.js';
import { NumberedManifestLoader } from '../store/manifest-loader-v3.js';
import { storePaths } from '../store/paths.js';
import type { Store } from '../store/store.js';
import { markLiveNumbers, NumberedManifests } from './live-v3.js';
import { numberedView } from './numbered-store.js';
import { SharingTally, type SharingResult } from './stats-sharing.js';
import { addCatalogCounts } from './stats-catalog.js';

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

/** The counters recounted on format 3: the catalog's figures from the manifests (v2) and kept bases, the rest from `chunks`. */
export async function numberedRecount(store: Store, records: SnapshotRecord[], chunks: ChunkCounters): Promise<StoreCounters> {
  const c: StoreCounters = { ...zeroCounters(), ...chunks };
  const loader = new NumberedManifestLoader((id) => store.manifestPath(id), store.numbered!, store.packs, 12);
  await addCatalogCounts(
    c,
    records,
    store.db,
    (id) => store.manifestPath(id),
    async (id) => {
      const m = await loader.load(id);
      const zeroPages = m.numbers.kinds.reduce((n, k) => n + (k === PageKind.Zero ? 1 : 0), 0);
      return { byteLength: m.header.byteLength, pageCount: m.numbers.pageCount, zeroPages, fileBytes: m.fileBytes };
    },
  );
  return c;
}

/**
 * `stats --detail` on format 3: who references which chunk from the committed manifests (numbers),
 * each chunk's stored share and table cost from the packs' TOCs, and as garbage the chunks of indexed
 * packs that nothing live (committed, held, prepared, open sessions) names.
 */
export async function numberedDetail(
  store: Store,
  records: SnapshotRecord[],
  vmNames: string[],
): Promise<{ sharing: SharingResult; garbageChunks: number; garbageBytes: number }> {
  const vmIndex = new Map(vmNames.map((v, i) => [v, i]));
  const tally = new SharingTally(records.length, vmNames.length);
  // One read of each manifest: the live marking loads every committed one, the tally takes them from its cache.
  const manifests = new NumberedManifests(storePaths(store.dir).manifests);
  const view = numberedView(store);
  const { live } = await markLiveNumbers(store.dir, store.db, (into) => view.inFlightNumbers(into), manifests);
  for (let si = 0; si < records.length; si++) {
    const vi = vmIndex.get(records[si].vm)!;
    const { kinds, numbers, pageCount } = (await manifests.load(records[si].id)).pages;
    for (let i = 0; i < pageCount; i++) if (kinds[i] === PageKind.Digest) tally.see(numbers[i], si, vi);
  }
  const stored = new Map<number, number>();
  let garbageChunks = 0;
  let garbageBytes = 0;
  for (const pack of store.numbered!.index.packIds) {
    const { toc } = await store.packs.readTocV3(pack);
    let k = 0;
    for (let r = 0; r < toc.runStarts.length; r++) {
      for (let j = 0; j < toc.runLengths[r]; j++, k++) {
        const n = toc.runStarts[r] + j;
        const m = toc.metas[k];
        const share = storedShare({ storedLength: metaStoredLength(m), codec: metaCodec(m), member: metaMember(m), pages: metaPages(m) });
        if (tally.referenced(n))
          stored.set(n, share + NUMBERED_TOC_ENTRY_BYTES); // and its TOC entry, as gc counts it
        else if (!live.has(n)) {
          garbageChunks++;
          garbageBytes += share;
        }
      }
    }
  }
  return { sharing: tally.result((n) => stored.get(n)), garbageChunks, garbageBytes };
}
