/**
 * Pack formats 3 and 4: the pack's table of contents is the chunk index (pure encode/decode, no I/O).
 * See docs/FORMAT.md, "Store format 3".
 *
 *   header, payloads, trailer : as versions 1 and 2 (the trailer's count and CRCs, the TOC's offset)
 *   toc   numbers : var runCount, per run var gap | var (length - 1); numbers strictly increase
 *         items   : per stored payload u8 (codec | (pages - 1) << 4) | u16 storedLength
 *         digests : count x 24 B (version 4) or count x 32 B (version 3), in entry order
 *
 * Version 4 keeps the first 24 bytes of each chunk's BLAKE3 digest, version 3 all 32; a store holds
 * both, and both are read as 24-byte prefixes (TOC_DIGEST_BYTES): that is all a format-3 store keeps
 * of a chunk's digest and all it compares (docs/DESIGN.md, "A 24-byte digest prefix in the TOC").
 * A chunk's number names it in manifests. A fresh pack's numbers are one run, and a container's pages
 * share one 3-byte item.
 */
import { crc32 } from 'node:zlib';
import { CorruptError } from '../util/errors.js';
import {
  CONTAINER_CODEC,
  MAX_CONTAINER_PAGES,
  PACK_HEADER_BYTES,
  PACK_TRAILER_BYTES,
  parseTrailerFields,
  writePackTrailer,
} from './pack.js';
import { DIGEST_BYTES } from './pages.js';
import { ByteReader, ByteWriter } from './varint.js';

/** The first numbered pack version: full 32-byte digests in the TOC (read, no longer written). */
export const PACK_VERSION_NUMBERED = 3;
/** The numbered pack version written now: 24-byte digest prefixes in the TOC. */
export const PACK_VERSION_PREFIXED = 4;
/** The pack versions of a format-3 store, oldest first. */
export const NUMBERED_PACK_VERSIONS: readonly number[] = [PACK_VERSION_NUMBERED, PACK_VERSION_PREFIXED];
/** Bytes of a chunk's digest a format-3 store keeps and compares (its BLAKE3 digest's first 24). */
export const TOC_DIGEST_BYTES = 24;

/** Bytes per entry of a numbered pack's digest column in the file. */
export function tocDigestStride(version: number): number {
  if (version === PACK_VERSION_NUMBERED) return DIGEST_BYTES;
  if (version === PACK_VERSION_PREFIXED) return TOC_DIGEST_BYTES;
  throw new RangeError(`not a numbered pack version: ${version}`);
}

/** Whether the 24-byte prefixes a[ao..] and b[bo..] are equal (a full digest compares by its prefix). */
export function tocDigestsEqual(a: Uint8Array, ao: number, b: Uint8Array, bo: number): boolean {
  for (let k = 0; k < TOC_DIGEST_BYTES; k++) if (a[ao + k] !== b[bo + k]) return false;
  return true;
}

/** 24-byte prefixes, one every `stride` bytes of `column`, packed together (a version-3 column's). */
export function prefixColumn(column: Uint8Array, count: number, stride: number): Uint8Array {
  if (stride === TOC_DIGEST_BYTES) return column.subarray(0, count * TOC_DIGEST_BYTES);
  const out = new Uint8Array(count * TOC_DIGEST_BYTES);
  for (let k = 0; k < count; k++) out.set(column.subarray(k * stride, k * stride + TOC_DIGEST_BYTES), k * TOC_DIGEST_BYTES);
  return out;
}
/** Bytes of one item (a per-page payload or a whole container). */
export const ITEM_BYTES = 3;
/** What a chunk costs in a version-4 TOC at most: its digest prefix and an item of its own. */
export const NUMBERED_TOC_ENTRY_BYTES = TOC_DIGEST_BYTES + ITEM_BYTES;
/** Chunk numbers are below 2^48 (docs/FORMAT.md, "Chunk numbers"). */
export const MAX_CHUNK_NUMBER = 2 ** 48 - 1;

/** A TOC to write: per entry (chunk) its number, digest, and its payload's codec, length and member. */
export interface TocV3Input {
  count: number;
  /** Strictly increasing. */
  numbers: ArrayLike<number>;
  /** 32 bytes an entry (a version-4 TOC keeps the first 24 of each). */
  digests: Uint8Array;
  /** For a container's pages: the frame's length, the same in each of them. */
  lengths: ArrayLike<number>;
  codecs: ArrayLike<number>;
  /** Position inside its container (0..pages-1, consecutive); 0 outside containers. */
  members?: ArrayLike<number>;
}

/**
 * A parsed TOC in columns: entry k has number numberAt(k), digest prefix digests[24k..+24], and
 * meta[k] = storedLength | codec << 16 | member << 20 | (pages - 1) << 24, at offsets[k] (a container's
 * pages all give the frame's offset and length).
 */
