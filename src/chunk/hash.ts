/** Chunk naming: BLAKE3-256 of a 4 KiB page, zero-page detection, and the whole-image digest. */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type * as BlakeHash from '@napi-rs/blake-hash';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable } from '../format/pages.js';

/**
 * The binding's own loader probes the C library with process.report.getReport() (~10 ms, in every
 * process and worker). On glibc Linux x64 load the platform binary directly; anywhere else, or if it
 * is missing or fails to load, fall back to the package's loader.
 */
function loadBlake3(): typeof BlakeHash {
  const require = createRequire(import.meta.url);
  if (process.platform === 'linux' && process.arch === 'x64') {
    try {
      return require('@napi-rs/blake-hash-linux-x64-gnu') as typeof BlakeHash;
    } catch {
      // musl, or the optional package was not installed
    }
  }
  return require('@napi-rs/blake-hash') as typeof BlakeHash;
}

const { blake3, Blake3Hasher } = loadBlake3();

/** native/src/blake3_pages.c, ABI 3: BLAKE3 of whole pages, eight or sixteen per SIMD pass. */
interface HashBinding {
  readonly abi: number;
  /** "avx512" (16 lanes), "avx512vl" or "avx2" (8 lanes), or "" when the CPU has no kernel. */
  readonly simd: string;
  hashPages(src: Uint8Array, pages: Uint32Array, out: Uint8Array): void;
  scanPagesAsync(src: Uint8Array, count: number, zero: Uint8Array, out: Uint8Array): Promise<number>;
  scanFileAsync(
    fd: number,
    position: number,
    length: number,
    dst: Uint8Array,
    count: number,
    zero: Uint8Array,
    out: Uint8Array,
  ): Promise<number>;
}

const HASH_ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/vnstore_hash.node', import.meta.url));
const HASH_ADDON_ABI = 3;
let pageHasher: HashBinding | null | undefined; // undefined = not tried, null = unavailable
let pageHasherError = '';
/**
 * What became of the addon itself: 'loaded' (it loads, has our ABI, and its kernel, if the CPU has
 * one, passed the self-test), 'failed' (missing, does not load, or wrong) or 'disabled'. A CPU
 * without AVX2 leaves it 'loaded' but unused: that is a machine, not a broken build.
 */
let pageHasherAddon: 'loaded' | 'failed' | 'disabled' = 'failed';

/**
 * The multi-page hasher, if built, on a CPU it has a kernel for, and not disabled by
 * VNSTORE_NATIVE=0; it must reproduce @napi-rs/blake-hash on a self-test before it is trusted.
 */
function loadPageHasher(): HashBinding | null {
  if (pageHasher !== undefined) return pageHasher;
  pageHasher = null;
  if (process.env.VNSTORE_NATIVE === '0') {
    pageHasherError = 'disabled by VNSTORE_NATIVE=0';
    pageHasherAddon = 'disabled';
    return null;
  }
  try {
    const b = createRequire(import.meta.url)(HASH_ADDON_PATH) as HashBinding;
    if (b.abi !== HASH_ADDON_ABI) throw new Error(`addon ABI ${String(b.abi)}, want ${HASH_ADDON_ABI}: rebuild it`);
    if (!b.simd) {
      pageHasherAddon = 'loaded';
      throw new Error('no SIMD kernel for this CPU (AVX2 needed)');
    }
    selfTest(b);
    pageHasher = b;
    pageHasherAddon = 'loaded';
  } catch (err) {
    pageHasherError = err instanceof Error ? err.message : String(err);
  }
  return pageHasher;
}

/** Nine pages (one full group of eight and one short) must match @napi-rs/blake-hash. */
function selfTest(b: HashBinding): void {
  const src = new Uint8Array(3 * PAGE_SIZE);
  for (let i = 0; i < src.length; i++) src[i] = (i * 131 + (i >>> 12) * 7) & 0xff;
  const pages = Uint32Array.of(2, 0, 1, 2, 1, 0, 0, 2, 1);
  const out = new Uint8Array(3 * DIGEST_BYTES);
  b.hashPages(src, pages, out);
  for (let p = 0; p < 3; p++) {
    const want = blake3(Buffer.from(src.buffer, p * PAGE_SIZE, PAGE_SIZE));
    if (!want.equals(Buffer.from(out.buffer, p * DIGEST_BYTES, DIGEST_BYTES))) throw new Error(`self-test mismatch (${b.simd} kernel)`);
  }
}

/**
 * BLAKE3-256 of many whole pages of `src`: for each index p in `pages`, out[p*32 .. p*32+32) gets
 * the digest of src page p (digests land at their page's index; other slots of `out` are left as
 * they are). One native call for the lot where the addon serves, else one @napi-rs call per page.
 */
