/**
 * Pack file format v1 (pure encode/decode, no I/O). See docs/FORMAT.md.
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
 */
import { crc32 } from 'node:zlib';
import { CorruptError } from '../util/errors.js';
import { DIGEST_BYTES } from './pages.js';

export const PACK_MAGIC = Buffer.from('VNSTPACK', 'latin1');
export const PACK_END_MAGIC = Buffer.from('VNSTPEND', 'latin1');
export const PACK_VERSION = 1;
export const PACK_HEADER_BYTES = 16;
export const PACK_TRAILER_BYTES = 32;
export const TOC_ENTRY_BYTES = 11;
export const TOC_PREFIX_BYTES = 8;
export { DIGEST_BYTES };

export interface PackEntry {
  digestPrefix: Uint8Array; // first 8 bytes of the chunk digest
  offset: number; // absolute offset of the payload in the pack file
  storedLength: number;
  codec: number;
}

export function encodePackHeader(pageSize: number): Buffer {
  const b = Buffer.alloc(PACK_HEADER_BYTES);
  PACK_MAGIC.copy(b, 0);
  b.writeUInt16LE(PACK_VERSION, 8);
  b.writeUInt16LE(0, 10);
  b.writeUInt32LE(pageSize, 12);
  return b;
}

export function parsePackHeader(b: Uint8Array, name: string): { pageSize: number } {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.length < PACK_HEADER_BYTES || !buf.subarray(0, 8).equals(PACK_MAGIC)) {
    throw new CorruptError(`pack ${name}: bad header magic`);
  }
  const version = buf.readUInt16LE(8);
  if (version !== PACK_VERSION) throw new CorruptError(`pack ${name}: unsupported pack version ${version}`);
  return { pageSize: buf.readUInt32LE(12) };
}

/** A pack's table of contents in columns: chunk k has digest digests[k*32..], its length and codec. */
export interface TocColumns {
  count: number;
  digests: Uint8Array;
  lengths: ArrayLike<number>;
  codecs: ArrayLike<number>;
}

/** Encodes TOC + trailer for chunks whose payloads occupy [16, tocOffset). */
export function encodePackFooter(toc: TocColumns, tocOffset: number, payloadCrc: number): Buffer {
  const { count, digests, lengths, codecs } = toc;
  if (digests.length < count * DIGEST_BYTES) throw new RangeError('digests must hold 32 bytes per chunk');
  const out = Buffer.allocUnsafe(count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES);
  let p = 0;
  for (let k = 0; k < count; k++) {
    const len = lengths[k];
    if (len < 1 || len > 0xffff) throw new RangeError(`stored length out of range: ${len}`);
    for (let b = 0; b < TOC_PREFIX_BYTES; b++) out[p + b] = digests[k * DIGEST_BYTES + b];
    out.writeUInt16LE(len, p + TOC_PREFIX_BYTES);
    out[p + TOC_PREFIX_BYTES + 2] = codecs[k];
    p += TOC_ENTRY_BYTES;
  }
  const trailer = out.subarray(p);
  trailer.writeUInt32LE(count, 0);
  trailer.writeUInt32LE(tocOffset >>> 0, 4);
  trailer.writeUInt32LE(Math.floor(tocOffset / 2 ** 32), 8);
  trailer.writeUInt32LE(crc32(out.subarray(0, p)), 12);
  trailer.writeUInt32LE(payloadCrc >>> 0, 16);
  trailer.writeUInt32LE(crc32(trailer.subarray(0, 20)), 20);
  PACK_END_MAGIC.copy(trailer, 24);
  return out;
}

export interface PackTrailer {
  count: number;
  tocOffset: number;
  tocCrc: number;
  payloadCrc: number;
}

export function parsePackTrailer(b: Uint8Array, fileSize: number, name: string): PackTrailer {
  const t = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (t.length !== PACK_TRAILER_BYTES || !t.subarray(24, 32).equals(PACK_END_MAGIC)) {
    throw new CorruptError(`pack ${name}: missing trailer (truncated or unfinished pack)`);
  }
  if (crc32(t.subarray(0, 20)) !== t.readUInt32LE(20)) throw new CorruptError(`pack ${name}: trailer checksum mismatch`);
  const count = t.readUInt32LE(0);
  const tocOffset = t.readUInt32LE(4) + t.readUInt32LE(8) * 2 ** 32;
  if (tocOffset < PACK_HEADER_BYTES || tocOffset + count * TOC_ENTRY_BYTES + PACK_TRAILER_BYTES !== fileSize) {
    throw new CorruptError(`pack ${name}: table of contents does not match file size`);
  }
  return { count, tocOffset, tocCrc: t.readUInt32LE(12), payloadCrc: t.readUInt32LE(16) };
}

export function parsePackToc(toc: Uint8Array, trailer: PackTrailer, name: string): PackEntry[] {
  if (toc.length !== trailer.count * TOC_ENTRY_BYTES) throw new CorruptError(`pack ${name}: bad table of contents length`);
  if (crc32(toc) !== trailer.tocCrc) throw new CorruptError(`pack ${name}: table of contents checksum mismatch`);
  const buf = Buffer.from(toc.buffer, toc.byteOffset, toc.length);
  const entries: PackEntry[] = new Array(trailer.count);
  let offset = PACK_HEADER_BYTES;
  for (let i = 0; i < trailer.count; i++) {
    const p = i * TOC_ENTRY_BYTES;
    const storedLength = buf.readUInt16LE(p + TOC_PREFIX_BYTES);
    if (storedLength === 0) throw new CorruptError(`pack ${name}: chunk ${i} has length 0`);
    entries[i] = { digestPrefix: buf.subarray(p, p + TOC_PREFIX_BYTES), offset, storedLength, codec: buf[p + TOC_PREFIX_BYTES + 2] };
    offset += storedLength;
  }
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
