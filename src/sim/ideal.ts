/**
 * Exact space bounds for a set of VM memory images, against which any page store is measured.
 *
 * Definitions (pages are 4 KiB; a trailing partial page is zero-padded to 4 KiB, which is how a page
 * store names it; an image's pages are counted once per image):
 * - zero page: all bytes zero. Never stored by an ideal page store.
 * - distinct non-zero pages: distinct BLAKE3-256 digests over all non-zero pages of all images.
 * - bound (a) "page dedup": distinct × 4096 bytes.
 * - bound (b) "page dedup + per-page LZ4": sum over distinct non-zero pages of min(raw LZ4 block size,
 *   4096), the raw block size being lz4-napi `compressSync(page).length - 4` (lz4-napi prepends a 4-byte
 *   length). A page LZ4 does not shrink counts 4096, as a store keeping it raw would pay.
 * - bound (c) "page dedup + per-page zstd": sum over distinct non-zero pages of min(zstd frame size at
 *   ZSTD_DEFAULT_LEVEL (3), 4096), the frame as src/chunk/zstd.ts writes it (libzstd's
 *   ZSTD_compressCCtx: content size in the header, no checksum).
 * - bound (d) "page dedup + zstd over 64 KiB containers": the distinct non-zero pages in first-seen
 *   order (images in the given order, pages in image order), cut into containers of 16 pages (the last
 *   one may hold fewer); sum over containers of min(zstd frame size of the container, its raw size).
 *   This is what a store that packs cold distinct pages 16 to a zstd frame would need at least.
 * Bounds (c) and (d) need the native zstd (libzstd through the addon); without it they are null and
 * `zstdUnavailable` says why. No bound counts any metadata (manifests, index, pack tables): a real
 * store sits above them all.
 * - sharing[a][b]: share of VM a's distinct non-zero pages (all its snapshots) also present in VM b.
 */
import { open } from 'node:fs/promises';
import { blake3 } from '@napi-rs/blake-hash';
import { compressSync } from 'lz4-napi';
import { PAGE_SIZE } from './workload.js';
import { getZstd, ZSTD_DEFAULT_LEVEL, type ZstdCodec } from '../chunk/zstd.js';

/** Bound (d)'s container: 64 KiB of distinct pages, the size issue 16 measures against. */
export const IDEAL_CONTAINER_PAGES = 16;

