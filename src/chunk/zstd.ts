/**
 * zstd codec for cold data: many blobs (single pages, or containers of many pages) compressed into
 * standard zstd frames in one native call, and decoded likewise. The native path binds the system
 * libzstd.so.1 in the vnstore_native addon (native/src/zstd_codec.c), as the page codec binds liblz4.
 * Without the addon or libzstd, the fallback is fzstd, a pure-JS decompressor: a store whose chunks
 * were recompressed with zstd must stay readable anywhere, while compressing (a background job) can
 * wait for a machine with the library. fzstd cannot use dictionaries, so a frame that names one is
 * refused there with a CodecError that says so.
 *
 * Frame form (docs/FORMAT.md when the pack format records it): one zstd frame per blob, content size
 * in the header, no checksum (vnstore checks page digests itself), optionally against a dictionary.
 */
import { createRequire } from 'node:module';
import type * as Fzstd from 'fzstd';
import { CodecError, NativeUnavailableError, nativeAddon } from './codec.js';

/** The level `vnstore bench` bounds use and the recommendation in docs/DESIGN.md. */
export const ZSTD_DEFAULT_LEVEL = 3;

export interface ZstdFrames {
  /** Frames in input order, back to back. */
  payload: Buffer;
  /** Byte length of each frame. */
  lengths: Uint32Array;
}

export interface ZstdCodec {
  readonly kind: 'native' | 'js';
  /** False on the fallback, which only decompresses. */
  readonly canCompress: boolean;
  /**
   * Blob i = src[starts[i], +sizes[i]) becomes one frame at `level` (1..22), with `dict` if given.
   * Throws RangeError on bad ranges or level, NativeUnavailableError on the fallback.
   */
  compress(src: Uint8Array, starts: Uint32Array, sizes: Uint32Array, level: number, dict?: Uint8Array): ZstdFrames;
  /**
   * compress on the libuv thread pool (background recompression must not hold the main thread).
   * Arguments are checked at the call, which throws as compress does; until the promise settles no
   * argument's buffer may be written or transferred.
   */
  compressAsync(src: Uint8Array, starts: Uint32Array, sizes: Uint32Array, level: number, dict?: Uint8Array): Promise<ZstdFrames>;
  /**
   * Frame i = src[offsets[i], +lengths[i]) must decode to exactly outSizes[i] bytes, written at
   * out[outStarts[i]..]. Throws RangeError on bad ranges (before writing), CodecError on the first
   * frame that does not decode (naming it; that frame's room is then unspecified, bytes outside the
   * rooms are never touched).
   */
  decompress(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    out: Uint8Array,
    outStarts: Uint32Array,
    outSizes: Uint32Array,
    dict?: Uint8Array,
  ): void;
  /** Trains a dictionary of at most `capacity` bytes on the concatenated samples (native only). */
  train(samples: Uint8Array, sampleSizes: Uint32Array, capacity: number): Buffer;
}

/** ZSTD_COMPRESSBOUND (zstd.h): room enough for one frame of n bytes, at any level. */
export function zstdBound(n: number): number {
  const small = 128 << 10;
  return n + (n >>> 8) + (n < small ? (small - n) >>> 11 : 0);
}

// ---------------------------------------------------------------------------------------------
// Shared argument rules (both paths refuse the same inputs the same way).

function checkDecompress(
  src: Uint8Array,
  offsets: Uint32Array,
  lengths: Uint32Array,
  out: Uint8Array,
  outStarts: Uint32Array,
  outSizes: Uint32Array,
): void {
  const n = offsets.length;
  if (lengths.length !== n || outStarts.length !== n || outSizes.length !== n) {
    throw new TypeError('lengths, outStarts and outSizes need one element per offset');
  }
  for (let i = 0; i < n; i++) {
    if (offsets[i] + lengths[i] > src.length) throw new RangeError('frame range out of range of src');
    if (outStarts[i] + outSizes[i] > out.length) throw new RangeError('output range out of range of out');
  }
}

// ---------------------------------------------------------------------------------------------
// Native path.

