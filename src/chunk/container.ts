/**
 * zstd containers (pack format 2): up to 16 distinct pages compressed together as one zstd frame.
 * Decoding one page decodes its whole container (at most 64 KiB), never more; callers that read
 * several pages of one container in a batch decode it once (decodeStoredChunks, ContainerCache).
 * Decoding works on the fzstd fallback too; building containers needs libzstd (zstd.ts).
 */
import { CONTAINER_CODEC, MAX_CONTAINER_PAGES } from '../format/pack.js';
import { PAGE_SIZE } from '../format/pages.js';
import { CodecError, type PageCodec } from './codec.js';
import { getZstd, type ZstdFrames } from './zstd.js';

const ZSTD_MAGIC = 0xfd2fb528;
export const MAX_CONTAINER_BYTES = MAX_CONTAINER_PAGES * PAGE_SIZE;

/**
 * The content size a zstd frame header declares (RFC 8878, 3.1.1.1), or undefined when the bytes are
 * not a frame header that states one. Containers always state it: it tells the reader how many pages
 * the frame holds before decoding it.
 */
export function frameContentSize(frame: Uint8Array): number | undefined {
  if (frame.length < 6) return undefined;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.length);
  if (view.getUint32(0, true) !== ZSTD_MAGIC) return undefined;
  const fhd = frame[4];
  const fcsFlag = fhd >>> 6;
  const singleSegment = (fhd >>> 5) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
  if (fcsBytes === 0) return undefined;
  const at = 5 + (singleSegment ? 0 : 1) + dictBytes;
  if (at + fcsBytes > frame.length) return undefined;
  switch (fcsBytes) {
    case 1:
      return frame[at];
    case 2:
      return view.getUint16(at, true) + 256;
    case 4:
      return view.getUint32(at, true);
    default:
      return view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
  }
}

/** Pages a container frame holds, from its header; CodecError unless 1..16 whole pages. */
export function containerPages(frame: Uint8Array): number {
  const size = frameContentSize(frame);
  if (size === undefined || size === 0 || size % PAGE_SIZE !== 0 || size > MAX_CONTAINER_BYTES) {
    throw new CodecError(`zstd container of ${frame.length} bytes does not declare 1..${MAX_CONTAINER_PAGES} whole pages`);
  }
  return size / PAGE_SIZE;
}

/** Decodes a container frame into out[outOffset..] (room for 16 pages); returns its page count. */
export function decodeContainer(frame: Uint8Array, out: Uint8Array, outOffset = 0): number {
  const pages = containerPages(frame);
  getZstd().decompress(
    frame,
    Uint32Array.of(0),
    Uint32Array.of(frame.length),
    out,
    Uint32Array.of(outOffset),
    Uint32Array.of(pages * PAGE_SIZE),
  );
  return pages;
}

/** The last container decoded, kept so that reading its other pages next costs nothing. */
export class ContainerCache {
  private readonly pages = new Uint8Array(MAX_CONTAINER_BYTES);
  private key = '';
  private count = 0;

  /**
   * Page `member` of the container `frame` (named by `key`, e.g. pack and offset), decoded once for
   * all its members; a view valid until the next call. CodecError when it does not decode or has
   * no such member.
   */
  page(key: string, frame: Uint8Array, member: number): Uint8Array {
    if (key !== this.key) {
      this.key = '';
      this.count = decodeContainer(frame, this.pages);
      this.key = key;
    }
    if (member >= this.count) throw new CodecError(`zstd container holds ${this.count} pages, not page ${member}`);
    return this.pages.subarray(member * PAGE_SIZE, (member + 1) * PAGE_SIZE);
  }
}

/**
 * decodeChunks with containers: chunk i is stored at src[offsets[i], +lengths[i]) with codecs[i]
 * (a container's frame for CONTAINER_CODEC, its page being members[i]) and decodes into page slots[i]
 * of `out`; failed[i] is set to 1 for a chunk that does not decode. Each distinct container is decoded
 * once per call, into a scratch buffer, and its pages are copied out.
 */
export function decodeStoredChunks(
  codec: PageCodec,
  src: Uint8Array,
  offsets: Uint32Array,
  lengths: Uint32Array,
  codecs: Uint8Array,
  members: Uint8Array | undefined,
  slots: Uint32Array,
  out: Uint8Array,
  failed: Uint8Array,
): void {
  // Per-page chunks in one native call; container chunks fail there (unknown codec) and are done here.
  codec.decodeChunks(src, offsets, lengths, codecs, slots, out, failed);
  if (!members) return;
  let cache: ContainerCache | undefined;
  for (let i = 0; i < offsets.length; i++) {
    if (codecs[i] !== CONTAINER_CODEC) continue;
    cache ??= new ContainerCache();
    try {
      const page = cache.page(String(offsets[i]), src.subarray(offsets[i], offsets[i] + lengths[i]), members[i]);
      out.set(page, slots[i] * PAGE_SIZE);
      failed[i] = 0;
    } catch {
      failed[i] = 1;
    }
  }
}

/**
 * Compresses `pages` (4 KiB each, back to back) into containers of `sizes[i]` pages each, one zstd
 * frame per container, on the libuv thread pool (compaction must not hold the main thread).
 */
export function compressContainers(pages: Uint8Array, sizes: readonly number[], level: number): Promise<ZstdFrames> {
  const starts = new Uint32Array(sizes.length);
  const bytes = new Uint32Array(sizes.length);
  let at = 0;
  sizes.forEach((n, i) => {
    starts[i] = at;
    bytes[i] = n * PAGE_SIZE;
    at += n * PAGE_SIZE;
  });
  return getZstd().compressAsync(pages, starts, bytes, level);
}