export interface ImageSource {
  /** VM the image belongs to (groups images for the sharing matrix). */
  vm: string;
  /** Snapshot number within the VM (for reporting only). */
  snap: number;
  /** Raw image file... */
  path?: string;
  /** ...or its bytes as a stream of blocks of any sizes. */
  blocks?: () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

export interface ImageIdeal {
  vm: string;
  snap: number;
  logicalBytes: number;
  pages: number;
  zeroPages: number;
  /** Non-zero pages whose content no earlier image (in the given order) or earlier page had. */
  newDistinctPages: number;
  /** What bound (b) grows by when this image is added: LZ4 bytes of its new distinct pages. */
  newLz4Bytes: number;
}

export interface IdealReport {
  images: number;
  logicalBytes: number;
  pages: number;
  zeroPages: number;
  nonZeroPages: number;
  distinctPages: number;
  /** Bound (a): distinct × 4096. */
  dedupBytes: number;
  /** Bound (b): per-page LZ4 of the distinct pages. */
  dedupLz4Bytes: number;
  /** Distinct pages LZ4 does not shrink (counted at 4096 in bound b). */
  incompressiblePages: number;
  /** zstd level of bounds (c) and (d). */
  zstdLevel: number;
  /** Pages per container of bound (d). */
  containerPages: number;
  /** Bound (c): per-page zstd of the distinct pages; null without native zstd. */
  dedupZstdPageBytes: number | null;
  /** Bound (d): zstd over containers of distinct pages; null without native zstd. */
  dedupZstdContainerBytes: number | null;
  /** Why bounds (c) and (d) are null. */
  zstdUnavailable?: string;
  perImage: ImageIdeal[];
  /** VM names in first-seen order; indices of `sharing`. */
  vms: string[];
  /** Distinct non-zero pages per VM. */
  vmDistinctPages: number[];
  /** Share of each VM's distinct pages that also occur in some other VM. */
  vmSharedWithAny: number[];
  /** sharing[a][b] = |D_a ∩ D_b| / |D_a| (1 on the diagonal, 0 when D_a is empty). */
  sharing: number[][];
}

const READ_BYTES = 4 * 1024 * 1024;

/**
 * Calls `fn` for every whole 4 KiB page of one image (file or block stream; the last page zero-padded)
 * and returns the image's exact byte length. The page buffer is only valid during the call.
 */
export async function forEachPage(src: ImageSource, fn: (page: Buffer) => void): Promise<number> {
  const carry = Buffer.alloc(PAGE_SIZE);
  let fill = 0;
  let bytes = 0;
  for await (const block of blocksOf(src)) {
    const buf = Buffer.isBuffer(block) ? block : Buffer.from(block.buffer, block.byteOffset, block.length);
    bytes += buf.length;
    let o = 0;
    if (fill > 0) {
      const n = Math.min(PAGE_SIZE - fill, buf.length);
      buf.copy(carry, fill, 0, n);
      fill += n;
      o = n;
      if (fill < PAGE_SIZE) continue;
      fn(carry);
      fill = 0;
    }
    for (; o + PAGE_SIZE <= buf.length; o += PAGE_SIZE) fn(buf.subarray(o, o + PAGE_SIZE));
    if (o < buf.length) {
      buf.copy(carry, 0, o);
      fill = buf.length - o;
    }
  }
  if (fill > 0) {
    carry.fill(0, fill);
    fn(carry);
  }
  return bytes;
}

async function* blocksOf(src: ImageSource): AsyncGenerator<Uint8Array> {
  if (src.blocks) {
    yield* src.blocks();
    return;
  }
  if (!src.path) throw new Error(`image ${src.vm}/${src.snap} has neither path nor blocks`);
  const fh = await open(src.path, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ_BYTES);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, READ_BYTES, null);
      if (bytesRead === 0) break;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** Raw LZ4 block size of one page as bound (b) counts it. */
export function lz4PageBytes(page: Buffer): number {
  return Math.min(compressSync(page).length - 4, PAGE_SIZE);
}

/**
 * Accumulates bounds (c) and (d): distinct pages are copied into one container buffer; each full
 * container costs two native calls (its pages as single frames, then the container as one frame).
 */
export class ZstdBounds {
  pageBytes = 0;
  containerBytes = 0;
  private readonly buf: Buffer;
  private readonly starts: Uint32Array;
  private readonly sizes: Uint32Array;
  private fill = 0;

  constructor(
    private readonly z: ZstdCodec,
    readonly level = ZSTD_DEFAULT_LEVEL,
    readonly containerPages = IDEAL_CONTAINER_PAGES,
  ) {
    this.buf = Buffer.alloc(containerPages * PAGE_SIZE);
    this.starts = Uint32Array.from({ length: containerPages }, (_, i) => i * PAGE_SIZE);
    this.sizes = new Uint32Array(containerPages).fill(PAGE_SIZE);
  }

  /** Adds one distinct non-zero page (copied: the caller's buffer may be reused). */
  add(page: Uint8Array): void {
    this.buf.set(page, this.fill * PAGE_SIZE);
    if (++this.fill === this.containerPages) this.flush();
  }

  /** Closes the last, partial container; call once after the last page. */
  finish(): void {
    if (this.fill > 0) this.flush();
  }

