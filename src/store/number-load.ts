/**
 * Builds the format-3 chunk index from the packs' tables of contents (docs/FORMAT.md, "Recovery
 * (format 3)"). It reads and decides; the caller (recovery) acts on the decisions:
 *   - a pack whose header, trailer or TOC fails its checks is `damaged` (recovery quarantines it);
 *   - a pack every number of which older packs already hold is a `copy` left by a gc or compact
 *     killed between sealing it and recording its originals' deletion (recovery deletes it);
 *   - a pack that shares only some numbers with older packs is `conflicting`: damage the write order
 *     never produces, left out of the index for `check` to report.
 * Packs are taken in id order, so an original (lower id) always wins over its copy.
 */
import { NumberIndex, type DigestOf } from '../index/number-index.js';
import { ChunkTable } from '../index/chunk-table.js';
import { prefixColumn, TOC_DIGEST_BYTES, type TocV3 } from '../format/pack-v3.js';
import { VnstoreError } from '../util/errors.js';
import type { PackReader, PackTocV3 } from './pack-reader.js';

export interface NumberIndexLoad {
  index: NumberIndex;
  /**
   * Where each loaded pack's digest column lies in its file. The digests themselves are not kept
   * (docs/DESIGN.md, "Memory").
   */
  digestColumns: Map<number, DigestColumn>;
  /**
   * Each loaded pack's digest prefixes as read with its TOC (24 B each): NumberedChunks
   * keeps copies of what its budget allows, so a session does not read them again.
   */
  digests: Map<number, Uint8Array>;
  damaged: { pack: number; why: string }[];
  copies: number[];
  conflicting: { pack: number; overlaps: number[] }[];
}

/** A pack's digest column in its file: entry k's digest at `at` + `stride`·k (24 B in pack 4, 32 in pack 3). */
export interface DigestColumn {
  at: number;
  stride: number;
}

/** The digest column of a TOC read at `tocOffset`. */
export function digestColumnOf(tocOffset: number, toc: Pick<TocV3, 'digestsAt' | 'digestStride'>): DigestColumn {
  return { at: tocOffset + toc.digestsAt, stride: toc.digestStride };
}

/** Entries [entry, entry + count) of a pack's digest column, read from its file, as 24-byte prefixes. */
export async function readDigestPrefixes(
  reader: Pick<PackReader, 'read'>,
  pack: number,
  column: DigestColumn,
  entry: number,
  count: number,
): Promise<Uint8Array> {
  const bytes = await reader.read(pack, column.at + column.stride * entry, column.stride * count);
  return prefixColumn(bytes, count, column.stride);
}

/** Whether every number of `toc` is already held by `index`. */
function allHeld(index: NumberIndex, toc: TocV3): boolean {
  for (let r = 0; r < toc.runStarts.length; r++) {
    for (let n = toc.runStarts[r]; n < toc.runStarts[r] + toc.runLengths[r]; n++) if (!index.locate(n)) return false;
  }
  return true;
}

export async function loadNumberIndex(
  reader: PackReader,
  packIds: readonly number[],
  given?: NumberIndex,
  /** false: numbers and locations only, the fingerprint table left empty (NumberIndex.addDigests). */
  withDigests = true,
): Promise<NumberIndexLoad> {
  const damaged: NumberIndexLoad['damaged'] = [];
  // While loading, clashing fingerprints read the older pack's digest from its TOC, held until the end.
  const digests = new Map<number, Uint8Array>();
  const digestOf: DigestOf = (pack, entry) => digests.get(pack)!.subarray(entry * TOC_DIGEST_BYTES, (entry + 1) * TOC_DIGEST_BYTES);
  // Every TOC is read first, so the fingerprint table is sized once: growing it while adding packs
  // rehashed it several times into fresh memory, which dominated an open (bench/RESULTS.md).
  const reads: { pack: number; read: PackTocV3 }[] = [];
  for (const pack of [...packIds].sort((a, b) => a - b)) {
    try {
      reads.push({ pack, read: await reader.readTocV3(pack) });
    } catch (err) {
      // A newer vnstore's pack is not damage: the whole open fails instead (never quarantine it).
      if (err instanceof VnstoreError && err.code === 'E_CORRUPT') {
        damaged.push({ pack, why: err.message });
        continue;
      }
      throw err;
    }
  }
  const chunks = reads.reduce((n, r) => n + r.read.toc.count, 0);
  const index = given ?? new NumberIndex(new ChunkTable(Math.max(chunks, 1 << 14)));
  if (withDigests) index.table.reserve(chunks);
  const load: NumberIndexLoad = { index, digestColumns: new Map(), digests, damaged, copies: [], conflicting: [] };
  for (const { pack, read } of reads) {
    const overlaps = index.overlapping(read.toc.runStarts, read.toc.runLengths);
    if (overlaps.length > 0) {
      if (allHeld(index, read.toc)) load.copies.push(pack);
      else load.conflicting.push({ pack, overlaps });
      continue;
    }
    digests.set(pack, read.toc.digests.subarray(0, read.toc.count * TOC_DIGEST_BYTES));
    load.digestColumns.set(pack, digestColumnOf(read.tocOffset, read.toc));
    index.addPack(pack, read.toc, digestOf, withDigests);
  }
  return load;
}