export interface TocV3 {
  count: number;
  /** Number runs: run r covers runStarts[r] .. runStarts[r] + runLengths[r] - 1, in entry order. */
  runStarts: number[];
  runLengths: number[];
  offsets: Uint32Array;
  metas: Uint32Array;
  /** count x 24 bytes: each entry's digest prefix, whatever the version (a view or a copy). */
  digests: Uint8Array;
  /** Where the digest column starts, relative to the TOC's start (a pread of one digest: + stride·k). */
  digestsAt: number;
  /** Bytes per entry of the digest column in the file: 24 (version 4) or 32 (version 3). */
  digestStride: number;
}

export function metaStoredLength(meta: number): number {
  return meta & 0xffff;
}
export function metaCodec(meta: number): number {
  return (meta >>> 16) & 0x0f;
}
export function metaMember(meta: number): number {
  return (meta >>> 20) & 0x0f;
}
export function metaPages(meta: number): number {
  return ((meta >>> 24) & 0x0f) + 1;
}

function packMeta(storedLength: number, codec: number, member: number, pages: number): number {
  return (storedLength | (codec << 16) | (member << 20) | ((pages - 1) << 24)) >>> 0;
}

/** The number runs of a strictly increasing list (maximal runs of consecutive numbers). */
export function numberRuns(numbers: ArrayLike<number>, count: number): { starts: number[]; lengths: number[] } {
  const starts: number[] = [];
  const lengths: number[] = [];
  for (let k = 0; k < count; k++) {
    const n = numbers[k];
    if (!Number.isSafeInteger(n) || n < 0 || n > MAX_CHUNK_NUMBER) throw new RangeError(`chunk number out of range: ${n}`);
    const r = starts.length - 1;
    if (r >= 0 && n === starts[r] + lengths[r]) lengths[r]++;
    else {
      if (r >= 0 && n < starts[r] + lengths[r]) throw new RangeError('chunk numbers of a pack must strictly increase');
      starts.push(n);
      lengths.push(1);
    }
  }
  return { starts, lengths };
}

/** The items of a TOC: a per-page entry is one item, a container's consecutive members one more. */
function tocItems(toc: TocV3Input): { codecs: number[]; pages: number[]; lengths: number[] } {
  const items = { codecs: [] as number[], pages: [] as number[], lengths: [] as number[] };
  let k = 0;
  while (k < toc.count) {
    const codec = toc.codecs[k];
    const len = toc.lengths[k];
    const member = toc.members ? toc.members[k] : 0;
    if (len < 1 || len > 0xffff) throw new RangeError(`stored length out of range: ${len}`);
    if (codec > CONTAINER_CODEC || member !== 0) throw new RangeError(`codec ${codec} / member ${member} out of place at entry ${k}`);
    let n = 1;
    if (codec === CONTAINER_CODEC) {
      while (k + n < toc.count && toc.codecs[k + n] === CONTAINER_CODEC && toc.members && toc.members[k + n] === n) {
        if (toc.lengths[k + n] !== len) throw new RangeError(`container at entry ${k}: members name different lengths`);
        n++;
      }
      if (n > MAX_CONTAINER_PAGES) throw new RangeError(`container at entry ${k} has more than ${MAX_CONTAINER_PAGES} pages`);
    }
    items.codecs.push(codec);
    items.pages.push(n);
    items.lengths.push(len);
    k += n;
  }
  return items;
}

/** Encodes TOC + trailer of a version-4 (or 3) pack whose payloads occupy [16, tocOffset). */
export function encodePackFooterV3(toc: TocV3Input, tocOffset: number, payloadCrc: number, version = PACK_VERSION_PREFIXED): Buffer {
  const { count } = toc;
  const stride = tocDigestStride(version);
  if (count < 1) throw new RangeError('a pack holds at least one chunk');
  if (toc.digests.length < count * DIGEST_BYTES) throw new RangeError('digests must hold 32 bytes per chunk');
  const runs = numberRuns(toc.numbers, count);
  const items = tocItems(toc);
  const w = new ByteWriter(64 + items.codecs.length * ITEM_BYTES + count * stride + PACK_TRAILER_BYTES);
  w.varint(runs.starts.length);
  let end = 0;
  for (let r = 0; r < runs.starts.length; r++) {
    w.varint(runs.starts[r] - end);
    w.varint(runs.lengths[r] - 1);
    end = runs.starts[r] + runs.lengths[r];
  }
  for (let i = 0; i < items.codecs.length; i++) {
    w.u8(items.codecs[i] | ((items.pages[i] - 1) << 4));
    w.u16(items.lengths[i]);
  }
  if (stride === DIGEST_BYTES) w.bytes(toc.digests.subarray(0, count * DIGEST_BYTES));
  else for (let k = 0; k < count; k++) w.bytes(toc.digests.subarray(k * DIGEST_BYTES, k * DIGEST_BYTES + stride));
  const tocBytes = w.length;
  w.bytes(new Uint8Array(PACK_TRAILER_BYTES));
  const out = w.finish();
  writePackTrailer(out.subarray(tocBytes), count, tocOffset, out.subarray(0, tocBytes), payloadCrc);
  return out;
}

