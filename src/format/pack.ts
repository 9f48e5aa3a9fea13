/**
 * Pack file format v1 and v2 (pure encode/decode, no I/O). See docs/FORMAT.md.
 *
 *   header  16 B : magic "VNSTPACK" | u16 version | u16 flags | u32 pageSize
 *   payload      : chunk payloads back to back, starting at offset 16
 *   toc          : per chunk: digestPrefix[8] | u16 storedLength | u8 codec      (11 B each)
 *   trailer 32 B : u32 count | u32 tocOffsetLo | u32 tocOffsetHi | u32 tocCrc32 | u32 payloadCrc32
 *                  | u32 trailerCrc32 (of the 20 bytes before it) | magic "VNSTPEND"
 * Chunk offsets are implicit (cumulative stored lengths). The TOC locates and decodes every chunk; a
 * chunk's full name is its content's BLAKE3, so rebuilding the index re-hashes the decoded chunks
 * (which also re-verifies them) and the 8-byte prefix cross-checks the result. Keeping full digests
 * here would duplicate the index's keys: 24 B a chunk, ~1% of the store (docs/DESIGN.md).
 *
 * Version 2 (written by compact, and by gc when it copies containers) adds zstd containers: one zstd
 * frame holding up to 16 distinct pages. The TOC entry keeps its 11 bytes; its last byte becomes
 * codec (low 4 bits) | member << 4, and a container's pages are consecutive entries with members
 * 0, 1, ... n-1 that all name the frame's length; the frame's bytes follow once in the payload.
 */
import { crc32 } from 'node:zlib';
import { CorruptError, VnstoreError } from '../util/errors.js';
import { DIGEST_BYTES, PAGE_SIZE } from './pages.js';

export const PACK_MAGIC = Buffer.from('VNSTPACK', 'latin1');
export const PACK_END_MAGIC = Buffer.from('VNSTPEND', 'latin1');
/** The version ingest writes (per-page chunks only); readers take both. */
export const PACK_VERSION = 1;
/** Packs that may hold zstd containers. */
export const PACK_VERSION_CONTAINERS = 2;
/** The TOC codec of a page inside a zstd container (a v2 pack only). */
export const CONTAINER_CODEC = 2;
/** Pages in one container at most (64 KiB raw: docs/DESIGN.md, "zstd for cold chunks"). */
export const MAX_CONTAINER_PAGES = 16;
export const PACK_HEADER_BYTES = 16;
export const PACK_TRAILER_BYTES = 32;
export const TOC_ENTRY_BYTES = 11;
export const TOC_PREFIX_BYTES = 8;
export { DIGEST_BYTES };

export interface PackEntry {
  digestPrefix: Uint8Array; // first 8 bytes of the chunk digest
  offset: number; // absolute offset of the payload in the pack file
  storedLength: number; // a container's pages: the container frame's length
  codec: number;
  /** Position of the page inside its container (CONTAINER_CODEC); 0 otherwise. */
  member: number;
  /** Pages of its container (CONTAINER_CODEC); 1 otherwise. */
  pages: number;
}

/**
 * The stored bytes a chunk accounts for: its payload, or for a container's page an equal share of
 * the frame (the remainder on member 0), so that the shares of a container add up to its length
 * exactly (stats, gc's live and unused bytes, counters).
 */
export function storedShare(loc: { storedLength: number; codec: number; member?: number; pages?: number }): number {
  if (loc.codec !== CONTAINER_CODEC) return loc.storedLength;
  const n = loc.pages ?? 1;
  return Math.floor(loc.storedLength / n) + ((loc.member ?? 0) === 0 ? loc.storedLength % n : 0);
}

export function encodePackHeader(pageSize: number, version = PACK_VERSION): Buffer {
  const b = Buffer.alloc(PACK_HEADER_BYTES);
  PACK_MAGIC.copy(b, 0);
  b.writeUInt16LE(version, 8);
  b.writeUInt16LE(0, 10);
  b.writeUInt32LE(pageSize, 12);
  return b;
}

/**
 * Checks a pack's header. `versions`: those the caller reads (the store format 1/2 readers take 1 and
 * 2; a version-3 pack is then refused as a newer one, and the format-3 reader takes 3 only).
 */