  private flush(): void {
    const n = this.fill;
    const pages = this.z.compress(this.buf, this.starts.subarray(0, n), this.sizes.subarray(0, n), this.level);
    for (const len of pages.lengths) this.pageBytes += Math.min(len, PAGE_SIZE);
    const raw = n * PAGE_SIZE;
    const box = this.z.compress(this.buf, new Uint32Array([0]), new Uint32Array([raw]), this.level);
    this.containerBytes += Math.min(box.payload.length, raw);
    this.fill = 0;
  }
}

/** Bounds (c) and (d) when native zstd is there, else the reason they are left out. */
function zstdBoundsOrWhy(zstd: () => ZstdCodec): ZstdBounds | string {
  try {
    const z = zstd();
    if (!z.canCompress) return 'zstd bounds need the native addon and libzstd.so.1 (the fzstd fallback only decompresses)';
    return new ZstdBounds(z);
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * Computes the exact bounds; images are taken in the given order (the order `newLz4Bytes` refers to).
 * `zstd` gives the codec of bounds (c) and (d) (tests pass the fallback to see them left out).
 */
export async function computeIdeal(
  images: ImageSource[],
  onProgress?: (done: number, total: number) => void,
  zstd: () => ZstdCodec = () => getZstd('native'),
): Promise<IdealReport> {
  const zb = zstdBoundsOrWhy(zstd);
  const vms: string[] = [];
  const vmIndex = new Map<string, number>();
  for (const im of images) {
    if (!vmIndex.has(im.vm)) {
      vmIndex.set(im.vm, vms.length);
      vms.push(im.vm);
    }
  }
  const words = Math.max(1, Math.ceil(vms.length / 32));
  // Per distinct page: an index into `masks` (bit per VM that holds it).
  const seen = new Map<string, number>();
  let masks = new Uint32Array(1024 * words);
  const r: IdealReport = {
    images: images.length,
    logicalBytes: 0,
    pages: 0,
    zeroPages: 0,
    nonZeroPages: 0,
    distinctPages: 0,
    dedupBytes: 0,
    dedupLz4Bytes: 0,
    incompressiblePages: 0,
    zstdLevel: ZSTD_DEFAULT_LEVEL,
    containerPages: IDEAL_CONTAINER_PAGES,
    dedupZstdPageBytes: null,
    dedupZstdContainerBytes: null,
    ...(typeof zb === 'string' ? { zstdUnavailable: zb } : {}),
    perImage: [],
    vms,
    vmDistinctPages: [],
    vmSharedWithAny: [],
    sharing: [],
  };
  for (const [i, im] of images.entries()) {
    const v = vmIndex.get(im.vm) as number;
    const word = v >>> 5;
    const bit = (1 << (v & 31)) >>> 0;
    const row: ImageIdeal = { vm: im.vm, snap: im.snap, logicalBytes: 0, pages: 0, zeroPages: 0, newDistinctPages: 0, newLz4Bytes: 0 };
    const bytes = await forEachPage(im, (page) => {
      row.pages++;
      if (page.equals(ZERO_PAGE)) {
        row.zeroPages++;
        return;
      }
      const key = blake3(page).toString('latin1');
      let slot = seen.get(key);
      if (slot === undefined) {
        slot = seen.size;
        seen.set(key, slot);
        if ((slot + 1) * words > masks.length) {
          const grown = new Uint32Array(masks.length * 2);
          grown.set(masks);
          masks = grown;
        }
        if (typeof zb !== 'string') zb.add(page);
        const lz = lz4PageBytes(page);
        if (lz === PAGE_SIZE) r.incompressiblePages++;
        row.newDistinctPages++;
        row.newLz4Bytes += lz;
      }
      masks[slot * words + word] |= bit;
    });
    row.logicalBytes = bytes;
    r.perImage.push(row);
    r.logicalBytes += bytes;
    r.pages += row.pages;
    r.zeroPages += row.zeroPages;
    r.distinctPages += row.newDistinctPages;
    r.dedupLz4Bytes += row.newLz4Bytes;
    onProgress?.(i + 1, images.length);
  }
  if (typeof zb !== 'string') {
    zb.finish();
    r.dedupZstdPageBytes = zb.pageBytes;
    r.dedupZstdContainerBytes = zb.containerBytes;
  }
  r.nonZeroPages = r.pages - r.zeroPages;
  r.dedupBytes = r.distinctPages * PAGE_SIZE;
  Object.assign(r, sharingOf(masks, seen.size, vms.length, words));
  return r;
}

function sharingOf(masks: Uint32Array, entries: number, nVm: number, words: number) {
  const vmDistinctPages = new Array<number>(nVm).fill(0);
  const withAny = new Array<number>(nVm).fill(0);
  const inter = Array.from({ length: nVm }, () => new Array<number>(nVm).fill(0));
  const members: number[] = [];
  for (let e = 0; e < entries; e++) {
    members.length = 0;
    for (let w = 0; w < words; w++) {
      let m = masks[e * words + w];
      while (m !== 0) {
        const low = m & -m;
        members.push(w * 32 + 31 - Math.clz32(low));
        m = (m ^ low) >>> 0;
      }
    }
    for (const a of members) {
      vmDistinctPages[a]++;
      if (members.length > 1) withAny[a]++;
      for (const b of members) inter[a][b]++;
    }
  }
  const share = (x: number, of: number) => (of === 0 ? 0 : x / of);
  return {
    vmDistinctPages,
    vmSharedWithAny: withAny.map((x, a) => share(x, vmDistinctPages[a])),
    sharing: inter.map((row, a) => row.map((x) => share(x, vmDistinctPages[a]))),
  };
}