export function hashPages(src: Uint8Array, pages: Uint32Array, out: Uint8Array): void {
  const native = loadPageHasher();
  if (native) {
    native.hashPages(src, pages, out);
    return;
  }
  // Same contract as the addon: whole pages only, every index checked before anything is written.
  const srcPages = Math.floor(src.length / PAGE_SIZE);
  for (const p of pages) if (p >= srcPages || (p + 1) * DIGEST_BYTES > out.length) throw new RangeError(`page ${p} out of range`);
  for (const p of pages) out.set(hashPage(src.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)), p * DIGEST_BYTES);
}

/** The thread-pool page scanner's two calls (see pageScanner). */
export type PageScanner = Pick<HashBinding, 'scanPagesAsync' | 'scanFileAsync'>;

/**
 * The thread-pool page scanner, where the addon serves. scanPagesAsync(src, count, zero, out) sets
 * zero[p] to 1 for each all-zero page p of src's first `count` pages and hashes the others into
 * out[p*32 ..], off the main thread; it resolves to the non-zero count. scanFileAsync(fd, position,
 * length, dst, count, zero, out) first reads `length` bytes of the file at `position` into dst and
 * zero-pads them to `count` pages, in the same thread-pool job; it resolves to the bytes read (fewer
 * if the file ended first, and then nothing is scanned) or to -errno. The page buffer must be 8-byte
 * aligned, and no buffer may be transferred or written until the call settles.
 */
export function pageScanner(): PageScanner | undefined {
  return loadPageHasher() ?? undefined; // its N-API functions need no `this`
}

/**
 * Which page hasher serves hashPages(): the SIMD kernel's name, or why the fallback is used; and
 * whether the addon itself loaded (`addon`), which CI requires (test/global-setup.ts).
 */
export function pageHasherStatus(): {
  native: boolean;
  simd?: string;
  error?: string;
  addon: 'loaded' | 'failed' | 'disabled';
  abi: number;
} {
  const n = loadPageHasher();
  const common = { addon: pageHasherAddon, abi: HASH_ADDON_ABI };
  return n ? { native: true, simd: n.simd, ...common } : { native: false, error: pageHasherError, ...common };
}

export const ZERO_PAGE: Buffer = Buffer.alloc(PAGE_SIZE);
const IMAGE_DIGEST_PREFIX = Buffer.from('vnstore-image-v1\0', 'latin1');
const DIGEST_CHUNK_PAGES = 2048;
const digestChunk = Buffer.alloc(DIGEST_CHUNK_PAGES * DIGEST_BYTES);

/** BLAKE3-256 of a page (a zero-copy Buffer view: the binding's typings take Buffers only). */
export function hashPage(page: Uint8Array): Buffer {
  return blake3(Buffer.isBuffer(page) ? page : Buffer.from(page.buffer, page.byteOffset, page.length));
}

/** memcmp against a zero page: one native call, far faster than a JS loop. */
export function isZeroPage(src: Uint8Array, offset: number): boolean {
  return Buffer.compare(Buffer.from(src.buffer, src.byteOffset + offset, PAGE_SIZE), ZERO_PAGE) === 0;
}

/**
 * Whole-image digest: BLAKE3("vnstore-image-v1\0" || u64le byteLength || per page its 32-byte digest,
 * 32 zero bytes for a zero page). It binds every page's content and position and the exact length,
 * and can be computed from page digests alone, so out-of-order session writes need no second pass.
 */
export function imageDigest(pages: PageTable, byteLength: number): Buffer {
  const hasher = new Blake3Hasher();
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(byteLength));
  hasher.update(IMAGE_DIGEST_PREFIX).update(len);
  // The digest list goes through a reused 64 KiB buffer: no copy of the whole list (megabytes of
  // fresh memory for a large VM), and one hasher call per 2048 pages instead of one per run of
  // digest or zero pages (tens of thousands of calls for a typical image: 7-10 ms of 448 MiB's put).
  // Non-digest pages contribute zeros; the table may hold stale digests for them.
  const digests = pages.digests;
  const kinds = pages.kinds;
  for (let first = 0; first < pages.pageCount; first += DIGEST_CHUNK_PAGES) {
    const n = Math.min(DIGEST_CHUNK_PAGES, pages.pageCount - first);
    for (let i = 0; i < n;) {
      const isDigest = kinds[first + i] === PageKind.Digest;
      let j = i + 1;
      while (j < n && (kinds[first + j] === PageKind.Digest) === isDigest) j++;
      if (isDigest) digestChunk.set(digests.subarray((first + i) * DIGEST_BYTES, (first + j) * DIGEST_BYTES), i * DIGEST_BYTES);
      else digestChunk.fill(0, i * DIGEST_BYTES, j * DIGEST_BYTES);
      i = j;
    }
    hasher.update(digestChunk.subarray(0, n * DIGEST_BYTES));
  }
  return hasher.digestBuffer();
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}