export function parsePackHeader(
  b: Uint8Array,
  name: string,
  versions: readonly number[] = [PACK_VERSION, PACK_VERSION_CONTAINERS],
): { pageSize: number; version: number } {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.length < PACK_HEADER_BYTES || !buf.subarray(0, 8).equals(PACK_MAGIC)) {
    throw new CorruptError(`pack ${name}: bad header magic`);
  }
  const version = buf.readUInt16LE(8);
  // Only a version above ours may be a newer writer's pack (kept, never quarantined); 0 was never
  // written, so it is damage, e.g. a pack torn after its magic.
  if (version < PACK_VERSION) throw new CorruptError(`pack ${name}: bad pack version ${version}`);
  if (version > Math.max(...versions)) {
    throw new VnstoreError('E_FORMAT_VERSION', `pack ${name}: unsupported pack version ${version} (written by a newer vnstore?)`);
  }
  if (!versions.includes(version))
    throw new CorruptError(`pack ${name}: pack version ${version} does not belong in a store of this format`);
  if (buf.readUInt16LE(10) !== 0) throw new CorruptError(`pack ${name}: unknown header flags`);
  const pageSize = buf.readUInt32LE(12);
  if (pageSize !== PAGE_SIZE) throw new CorruptError(`pack ${name}: page size ${pageSize}, not ${PAGE_SIZE}`);
  return { pageSize, version };
}

/**
 * A pack's table of contents in columns: chunk k has digest digests[k*32..], its length and codec,
 * and (v2) its member number inside its container.
 */
export interface TocColumns {
  count: number;
  digests: Uint8Array;
  lengths: ArrayLike<number>;
  codecs: ArrayLike<number>;
  members?: ArrayLike<number>;
}

/** Encodes TOC + trailer for chunks whose payloads occupy [16, tocOffset). */
export function encodePackFooter(toc: TocColumns, tocOffset: number, payloadCrc: number): Buffer {
  const { count, digests, lengths, codecs, members } = toc;
  if (digests.length < count * DIGEST_BYTES) throw new RangeError('digests must hold 32 bytes per chunk');
  const out = Buffer.allocUnsafe(count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES);
  let p = 0;
  for (let k = 0; k < count; k++) {
    const len = lengths[k];
    if (len < 1 || len > 0xffff) throw new RangeError(`stored length out of range: ${len}`);
    for (let b = 0; b < TOC_PREFIX_BYTES; b++) out[p + b] = digests[k * DIGEST_BYTES + b];
    out.writeUInt16LE(len, p + TOC_PREFIX_BYTES);
    const member = members ? members[k] : 0;
    if (codecs[k] > 0x0f || member >= MAX_CONTAINER_PAGES) throw new RangeError(`codec ${codecs[k]} / member ${member} out of range`);
    out[p + TOC_PREFIX_BYTES + 2] = codecs[k] | (member << 4);
    p += TOC_ENTRY_BYTES;
  }
  writePackTrailer(out.subarray(p), count, tocOffset, out.subarray(0, p), payloadCrc);
  return out;
}

export interface PackTrailer {
  count: number;
  tocOffset: number;
  tocCrc: number;
  payloadCrc: number;
}

/**
 * The trailer's fields after its magic and checksum (all pack versions); `tocBytes` is what the file
 * size leaves between `tocOffset` and the trailer (negative when it does not fit).
 */
export function parseTrailerFields(b: Uint8Array, fileSize: number, name: string): PackTrailer & { tocBytes: number } {
  const t = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (t.length !== PACK_TRAILER_BYTES || !t.subarray(24, 32).equals(PACK_END_MAGIC)) {
    throw new CorruptError(`pack ${name}: missing trailer (truncated or unfinished pack)`);
  }
  if (crc32(t.subarray(0, 20)) !== t.readUInt32LE(20)) throw new CorruptError(`pack ${name}: trailer checksum mismatch`);
  const count = t.readUInt32LE(0);
  const tocOffset = t.readUInt32LE(4) + t.readUInt32LE(8) * 2 ** 32;
  return {
    count,
    tocOffset,
    tocCrc: t.readUInt32LE(12),
    payloadCrc: t.readUInt32LE(16),
    tocBytes: fileSize - PACK_TRAILER_BYTES - tocOffset,
  };
}

