/**
 * Page codec: compress and decode 4 KiB guest pages, with a native batched hot path (native/, binds
 * the system liblz4) and a pure-TypeScript fallback (lz4-napi). Both read and write the same bytes.
 *
 * Stored payload format (on disk, see docs/FORMAT.md):
 *  - ChunkCodec.Raw: exactly PAGE_SIZE bytes, the page itself.
 *  - ChunkCodec.Lz4: a raw LZ4 block (no size prefix, no frame header), 1..PAGE_SIZE-1 bytes, that
 *    decodes to exactly PAGE_SIZE bytes. The raw size is implied by the page size, so no prefix.
 * Encoders choose Lz4 only when it is strictly smaller than the page; decoders reject anything else.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type * as Lz4Napi from 'lz4-napi';

// lz4-napi is only the fallback: load it on first use, not at every command's start-up.
let lz4napi: typeof Lz4Napi | undefined;
function lz4(): typeof Lz4Napi {
  lz4napi ??= createRequire(import.meta.url)('lz4-napi') as typeof Lz4Napi;
  return lz4napi;
}

import { PAGE_SIZE } from '../format/pages.js';

export { PAGE_SIZE };

/** Per-payload codec as stored on disk. Never renumber. */
export enum ChunkCodec {
  Raw = 0,
  Lz4 = 1,
}

export interface CompressedPages {
  /** Concatenated payloads, in input order (a view of `dst` when one was given). */
  payload: Buffer;
  /** Byte length of each payload. */
  lengths: Uint32Array;
  /** ChunkCodec of each payload (Raw when LZ4 does not make the page smaller). */
  codecs: Uint8Array;
}

export interface PageCodec {
  readonly kind: 'native' | 'js';
  /**
   * Compress pages; page i is src[offsets[i], offsets[i]+PAGE_SIZE). Throws RangeError on a bad
   * offset. With `dst` (offsets.length * PAGE_SIZE bytes or more, e.g. a reused shared slab) the
   * payloads are written there and `payload` is a view of it: no fresh memory per batch.
   */
  compressPages(src: Uint8Array, offsets: ArrayLike<number>, dst?: Uint8Array): CompressedPages;
  /**
   * Decode one stored payload into exactly PAGE_SIZE bytes at dst[dstOffset..]. Throws CodecError on
   * malformed/short/long output (the destination page's contents are then unspecified; bytes outside
   * it are never touched). Throws RangeError if dst lacks PAGE_SIZE bytes at dstOffset.
   */
  decodePage(payload: Uint8Array, codec: ChunkCodec, dst: Uint8Array, dstOffset: number): void;
  /**
   * Batch decode: payload is the concatenation of lengths.length payloads (as compressPages returns);
   * page i lands at dst[dstOffset + i*PAGE_SIZE]. The lengths must sum to payload.length exactly.
   * Same error rules as decodePage; the message names the failing page of the batch.
   */
  decodePages(payload: Uint8Array, lengths: ArrayLike<number>, codecs: ArrayLike<number>, dst: Uint8Array, dstOffset?: number): void;
  /**
   * Decodes chunk i, stored at src[offsets[i], +lengths[i]) with codecs[i], into page slots[i] of
   * out; failed[i] = 1 where it does not decode to exactly one page (that page's bytes are then
   * unspecified), else 0. Returns the failure count. A bad range or slot throws RangeError before
   * anything is written.
   */
  decodeChunks(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    codecs: Uint8Array,
    slots: Uint32Array,
    out: Uint8Array,
    failed: Uint8Array,
  ): number;
  /** mask[i] = 1 when page i of src (at i*PAGE_SIZE) is all zero, else 0. src must hold count pages. */
  zeroMask(src: Uint8Array, count: number): Uint8Array;
  /**
   * compressPages into `dst` on the libuv thread pool (native codec only): the main thread stays
   * free meanwhile. Arguments are checked before anything runs; until the promise settles, no
   * argument's buffer may be transferred or written.
   */
  compressPagesAsync?(src: Uint8Array, offsets: Uint32Array, dst: Uint8Array): Promise<CompressedPages>;
}