/** The trailer of a version-3/4 pack: its TOC has whatever the file size leaves (parsed exactly later). */
export function parsePackTrailerV3(
  b: Uint8Array,
  fileSize: number,
  name: string,
  version = PACK_VERSION_PREFIXED,
): ReturnType<typeof parseTrailerFields> {
  const t = parseTrailerFields(b, fileSize, name);
  // The smallest TOC: one run (2 B), one item, one digest each.
  if (t.tocOffset < PACK_HEADER_BYTES || t.count < 1 || t.tocBytes < 2 + ITEM_BYTES + t.count * tocDigestStride(version)) {
    throw new CorruptError(`pack ${name}: table of contents does not match file size`);
  }
  return t;
}

/** Parses and checks a version-4 (or 3) TOC (exactly `toc`: the bytes between tocOffset and the trailer). */
export function parsePackTocV3(
  toc: Uint8Array,
  trailer: { count: number; tocOffset: number; tocCrc: number },
  name: string,
  version = PACK_VERSION_PREFIXED,
): TocV3 {
  const digestStride = tocDigestStride(version);
  if (crc32(toc) !== trailer.tocCrc) throw new CorruptError(`pack ${name}: table of contents checksum mismatch`);
  const { count } = trailer;
  const what = `pack ${name}`;
  const r = new ByteReader(toc, what);
  const runStarts: number[] = [];
  const runLengths: number[] = [];
  const runCount = r.varint();
  if (runCount < 1 || runCount > count) throw new CorruptError(`${what}: bad number run count ${runCount}`);
  let end = 0;
  let numbered = 0;
  for (let i = 0; i < runCount; i++) {
    const gap = r.varint();
    const length = r.varint() + 1;
    // Runs are maximal and numbers strictly increase: every gap after the first is at least 1.
    if (i > 0 && gap === 0) throw new CorruptError(`${what}: number run ${i} continues its predecessor`);
    const start = end + gap;
    end = start + length;
    numbered += length;
    if (end - 1 > MAX_CHUNK_NUMBER || numbered > count) throw new CorruptError(`${what}: number runs exceed the chunk count`);
    runStarts.push(start);
    runLengths.push(length);
  }
  if (numbered !== count) throw new CorruptError(`${what}: number runs do not cover the chunk count`);
  const offsets = new Uint32Array(count);
  const metas = new Uint32Array(count);
  let k = 0;
  let offset = PACK_HEADER_BYTES;
  while (k < count) {
    const tag = r.u8();
    const storedLength = r.u16();
    const codec = tag & 0x0f;
    const pages = (tag >>> 4) + 1;
    if (storedLength === 0) throw new CorruptError(`${what}: chunk ${k} has length 0`);
    if (codec > CONTAINER_CODEC) throw new CorruptError(`${what}: chunk ${k} has unknown codec ${codec}`);
    if (codec !== CONTAINER_CODEC && pages !== 1) throw new CorruptError(`${what}: chunk ${k} has a page count outside a container`);
    if (k + pages > count) throw new CorruptError(`${what}: items exceed the chunk count`);
    for (let m = 0; m < pages; m++) {
      offsets[k + m] = offset;
      metas[k + m] = packMeta(storedLength, codec, codec === CONTAINER_CODEC ? m : 0, pages);
    }
    offset += storedLength;
    k += pages;
  }
  if (offset !== trailer.tocOffset) throw new CorruptError(`${what}: chunk lengths do not add up to the payload size`);
  const digestsAt = r.pos;
  const digests = prefixColumn(r.bytes(count * digestStride), count, digestStride);
  if (r.remaining !== 0) throw new CorruptError(`${what}: table of contents has trailing bytes`);
  return { count, runStarts, runLengths, offsets, metas, digests, digestsAt, digestStride };
}

/** The number of entry k of a parsed TOC (a walk over its runs: few per pack). */
export function numberAt(toc: Pick<TocV3, 'runStarts' | 'runLengths'>, k: number): number {
  let base = 0;
  for (let r = 0; r < toc.runStarts.length; r++) {
    if (k < base + toc.runLengths[r]) return toc.runStarts[r] + (k - base);
    base += toc.runLengths[r];
  }
  throw new RangeError(`entry ${k} outside the table`);
}