export function parsePackTrailer(b: Uint8Array, fileSize: number, name: string): PackTrailer {
  const { tocBytes, ...trailer } = parseTrailerFields(b, fileSize, name);
  if (trailer.tocOffset < PACK_HEADER_BYTES || tocBytes !== trailer.count * TOC_ENTRY_BYTES) {
    throw new CorruptError(`pack ${name}: table of contents does not match file size`);
  }
  return trailer;
}

/** Writes the 32-byte trailer at t[0..] for a TOC of `toc` bytes (all pack versions). */
export function writePackTrailer(t: Buffer, count: number, tocOffset: number, toc: Uint8Array, payloadCrc: number): void {
  t.writeUInt32LE(count, 0);
  t.writeUInt32LE(tocOffset >>> 0, 4);
  t.writeUInt32LE(Math.floor(tocOffset / 2 ** 32), 8);
  t.writeUInt32LE(crc32(toc), 12);
  t.writeUInt32LE(payloadCrc >>> 0, 16);
  t.writeUInt32LE(crc32(t.subarray(0, 20)), 20);
  PACK_END_MAGIC.copy(t, 24);
}

/**
 * Parses and checks a TOC. Version 1: every byte-10 value is a codec, 0 or 1. Version 2: codec in the
 * low 4 bits (0, 1 or CONTAINER_CODEC), member in the high 4; a container is a run of entries with
 * members 0..n-1 (n <= 16) and one stored length, and its frame occupies the payload once.
 */
export function parsePackToc(toc: Uint8Array, trailer: PackTrailer, name: string, version = PACK_VERSION): PackEntry[] {
  if (toc.length !== trailer.count * TOC_ENTRY_BYTES) throw new CorruptError(`pack ${name}: bad table of contents length`);
  if (crc32(toc) !== trailer.tocCrc) throw new CorruptError(`pack ${name}: table of contents checksum mismatch`);
  const buf = Buffer.from(toc.buffer, toc.byteOffset, toc.length);
  const entries: PackEntry[] = new Array(trailer.count);
  let offset = PACK_HEADER_BYTES;
  let open: { offset: number; length: number; next: number; first: number } | undefined; // the container being read
  const close = () => {
    if (open) for (let k = open.first; k < open.first + open.next; k++) entries[k].pages = open.next;
    open = undefined;
  };
  for (let i = 0; i < trailer.count; i++) {
    const p = i * TOC_ENTRY_BYTES;
    const storedLength = buf.readUInt16LE(p + TOC_PREFIX_BYTES);
    if (storedLength === 0) throw new CorruptError(`pack ${name}: chunk ${i} has length 0`);
    const byte = buf[p + TOC_PREFIX_BYTES + 2];
    const codec = version === PACK_VERSION ? byte : byte & 0x0f;
    const member = version === PACK_VERSION ? 0 : byte >>> 4;
    if (codec > 1 && !(codec === CONTAINER_CODEC && version === PACK_VERSION_CONTAINERS)) {
      throw new CorruptError(`pack ${name}: chunk ${i} has unknown codec ${codec}`);
    }
    let at = offset;
    if (codec === CONTAINER_CODEC) {
      if (member === 0) {
        close();
        open = { offset, length: storedLength, next: 1, first: i };
        offset += storedLength;
      } else if (!open || member !== open.next || storedLength !== open.length) {
        throw new CorruptError(`pack ${name}: chunk ${i} is out of place in its container`);
      } else {
        open.next++;
      }
      at = open.offset;
    } else {
      if (member !== 0) throw new CorruptError(`pack ${name}: chunk ${i} has a member number outside a container`);
      close();
      offset += storedLength;
    }
    entries[i] = { digestPrefix: buf.subarray(p, p + TOC_PREFIX_BYTES), offset: at, storedLength, codec, member, pages: 1 };
  }
  close();
  if (offset !== trailer.tocOffset) throw new CorruptError(`pack ${name}: chunk lengths do not add up to the payload size`);
  return entries;
}

export function packFileName(packId: number): string {
  return `${packId.toString(16).padStart(8, '0')}.vpk`;
}

export function parsePackFileName(name: string): number | undefined {
  const m = /^([0-9a-f]{8})\.vpk$/.exec(name);
  return m ? parseInt(m[1], 16) : undefined;
}
