/** Chunk naming: BLAKE3-256 of a 4 KiB page, zero-page detection, and the whole-image digest. */
import { createRequire } from 'node:module';
import type * as BlakeHash from '@napi-rs/blake-hash';
import { DIGEST_BYTES, PAGE_SIZE, PageTable } from '../format/pages.js';

/**
 * The binding's own loader probes the C library with process.report.getReport() (~10 ms, in every
 * process and worker). On glibc Linux x64 load the platform binary directly; anywhere else, or if it
 * is missing or fails to load, fall back to the package's loader.
 */
function loadBlake3(): typeof BlakeHash.blake3 {
  const require = createRequire(import.meta.url);
  if (process.platform === 'linux' && process.arch === 'x64') {
    try {
      return (require('@napi-rs/blake-hash-linux-x64-gnu') as typeof BlakeHash).blake3;
    } catch {
      // musl, or the optional package was not installed
    }
  }
  return (require('@napi-rs/blake-hash') as typeof BlakeHash).blake3;
}

const blake3 = loadBlake3();

export const ZERO_PAGE: Buffer = Buffer.alloc(PAGE_SIZE);
const IMAGE_DIGEST_PREFIX = Buffer.from('vnstore-image-v1\0', 'latin1');

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
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(byteLength));
  // Zero pages contribute zero bytes; the table keeps stale digests only for non-Digest kinds, so clear them.
  const digests = Buffer.from(pages.digests.buffer, pages.digests.byteOffset, pages.pageCount * DIGEST_BYTES);
  const copy = Buffer.allocUnsafe(IMAGE_DIGEST_PREFIX.length + 8 + digests.length);
  IMAGE_DIGEST_PREFIX.copy(copy, 0);
  len.copy(copy, IMAGE_DIGEST_PREFIX.length);
  digests.copy(copy, IMAGE_DIGEST_PREFIX.length + 8);
  const base = IMAGE_DIGEST_PREFIX.length + 8;
  for (let i = 0; i < pages.pageCount; i++) {
    if (pages.kinds[i] !== 2 /* PageKind.Digest */) copy.fill(0, base + i * DIGEST_BYTES, base + (i + 1) * DIGEST_BYTES);
  }
  return hashPage(copy);
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}