export class CodecError extends Error {
  readonly code = 'E_CODEC';
  override readonly name = 'CodecError';
}

/** Thrown by getCodec('native') when the addon cannot be used; 'auto' falls back instead. */
export class NativeUnavailableError extends Error {
  readonly code = 'E_NATIVE_UNAVAILABLE';
  override readonly name = 'NativeUnavailableError';
}

// ---------------------------------------------------------------------------------------------
// Shared argument checks (both codecs must reject the same inputs the same way).

function checkOffset(src: Uint8Array, off: number): void {
  if (!Number.isInteger(off) || off < 0 || off + PAGE_SIZE > src.length) {
    throw new RangeError(`page offset ${off} out of range of src (${src.length} bytes)`);
  }
}

function checkDst(dst: Uint8Array, dstOffset: number, pages: number): void {
  if (!Number.isInteger(dstOffset) || dstOffset < 0 || dstOffset + pages * PAGE_SIZE > dst.length) {
    throw new RangeError(`dst too small: need ${pages * PAGE_SIZE} bytes at offset ${dstOffset}, dst has ${dst.length}`);
  }
}

/** decodeChunks' argument rules, checked before anything is written (as the addon does). */
function checkChunks(
  src: Uint8Array,
  offsets: Uint32Array,
  lengths: Uint32Array,
  codecs: Uint8Array,
  slots: Uint32Array,
  out: Uint8Array,
  failed: Uint8Array,
): void {
  const n = offsets.length;
  if (lengths.length !== n || codecs.length !== n || slots.length !== n || failed.length !== n) {
    throw new TypeError('lengths, codecs, slots and failed need one element per offset');
  }
  for (let i = 0; i < n; i++) {
    if (offsets[i] + lengths[i] > src.length) throw new RangeError('chunk range out of range of src');
    if ((slots[i] + 1) * PAGE_SIZE > out.length) throw new RangeError('slot out of range of out');
  }
}