/** Worst-case output room for one batch, and its lengths array. */
function room(starts: Uint32Array, sizes: Uint32Array): { dst: Buffer; lengths: Uint32Array } {
  let bytes = 0;
  for (let i = 0; i < sizes.length; i++) bytes += zstdBound(sizes[i]);
  return { dst: Buffer.allocUnsafe(bytes), lengths: new Uint32Array(starts.length) };
}

/** Copies the frames out of the worst-case buffer, so that a long-lived payload does not pin the slack. */
function framesOf(dst: Buffer, total: number, lengths: Uint32Array): ZstdFrames {
  return { payload: Buffer.from(dst.subarray(0, total)), lengths };
}

interface ZstdBinding {
  readonly zstdVersion: number;
  readonly zstdMaxLevel: number;
  readonly zstdError: string;
  zstdCompress(
    src: Uint8Array,
    starts: Uint32Array,
    sizes: Uint32Array,
    level: number,
    lengths: Uint32Array,
    dst: Uint8Array,
    dict?: Uint8Array,
  ): number;
  zstdCompressAsync(
    src: Uint8Array,
    starts: Uint32Array,
    sizes: Uint32Array,
    level: number,
    lengths: Uint32Array,
    dst: Uint8Array,
    dict?: Uint8Array,
  ): Promise<number>;
  zstdDecompress(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    out: Uint8Array,
    outStarts: Uint32Array,
    outSizes: Uint32Array,
    dict?: Uint8Array,
  ): void;
  zstdTrain(samples: Uint8Array, sampleSizes: Uint32Array, capacity: number): Buffer;
}

function rethrow(err: unknown): never {
  const code = err instanceof Error ? (err as NodeJS.ErrnoException).code : undefined;
  if (code === 'E_CODEC') throw new CodecError((err as Error).message, { cause: err });
  if (code === 'E_NATIVE_UNAVAILABLE') throw new NativeUnavailableError((err as Error).message, { cause: err });
  throw err;
}

class NativeZstd implements ZstdCodec {
  readonly kind = 'native' as const;
  readonly canCompress = true;
  /** ZSTD_versionNumber(): major*10000 + minor*100 + release. */
  readonly libVersion: number;
  constructor(private readonly b: ZstdBinding) {
    this.libVersion = b.zstdVersion;
  }

  compress(src: Uint8Array, starts: Uint32Array, sizes: Uint32Array, level: number, dict?: Uint8Array): ZstdFrames {
    const { dst, lengths } = room(starts, sizes);
    try {
      return framesOf(dst, this.b.zstdCompress(src, starts, sizes, level, lengths, dst, dict), lengths);
    } catch (err) {
      rethrow(err);
    }
  }

  /** Not `async`: a bad argument throws at the call, as with compress. */
  compressAsync(src: Uint8Array, starts: Uint32Array, sizes: Uint32Array, level: number, dict?: Uint8Array): Promise<ZstdFrames> {
    const { dst, lengths } = room(starts, sizes);
    let pending: Promise<number>;
    try {
      pending = this.b.zstdCompressAsync(src, starts, sizes, level, lengths, dst, dict);
    } catch (err) {
      rethrow(err);
    }
    return pending.then(
      (total) => framesOf(dst, total, lengths),
      (err: unknown) => rethrow(err),
    );
  }

  decompress(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    out: Uint8Array,
    outStarts: Uint32Array,
    outSizes: Uint32Array,
    dict?: Uint8Array,
  ): void {
    try {
      this.b.zstdDecompress(src, offsets, lengths, out, outStarts, outSizes, dict);
    } catch (err) {
      rethrow(err);
    }
  }

