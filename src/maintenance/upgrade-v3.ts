/**
 * The data half of `vnstore upgrade` (store format 1/2 → 3; docs/FORMAT.md, "Upgrade"): every chunk
 * the old index holds is copied, with a number, into version-3 packs, and every manifest re-encoded
 * as version 2 against the same base. It reads the old store through its own readers and writes only
 * under the directories it is given (the upgrade's `upgrade/` tree), so a kill at any point leaves
 * the old store as it was. Not yet here: the catalog copy, the flip of vnstore.json and the swap
 * (docs/FORMAT3-STATUS.md).
 */
import path from 'node:path';
import { getCodec } from '../chunk/codec.js';
import { decodeContainer } from '../chunk/container.js';
import { encodeManifestV2, NumberedPages } from '../format/manifest-v2.js';
import { CONTAINER_CODEC, MAX_CONTAINER_PAGES, PACK_HEADER_BYTES } from '../format/pack.js';
import { PACK_VERSION_PREFIXED } from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind } from '../format/pages.js';
import { scanChunkIndex } from '../store/db.js';
import { BatchPool, PackFile } from '../store/pack-file.js';
import type { Store } from '../store/store.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { ensurePrivateDir, writeFileDurable } from '../util/durable.js';
import { CorruptError } from '../util/errors.js';

/** Where the converted store's parts go. */
export interface V3Target {
  packs: string;
  manifests: string;
  /** Temp files (open packs, manifests being written). */
  tmp: string;
  /** Seal an output pack at this many payload bytes (the ingest default: 32 MiB). */
  packTargetBytes?: number;
  /** Called after each old pack is copied: chunks copied so far, of all indexed chunks. */
  onProgress?: (doneChunks: number, totalChunks: number) => void;
}

export interface ChunkConversion {
  /** Digest (hex) → its number. */
  numberOf: Map<string, number>;
  nextNumber: number;
  packIds: number[];
  /** Containers some of whose pages the old index no longer held: their live pages were stored singly. */
  splitContainers: number;
  /** Payload bytes written (every chunk's stored share: nothing dead is copied). */
  chunkBytes: number;
}

interface OldChunk {
  digest: Buffer;
  loc: ChunkLocation;
}

/**
 * Copies every indexed chunk into version-3 packs, numbered from 0 in (pack, offset, member) order:
 * per-page payloads and whole containers as they are (no recompression); a container the index holds
 * only some pages of is decoded and its live pages stored as LZ4 pages (the next compact re-packs
 * them), because a version-3 item names every page of its frame.
 */
export async function convertChunks(store: Store, target: V3Target): Promise<ChunkConversion> {
  const chunks: OldChunk[] = [];
  await scanChunkIndex(store.db, (key, loc) => {
    if (!loc) throw new CorruptError(`chunk index entry ${key.subarray(1).toString('hex')} is damaged; run 'vnstore check' first`);
    chunks.push({ digest: Buffer.from(key.subarray(1)), loc });
  });
  chunks.sort((a, b) => a.loc.pack - b.loc.pack || a.loc.offset - b.loc.offset || (a.loc.member ?? 0) - (b.loc.member ?? 0));
  await ensurePrivateDir(target.packs);
  await ensurePrivateDir(target.tmp);
  const out: ChunkConversion = { numberOf: new Map(), nextNumber: 0, packIds: [], splitContainers: 0, chunkBytes: 0 };
  const targetBytes = target.packTargetBytes ?? 32 * 1024 * 1024;
  const batches = new BatchPool(2);
  let pack: PackFile | undefined;
  const seal = async () => {
    if (!pack || pack.count === 0) return;
    out.chunkBytes += pack.size - PACK_HEADER_BYTES;
    await pack.seal(target.packs, () => undefined);
    out.packIds.push(pack.id);
    pack = undefined;
  };
  const room = async () => {
    if (pack && pack.size >= targetBytes) await seal();
    pack ??= new PackFile(out.packIds.length + 1, target.tmp, batches, PACK_VERSION_PREFIXED);
    return pack;
  };
  const numbered = (digest: Buffer) => {
    const n = out.nextNumber++;
    out.numberOf.set(digest.toString('hex'), n);
    return n;
  };
  const page = new Uint8Array(MAX_CONTAINER_PAGES * PAGE_SIZE);
  let i = 0;
  while (i < chunks.length) {
    const packId = chunks[i].loc.pack;
    let j = i;
    while (j < chunks.length && chunks[j].loc.pack === packId) j++;
    const { data } = await store.packs.readWhole(packId);
    for (let k = i; k < j;) {
      const { loc } = chunks[k];
      const payload = data.subarray(loc.offset, loc.offset + loc.storedLength);
      if (loc.codec !== CONTAINER_CODEC) {
        (await room()).append(chunks[k].digest, payload, loc.codec, numbered(chunks[k].digest));
        k++;
        continue;
      }
      let e = k;
      while (e < j && chunks[e].loc.offset === loc.offset) e++;
      const pages = loc.pages ?? 1;
      if (e - k === pages) {
        const digests = Buffer.concat(chunks.slice(k, e).map((c) => c.digest));
        const numbers = chunks.slice(k, e).map((c) => numbered(c.digest));
        (await room()).appendContainer(digests, pages, payload, numbers);
      } else {
        out.splitContainers++;
        decodeContainer(payload, page);
        for (let m = k; m < e; m++) {
          const at = (chunks[m].loc.member ?? 0) * PAGE_SIZE;
          const z = getCodec().compressPages(page.subarray(at, at + PAGE_SIZE), [0]);
          (await room()).append(chunks[m].digest, z.payload.subarray(0, z.lengths[0]), z.codecs[0], numbered(chunks[m].digest));
        }
      }
      k = e;
    }
    i = j;
    target.onProgress?.(i, chunks.length);
  }
  await seal();
  return out;
}

/**
 * Re-encodes the manifests of `ids` (committed, kept and held snapshots) as version 2, each against
 * its old base, bases first; returns each manifest's new size in bytes.
 */
export async function convertManifests(
  store: Store,
  ids: readonly string[],
  numberOf: ReadonlyMap<string, number>,
  target: V3Target,
): Promise<Map<string, number>> {
  await ensurePrivateDir(target.manifests);
  await ensurePrivateDir(target.tmp);
  const done = new Map<string, NumberedPages>();
  const sizes = new Map<string, number>();
  const convert = async (id: string): Promise<NumberedPages> => {
    const hit = done.get(id);
    if (hit) return hit;
    const header = await store.readManifestHeader(id);
    const base = header.baseId === undefined ? undefined : await convert(header.baseId);
    const old = await store.loadPages(id);
    const pages = new NumberedPages(old.pageCount);
    for (let p = 0; p < old.pageCount; p++) {
      if (old.kinds[p] === PageKind.Zero) pages.setZero(p);
      else {
        const digest = Buffer.from(old.digests.buffer, old.digests.byteOffset + p * DIGEST_BYTES, DIGEST_BYTES).toString('hex');
        const n = numberOf.get(digest);
        if (n === undefined)
          throw new CorruptError(`snapshot ${id}: page ${p} names chunk ${digest}, which the index does not hold; run 'vnstore check'`);
        pages.setNumber(p, n);
      }
    }
    const { bytes } = encodeManifestV2(header, pages, base);
    const file = `${id}.vnm`;
    await writeFileDurable(path.join(target.manifests, file), bytes, path.join(target.tmp, `${file}.tmp`));
    done.set(id, pages);
    sizes.set(id, bytes.length);
    return pages;
  };
  for (const id of ids) await convert(id);
  return sizes;
}