function checkCount(src: Uint8Array, count: number): void {
  if (!Number.isInteger(count) || count < 0 || count * PAGE_SIZE > src.length) {
    throw new RangeError(`count ${count} out of range: src holds ${Math.floor(src.length / PAGE_SIZE)} pages`);
  }
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

function asBuffer(a: Uint8Array): Buffer {
  return Buffer.isBuffer(a) ? a : Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Zero-page mask, shared by both codecs. Measured (bench/RESULTS.md) at ~20 ns per non-zero page and
 * ~120-200 ns per zero page, against ~2.5 us to hash a page, so a native version (tried: 13 / 104 ns)
 * did not earn its place. Most non-zero pages differ from zero in their first 64 bytes: probe those as
 * words, then memcmp the rest with Buffer#compare (ranges, no per-page view).
 */
function zeroMask(src: Uint8Array, count: number): Uint8Array {
  checkCount(src, count);
  const buf = asBuffer(src);
  const mask = new Uint8Array(count);
  const words = src.byteOffset % 4 === 0 ? new Uint32Array(src.buffer, src.byteOffset, count * (PAGE_SIZE / 4)) : null;
  for (let i = 0; i < count; i++) {
    const off = i * PAGE_SIZE;
    if (words !== null) {
      let acc = 0;
      const w = off / 4;
      for (let j = w; j < w + 16; j++) acc |= words[j];
      if (acc !== 0) continue;
    }
    mask[i] = buf.compare(ZERO_PAGE, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0 ? 1 : 0;
  }
  return mask;
}

// ---------------------------------------------------------------------------------------------
// Pure-TypeScript codec (lz4-napi, i.e. lz4_flex). lz4-napi's block API prepends / expects a 4-byte
// little-endian uncompressed size; the stored format has none, so we strip and re-add it here.

const LZ4_NAPI_PREFIX = 4;

class JsPageCodec implements PageCodec {
  readonly kind = 'js' as const;
  /** Reused framing buffer for decode: [u32le PAGE_SIZE][block]. Safe: uncompressSync is synchronous. */
  private readonly framed = Buffer.alloc(LZ4_NAPI_PREFIX + PAGE_SIZE);

  constructor() {
    this.framed.writeUInt32LE(PAGE_SIZE, 0);
  }

  compressPages(src: Uint8Array, offsets: ArrayLike<number>, dst?: Uint8Array): CompressedPages {
    const n = offsets.length;
    for (let i = 0; i < n; i++) checkOffset(src, offsets[i]);
    if (dst && dst.length < n * PAGE_SIZE) throw new RangeError('dst too small: need offsets.length * PAGE_SIZE bytes');
    const lengths = new Uint32Array(n);
    const codecs = new Uint8Array(n);
    const parts: Buffer[] = new Array<Buffer>(n);
    let total = 0;
    for (let i = 0; i < n; i++) {
      const page = Buffer.from(src.buffer, src.byteOffset + offsets[i], PAGE_SIZE);
      const framed = lz4().compressSync(page);
      const blockLen = framed.length - LZ4_NAPI_PREFIX;
      if (blockLen < PAGE_SIZE) {
        parts[i] = framed.subarray(LZ4_NAPI_PREFIX);
        codecs[i] = ChunkCodec.Lz4;
        lengths[i] = blockLen;
      } else {
        parts[i] = page;
        codecs[i] = ChunkCodec.Raw;
        lengths[i] = PAGE_SIZE;
      }
      total += lengths[i];
    }
    if (dst) {
      let pos = 0;
      for (const part of parts) {
        dst.set(part, pos);
        pos += part.length;
      }
      return { payload: Buffer.from(dst.buffer, dst.byteOffset, total), lengths, codecs };
    }
    // Buffer.concat copies, so the result never aliases src.
    return { payload: Buffer.concat(parts, total), lengths, codecs };
  }

  decodePage(payload: Uint8Array, codec: ChunkCodec, dst: Uint8Array, dstOffset: number): void {
    checkDst(dst, dstOffset, 1);
    this.decodeInto(payload, codec, dst, dstOffset, '');
  }

  decodePages(payload: Uint8Array, lengths: ArrayLike<number>, codecs: ArrayLike<number>, dst: Uint8Array, dstOffset = 0): void {
    const n = lengths.length;
    if (codecs.length !== n) throw new TypeError('codecs must have one element per length');
    checkDst(dst, dstOffset, n);
    let total = 0;
    for (let i = 0; i < n; i++) total += lengths[i];
    if (total !== payload.length) {
      throw new CodecError(`payload is ${payload.length} bytes but lengths sum to ${total}`);
    }
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const len = lengths[i];
      const one = payload.subarray(pos, pos + len);
      this.decodeInto(one, codecs[i], dst, dstOffset + i * PAGE_SIZE, `page ${i} of batch: `);
      pos += len;
    }
  }

  decodeChunks(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    codecs: Uint8Array,
    slots: Uint32Array,
    out: Uint8Array,
    failed: Uint8Array,
  ): number {
    checkChunks(src, offsets, lengths, codecs, slots, out, failed);
    let bad = 0;
    for (let i = 0; i < offsets.length; i++) {
      try {
        this.decodeInto(src.subarray(offsets[i], offsets[i] + lengths[i]), codecs[i], out, slots[i] * PAGE_SIZE, '');
        failed[i] = 0;
      } catch {
        failed[i] = 1;
        bad++;
      }
    }
    return bad;
  }

  zeroMask(src: Uint8Array, count: number): Uint8Array {
    return zeroMask(src, count);
  }

  private decodeInto(payload: Uint8Array, codec: number, dst: Uint8Array, dstOffset: number, where: string): void {
    const len = payload.length;
    if (codec === ChunkCodec.Raw) {
      if (len !== PAGE_SIZE) throw new CodecError(`${where}raw payload length is ${len}, not ${PAGE_SIZE}`);
      dst.set(payload, dstOffset);
      return;
    }
    if (codec === ChunkCodec.Lz4) {
      if (len === 0 || len >= PAGE_SIZE) throw new CodecError(`${where}lz4 payload length ${len} out of range`);
      this.framed.set(payload, LZ4_NAPI_PREFIX);
      let out: Buffer;
      try {
        out = lz4().uncompressSync(this.framed.subarray(0, LZ4_NAPI_PREFIX + len));
      } catch (err) {
        throw new CodecError(`${where}malformed lz4 block (${len} bytes)`, { cause: err });
      }
      if (out.length !== PAGE_SIZE) {
        throw new CodecError(`${where}lz4 block decodes to ${out.length} bytes, not ${PAGE_SIZE}`);
      }
      dst.set(out, dstOffset);
      return;
    }
    throw new CodecError(`${where}unknown codec ${codec}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Native codec: thin wrapper over native/ (one N-API call per batch). Argument errors are thrown as
// RangeError/TypeError by the addon; codec errors carry code E_CODEC and are re-thrown as CodecError
// so that callers can rely on instanceof.

/** The addon's exports (native/src/vnstore_native.c), ABI 6; its zstd half is read by zstd.ts. */
interface NativeBinding {
  readonly abi: number;
  readonly pageSize: number;
  readonly lz4Version: number;
  compressPages(
    src: Uint8Array,
    offsets: Uint32Array | Float64Array,
    lengths: Uint32Array,
    codecs: Uint8Array,
    dst?: Uint8Array,
  ): Buffer | number;
  compressPagesAsync(src: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, codecs: Uint8Array, dst: Uint8Array): Promise<number>;
  decodePage(payload: Uint8Array, codec: number, dst: Uint8Array, dstOffset: number): void;
  decodePages(payload: Uint8Array, lengths: Uint32Array, codecs: Uint8Array, dst: Uint8Array, dstOffset: number): void;
  decodeChunks(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    codecs: Uint8Array,
    slots: Uint32Array,
    out: Uint8Array,
    failed: Uint8Array,
  ): number;
  dropCacheAsync(path: string): Promise<number>;
  /** A write access to every 4 KiB page of `bytes`, contents kept, on the thread pool (optional: added within ABI 6). */
  touchPagesAsync?(bytes: Uint8Array): Promise<number>;
  /** Requests the chunk-table lines of `count` digests' probes (optional: added within ABI 6). */
  prefetchSlots?(words: Uint32Array, digests: Uint8Array, offset: number, stride: number, count: number): number;
  /** Absent when the process carries no zlib the addon can find. */
  crc32Async?(data: Uint8Array, crc: number): Promise<number>;
  /** crc32Async folds by carry-less multiplication (PCLMULQDQ) rather than zlib's tables. */
  readonly crc32Fold?: boolean;
}

const NATIVE_ABI = 6;

function rethrow(err: unknown): never {
  if (err instanceof Error && (err as NodeJS.ErrnoException).code === 'E_CODEC') {
    throw new CodecError(err.message, { cause: err });
  }
  throw err;
}

class NativePageCodec implements PageCodec {
  readonly kind = 'native' as const;
  constructor(private readonly b: NativeBinding) {}

  compressPages(src: Uint8Array, offsets: ArrayLike<number>, dst?: Uint8Array): CompressedPages {
    const n = offsets.length;
    // The addon reads offsets as Uint32Array or Float64Array; anything else is copied once.
    const offs = offsets instanceof Uint32Array || offsets instanceof Float64Array ? offsets : Float64Array.from(offsets);
    const lengths = new Uint32Array(n);
    const codecs = new Uint8Array(n);
    if (dst) {
      const total = this.b.compressPages(src, offs, lengths, codecs, dst) as number;
      return { payload: Buffer.from(dst.buffer, dst.byteOffset, total), lengths, codecs };
    }
    const payload = this.b.compressPages(src, offs, lengths, codecs) as Buffer;
    return { payload, lengths, codecs };
  }

  /** Not `async`: a bad argument throws at the call, as with compressPages. */
  compressPagesAsync(src: Uint8Array, offsets: Uint32Array, dst: Uint8Array): Promise<CompressedPages> {
    const lengths = new Uint32Array(offsets.length);
    const codecs = new Uint8Array(offsets.length);
    return this.b
      .compressPagesAsync(src, offsets, lengths, codecs, dst)
      .then((total) => ({ payload: Buffer.from(dst.buffer, dst.byteOffset, total), lengths, codecs }));
  }

  decodePage(payload: Uint8Array, codec: ChunkCodec, dst: Uint8Array, dstOffset: number): void {
    try {
      this.b.decodePage(payload, codec, dst, dstOffset);
    } catch (err) {
      rethrow(err);
    }
  }

  decodePages(payload: Uint8Array, lengths: ArrayLike<number>, codecs: ArrayLike<number>, dst: Uint8Array, dstOffset = 0): void {
    const lens = lengths instanceof Uint32Array ? lengths : Uint32Array.from(lengths);
    const cods = codecs instanceof Uint8Array ? codecs : Uint8Array.from(codecs);
    try {
      this.b.decodePages(payload, lens, cods, dst, dstOffset);
    } catch (err) {
      rethrow(err);
    }
  }

  decodeChunks(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    codecs: Uint8Array,
    slots: Uint32Array,
    out: Uint8Array,
    failed: Uint8Array,
  ): number {
    return this.b.decodeChunks(src, offsets, lengths, codecs, slots, out, failed);
  }

  zeroMask(src: Uint8Array, count: number): Uint8Array {
    return zeroMask(src, count);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading and selection.

const ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/vnstore_native.node', import.meta.url));

let jsCodec: JsPageCodec | undefined;
let nativeCodec: NativePageCodec | null | undefined; // undefined = not tried, null = unavailable
let nativeError: Error | undefined;
let nativeLz4Version = 0;
let nativeBinding: NativeBinding | undefined;

function loadNative(): NativePageCodec | null {
  if (nativeCodec !== undefined) return nativeCodec;
  try {
    const requireNative = createRequire(import.meta.url);
    const b = requireNative(ADDON_PATH) as NativeBinding;
    if (b.abi !== NATIVE_ABI || b.pageSize !== PAGE_SIZE) {
      throw new Error(`addon ABI ${String(b.abi)} / page ${String(b.pageSize)}, want ${NATIVE_ABI} / ${PAGE_SIZE}: rebuild it`);
    }
    const codec = new NativePageCodec(b);
    selfTest(codec);
    nativeCodec = codec;
    nativeLz4Version = b.lz4Version;
    nativeBinding = b;
  } catch (err) {
    nativeError = err instanceof Error ? err : new Error(String(err));
    nativeCodec = null;
  }
  return nativeCodec;
}

/** A compressible and an incompressible page must round-trip before we trust the addon with data. */
function selfTest(codec: PageCodec): void {
  const src = new Uint8Array(2 * PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) src[i] = (i * 7) & 0x3f;
  let x = 0x9e3779b9;
  for (let i = PAGE_SIZE; i < 2 * PAGE_SIZE; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    src[i] = x & 0xff;
  }
  const c = codec.compressPages(src, [0, PAGE_SIZE]);
  if (c.codecs[0] !== ChunkCodec.Lz4 || c.codecs[1] !== ChunkCodec.Raw) throw new Error('native self-test: codec choice');
  const out = new Uint8Array(2 * PAGE_SIZE);
  codec.decodePages(c.payload, c.lengths, c.codecs, out, 0);
  if (!asBuffer(out).equals(asBuffer(src))) throw new Error('native self-test: round trip mismatch');
}

/**
 * Drops a durable file's pages from the page cache, on the thread pool (the addon's dropCacheAsync):
 * resolves to 0, or the errno of the failed open or advice (ENOENT: the file is gone). Undefined
 * when the addon is not loaded: the pages then stay cached, as any file's do.
 */
export function dropFileCache(path: string): Promise<number> | undefined {
  loadNative();
  return nativeBinding?.dropCacheAsync(path);
}

/**
 * Gives `bytes` its pages on the thread pool (the addon's touchPagesAsync: each 4 KiB page written
 * to, its contents kept), or undefined without the addon: the memory then gets its pages where it
 * is first used, as any memory does.
 */
export function touchOnThreadPool(): ((bytes: Uint8Array) => Promise<number>) | undefined {
  loadNative();
  const b = nativeBinding;
  return b?.touchPagesAsync ? (bytes) => b.touchPagesAsync!(bytes) : undefined;
}

/**
 * The addon's prefetchSlots (chunk-table lines requested for a batch of digests before they are
 * probed one by one), or undefined without it: the probes then wait for each line in turn.
 */
export function slotPrefetch():
  ((words: Uint32Array, digests: Uint8Array, offset: number, stride: number, count: number) => void) | undefined {
  loadNative();
  const b = nativeBinding;
  return b?.prefetchSlots; // called bare: the addon's function uses no `this`
}

/**
 * zlib's CRC-32 of `data` continuing `crc`, on the thread pool (the addon's crc32Async), or undefined
 * when the addon or its zlib is missing (the caller then uses node:zlib's, on its own thread).
 */
export function crc32OnThreadPool(): ((data: Uint8Array, crc: number) => Promise<number>) | undefined {
  loadNative();
  const b = nativeBinding;
  return b?.crc32Async ? (data, crc) => b.crc32Async!(data, crc) : undefined;
}

/** How crc32OnThreadPool computes: 'pclmul' (folding, where the CPU has it), 'zlib', or undefined without it. */
export function crc32Kind(): 'pclmul' | 'zlib' | undefined {
  loadNative();
  const b = nativeBinding;
  return b?.crc32Async ? (b.crc32Fold ? 'pclmul' : 'zlib') : undefined;
}

/**
 * The loaded, self-tested addon's exports (undefined when it does not load), for the modules that
 * bind its other halves (zstd.ts): one load, one ABI check.
 */
export function nativeAddon(): object | undefined {
  loadNative();
  return nativeBinding;
}

/**
 * Cached codec. 'auto' (default) = native when it loads, else js; env VNSTORE_NATIVE=0 makes 'auto'
 * pick js. An explicit 'native' ignores the env and throws NativeUnavailableError if the addon is
 * missing (tests and benchmarks use it to compare both paths).
 */
export function getCodec(prefer: 'native' | 'js' | 'auto' = 'auto'): PageCodec {
  if (prefer === 'native') {
    const n = loadNative();
    if (n === null) {
      throw new NativeUnavailableError(`native page codec unavailable: ${nativeError?.message ?? 'unknown'}`, {
        cause: nativeError,
      });
    }
    return n;
  }
  if (prefer === 'auto' && process.env.VNSTORE_NATIVE !== '0') {
    const n = loadNative();
    if (n !== null) return n;
  }
  jsCodec ??= new JsPageCodec();
  return jsCodec;
}

/**
 * Diagnostics (`vnstore version`, test/global-setup.ts): whether the addon loaded and passed its
 * self-test, and why not. `active` is the codec getCodec() gives (VNSTORE_NATIVE=0 picks js).
 */
export function nativeCodecStatus(): { loaded: boolean; active: 'native' | 'js'; abi: number; lz4Version?: number; error?: string } {
  const n = loadNative();
  const common = { active: getCodec().kind, abi: NATIVE_ABI };
  return n !== null ? { loaded: true, lz4Version: nativeLz4Version, ...common } : { loaded: false, error: nativeError?.message, ...common };
}