  train(samples: Uint8Array, sampleSizes: Uint32Array, capacity: number): Buffer {
    try {
      return this.b.zstdTrain(samples, sampleSizes, capacity);
    } catch (err) {
      rethrow(err);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fallback: fzstd (decompression only), loaded on first use.

let fzstdModule: typeof Fzstd | undefined;
function fzstd(): typeof Fzstd {
  fzstdModule ??= createRequire(import.meta.url)('fzstd') as typeof Fzstd;
  return fzstdModule;
}

const ZSTD_MAGIC = 0xfd2fb528;

class JsZstd implements ZstdCodec {
  readonly kind = 'js' as const;
  readonly canCompress = false;
  constructor(private readonly why: string) {}

  compress(): ZstdFrames {
    throw new NativeUnavailableError(`zstd compression needs the native addon and libzstd.so.1 (${this.why})`);
  }

  compressAsync(): Promise<ZstdFrames> {
    return Promise.resolve(this.compress());
  }

  train(): Buffer {
    throw new NativeUnavailableError(`zstd dictionary training needs the native addon and libzstd.so.1 (${this.why})`);
  }

  decompress(
    src: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    out: Uint8Array,
    outStarts: Uint32Array,
    outSizes: Uint32Array,
    dict?: Uint8Array,
  ): void {
    checkDecompress(src, offsets, lengths, out, outStarts, outSizes);
    if (dict !== undefined)
      throw new CodecError('zstd frames with a dictionary need the native addon and libzstd.so.1 (fzstd has no dictionary support)');
    for (let i = 0; i < offsets.length; i++) {
      const where = `frame ${i} of batch`;
      const frame = src.subarray(offsets[i], offsets[i] + lengths[i]);
      if (frame.length === 0) throw new CodecError(`${where}: empty`);
      // fzstd would ignore a dictionary ID and decode garbage; libzstd refuses such a frame too.
      if (frame.length >= 5 && new DataView(frame.buffer, frame.byteOffset).getUint32(0, true) === ZSTD_MAGIC && (frame[4] & 3) !== 0) {
        throw new CodecError(`${where}: frame needs a dictionary`);
      }
      let data: Uint8Array;
      try {
        data = fzstd().decompress(frame);
      } catch (err) {
        throw new CodecError(`${where}: malformed zstd frame (${frame.length} bytes)`, { cause: err });
      }
      if (data.length !== outSizes[i]) throw new CodecError(`${where} decodes to ${data.length} bytes, not ${outSizes[i]}`);
      out.set(data, outStarts[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Selection.

let native: NativeZstd | null | undefined;
let nativeWhy = '';

function loadNative(): NativeZstd | null {
  if (native !== undefined) return native;
  const b = nativeAddon() as Partial<ZstdBinding> | undefined;
  if (b === undefined) {
    nativeWhy = 'native addon not loaded';
    native = null;
  } else if (!b.zstdVersion) {
    nativeWhy = b.zstdError || 'libzstd unavailable';
    native = null;
  } else {
    native = new NativeZstd(b as ZstdBinding);
  }
  return native;
}

let js: JsZstd | undefined;

/**
 * 'auto' (default): native when the addon and libzstd load, else the decompress-only fallback;
 * VNSTORE_NATIVE=0 makes 'auto' pick the fallback. 'native' throws NativeUnavailableError instead.
 */
export function getZstd(prefer: 'native' | 'js' | 'auto' = 'auto'): ZstdCodec {
  if (prefer !== 'js' && (prefer === 'native' || process.env.VNSTORE_NATIVE !== '0')) {
    const n = loadNative();
    if (n !== null) return n;
    if (prefer === 'native') throw new NativeUnavailableError(`native zstd unavailable: ${nativeWhy}`);
  }
  js ??= new JsZstd(process.env.VNSTORE_NATIVE === '0' && prefer === 'auto' ? 'disabled by VNSTORE_NATIVE=0' : nativeWhy || 'not tried');
  return js;
}

/** For `vnstore version`: the active zstd path, libzstd's version, and why the fallback serves. */
export function zstdStatus(): { path: 'native' | 'js'; libzstd?: string; reason?: string } {
  const n = loadNative();
  const active = getZstd().kind;
  const reason = active === 'native' ? undefined : process.env.VNSTORE_NATIVE === '0' ? 'disabled by VNSTORE_NATIVE=0' : nativeWhy;
  if (n === null) return { path: active, reason };
  const v = n.libVersion;
  return {
    path: active,
    libzstd: `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`,
    ...(reason !== undefined ? { reason } : {}),
  };
}
