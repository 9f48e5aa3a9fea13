// The zstd codec (src/chunk/zstd.ts, native/src/zstd_codec.c): frames round-trip at every level and
// size, the native path and the pure-JS fallback decode the same frames to the same bytes, and
// corrupt or mismatched input is refused with a CodecError on both, never written past its room.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CodecError, NativeUnavailableError } from '../src/chunk/codec.js';
import { getZstd, zstdBound, zstdStatus, type ZstdCodec } from '../src/chunk/zstd.js';

const required = /^(1|true)$/i.test(process.env.CI ?? '') || process.env.VNSTORE_REQUIRE_NATIVE === '1';
// 'native' ignores VNSTORE_NATIVE=0, so both paths are compared wherever libzstd is there.
const native = safeNative();
const js = getZstd('js');
const decoders: ZstdCodec[] = native ? [native, js] : [js];
const zstdCli = spawnSync('zstd', ['--version']).status === 0;

function safeNative(): ZstdCodec | null {
  try {
    return getZstd('native');
  } catch {
    return null;
  }
}

/** Blobs like guest memory: runs of a byte, repeated short patterns, text-like words, random bytes. */
const part = fc.oneof(
  fc.record({ b: fc.integer({ min: 0, max: 255 }), n: fc.integer({ min: 1, max: 6000 }) }).map(({ b, n }) => new Uint8Array(n).fill(b)),
  fc
    .record({ p: fc.uint8Array({ minLength: 1, maxLength: 48 }), n: fc.integer({ min: 1, max: 9000 }) })
    .map(({ p, n }) => Uint8Array.from({ length: n }, (_, i) => p[i % p.length])),
  fc.uint8Array({ minLength: 1, maxLength: 3000 }),
);
const blob = fc.array(part, { minLength: 0, maxLength: 12 }).map((parts) => Buffer.concat(parts));

function layout(blobs: Uint8Array[]): { src: Buffer; starts: Uint32Array; sizes: Uint32Array } {
  const src = Buffer.concat(blobs);
  const starts = new Uint32Array(blobs.length);
  const sizes = Uint32Array.from(blobs, (b) => b.length);
  for (let i = 1; i < blobs.length; i++) starts[i] = starts[i - 1] + sizes[i - 1];
  return { src, starts, sizes };
}

function frameOffsets(lengths: Uint32Array): Uint32Array {
  const offs = new Uint32Array(lengths.length);
  for (let i = 1; i < lengths.length; i++) offs[i] = offs[i - 1] + lengths[i - 1];
  return offs;
}

/** Decodes every frame with `codec` into a fresh buffer the size of src. */
function decodeAll(
  codec: ZstdCodec,
  payload: Uint8Array,
  lengths: Uint32Array,
  starts: Uint32Array,
  sizes: Uint32Array,
  total: number,
  dict?: Uint8Array,
): Buffer {
  const out = Buffer.alloc(total, 0xa5);
  codec.decompress(payload, frameOffsets(lengths), lengths, out, starts, sizes, dict);
  return out;
}

describe('zstd: availability', () => {
  it.runIf(required)('CI and the sanitizer pass run the native zstd path (libzstd.so.1 bound)', () => {
    expect(native).not.toBeNull();
    expect(zstdStatus().libzstd).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('the fallback decompresses only: compressing there is a typed error', () => {
    expect(js.canCompress).toBe(false);
    expect(() => js.compress(Buffer.alloc(10), new Uint32Array([0]), new Uint32Array([10]), 3)).toThrow(NativeUnavailableError);
    expect(() => js.train(Buffer.alloc(10), new Uint32Array([10]), 1024)).toThrow(NativeUnavailableError);
    expect(() => js.compressAsync(Buffer.alloc(10), new Uint32Array([0]), new Uint32Array([10]), 3)).toThrow(NativeUnavailableError);
  });

  it('zstdBound is ZSTD_COMPRESSBOUND', () => {
    expect(zstdBound(0)).toBe(64);
    expect(zstdBound(4096)).toBe(4096 + 16 + 62);
    expect(zstdBound(128 << 10)).toBe((128 << 10) + 512);
    expect(zstdBound(1 << 20)).toBe((1 << 20) + 4096);
  });
});

describe.runIf(native !== null)('zstd: native round trips, both decoders agree', () => {
  const z = native as ZstdCodec;

  it('any batch of blobs at levels 1, 3, 9 and 19 decodes to exactly its bytes on both paths', () => {
    fc.assert(
      fc.property(fc.array(blob, { minLength: 1, maxLength: 6 }), fc.constantFrom(1, 3, 9, 19), (blobs, level) => {
        const { src, starts, sizes } = layout(blobs);
        const { payload, lengths } = z.compress(src, starts, sizes, level);
        expect(lengths.reduce((s, x) => s + x, 0)).toBe(payload.length);
        for (const d of decoders) expect(decodeAll(d, payload, lengths, starts, sizes, src.length).equals(src)).toBe(true);
      }),
      { numRuns: 60 },
    );
  });

  it('4 KiB pages and a 64 KiB container of them decode exactly, and the container is smaller', () => {
    // Pages that repeat one another's content at a distance, as neighbouring heap pages do.
    const words = Buffer.from(Array.from({ length: 4096 }, (_, i) => ((i * 2654435761) >>> 13) & 0xff));
    const pages = Array.from({ length: 16 }, (_, p) => Buffer.concat([words.subarray(p * 97, 4096), words.subarray(0, p * 97)]));
    const per = layout(pages);
    const perFrames = z.compress(per.src, per.starts, per.sizes, 3);
    const box = z.compress(per.src, new Uint32Array([0]), new Uint32Array([per.src.length]), 3);
    expect(box.payload.length).toBeLessThan(perFrames.payload.length);
    for (const d of decoders) {
      expect(decodeAll(d, perFrames.payload, perFrames.lengths, per.starts, per.sizes, per.src.length).equals(per.src)).toBe(true);
      expect(
        decodeAll(d, box.payload, box.lengths, new Uint32Array([0]), new Uint32Array([per.src.length]), per.src.length).equals(per.src),
      ).toBe(true);
    }
  });

  it.runIf(zstdCli)('frames are standard zstd: the zstd tool decodes them to the same bytes', () => {
    const src = Buffer.from('vnstore zstd frame '.repeat(500));
    const { payload } = z.compress(src, new Uint32Array([0]), new Uint32Array([src.length]), 3);
    expect([...payload.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
    const dir = mkdtempSync(path.join(tmpdir(), 'vnstore-zstd-'));
    try {
      writeFileSync(path.join(dir, 'f.zst'), payload);
      const r = spawnSync('zstd', ['-q', '-d', '-f', path.join(dir, 'f.zst'), '-o', path.join(dir, 'f')]);
      expect(r.status, r.stderr.toString()).toBe(0);
      expect(readFileSync(path.join(dir, 'f')).equals(src)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a trained dictionary round-trips natively; without it, or on the fallback, the frame is refused', () => {
    // Samples share structure (a header and a shifted pattern) so that training finds something.
    const sample = (k: number) => Buffer.from(Array.from({ length: 4096 }, (_, i) => (i < 64 ? i : ((i * 13 + k) >> 3) & 0x7f)));
    const samples = Array.from({ length: 200 }, (_, k) => sample(k));
    const s = layout(samples);
    const dict = z.train(s.src, s.sizes, 16 * 1024);
    expect(dict.length).toBeGreaterThan(0);
    expect(dict.length).toBeLessThanOrEqual(16 * 1024);
    const page = sample(777);
    const one = { starts: new Uint32Array([0]), sizes: new Uint32Array([4096]) };
    const withDict = z.compress(page, one.starts, one.sizes, 3, dict);
    const without = z.compress(page, one.starts, one.sizes, 3);
    expect(withDict.payload.length).toBeLessThan(without.payload.length);
    expect(decodeAll(z, withDict.payload, withDict.lengths, one.starts, one.sizes, 4096, dict).equals(page)).toBe(true);
    expect(() => decodeAll(z, withDict.payload, withDict.lengths, one.starts, one.sizes, 4096)).toThrow(CodecError);
    expect(() => decodeAll(js, withDict.payload, withDict.lengths, one.starts, one.sizes, 4096)).toThrow(/dictionary/);
    expect(() => decodeAll(js, withDict.payload, withDict.lengths, one.starts, one.sizes, 4096, dict)).toThrow(CodecError);
  });

  it('compressAsync (thread pool) writes the same frames as compress, with and without a dictionary', async () => {
    const blobs = Array.from({ length: 24 }, (_, k) => Buffer.from(`page ${k} `.repeat(400 + k)));
    const { src, starts, sizes } = layout(blobs);
    const s = layout(blobs.slice(0, 20));
    const dict = z.train(s.src, s.sizes, 4096);
    for (const d of [undefined, dict]) {
      const sync = z.compress(src, starts, sizes, 3, d);
      const pending = z.compressAsync(src, starts, sizes, 3, d);
      expect(pending).toBeInstanceOf(Promise);
      const async = await pending;
      expect(async.payload.equals(sync.payload)).toBe(true);
      expect([...async.lengths]).toEqual([...sync.lengths]);
      expect(decodeAll(z, async.payload, async.lengths, starts, sizes, src.length, d).equals(src)).toBe(true);
    }
    // Bad arguments throw at the call, before any job is queued.
    expect(() => z.compressAsync(src, new Uint32Array([src.length]), new Uint32Array([1]), 3)).toThrow(RangeError);
    expect(() => z.compressAsync(src, starts, sizes, 0)).toThrow(RangeError);
  });

  it('training on too little data is a CodecError, not a crash', () => {
    expect(() => z.train(Buffer.alloc(100, 1), new Uint32Array([100]), 4096)).toThrow(CodecError);
  });

  it('bad ranges and levels are RangeErrors, thrown before anything is written', () => {
    const src = Buffer.alloc(8192, 7);
    expect(() => z.compress(src, new Uint32Array([4097]), new Uint32Array([4096]), 3)).toThrow(RangeError);
    expect(() => z.compress(src, new Uint32Array([0]), new Uint32Array([4096]), 0)).toThrow(RangeError);
    expect(() => z.compress(src, new Uint32Array([0]), new Uint32Array([4096]), 23)).toThrow(RangeError);
    const { payload, lengths } = z.compress(src, new Uint32Array([0]), new Uint32Array([4096]), 3);
    for (const d of decoders) {
      const out = Buffer.alloc(4096, 0xee);
      expect(() => d.decompress(payload, new Uint32Array([0]), lengths, out, new Uint32Array([1]), new Uint32Array([4096]))).toThrow(
        RangeError,
      );
      expect(() => d.decompress(payload, new Uint32Array([1]), lengths, out, new Uint32Array([0]), new Uint32Array([4096]))).toThrow(
        RangeError,
      );
      expect(out.equals(Buffer.alloc(4096, 0xee))).toBe(true);
    }
  });
});

describe.runIf(native !== null)('zstd: corrupt frames are refused on both paths', () => {
  const z = native as ZstdCodec;
  const src = Buffer.from(Array.from({ length: 16384 }, (_, i) => (i * 31) ^ (i >> 7)).map((x) => x & 0xff));
  const one = { starts: new Uint32Array([0]), sizes: new Uint32Array([src.length]) };
  const good = z.compress(src, one.starts, one.sizes, 3);

  /** Decodes `frame` as one 16 KiB blob into a guarded buffer; checks nothing outside the room moved. */
  function refuses(d: ZstdCodec, frame: Uint8Array, size = src.length): void {
    const out = Buffer.alloc(size + 64, 0x5a);
    expect(() =>
      d.decompress(frame, new Uint32Array([0]), new Uint32Array([frame.length]), out, new Uint32Array([32]), new Uint32Array([size])),
    ).toThrow(CodecError);
    expect(out.subarray(0, 32).equals(Buffer.alloc(32, 0x5a))).toBe(true);
    expect(out.subarray(32 + size).equals(Buffer.alloc(32, 0x5a))).toBe(true);
  }

  for (const d of decoders) {
    it(`${d.kind}: truncated, bad magic, empty, wrong size and garbage are CodecErrors`, () => {
      for (const cut of [1, 4, 5, 10, good.payload.length - 1]) refuses(d, good.payload.subarray(0, cut));
      const badMagic = Buffer.from(good.payload);
      badMagic[0] ^= 0xff;
      refuses(d, badMagic);
      refuses(d, new Uint8Array(0));
      refuses(d, good.payload, src.length - 1);
      refuses(d, good.payload, src.length + 1);
      fc.assert(
        fc.property(fc.uint8Array({ minLength: 1, maxLength: 200 }), (junk) => {
          if (junk.length >= 4 && junk[0] === 0x28 && junk[1] === 0xb5) return; // leave real frames to the cases above
          refuses(d, junk);
        }),
        { numRuns: 200 },
      );
    });
  }

  it('the error names the failing frame of a batch', () => {
    const two = z.compress(Buffer.concat([src, src]), new Uint32Array([0, src.length]), new Uint32Array([src.length, src.length]), 3);
    const bad = Buffer.from(two.payload);
    bad[two.lengths[0]] ^= 0xff; // second frame's magic
    for (const d of decoders) {
      const out = Buffer.alloc(2 * src.length);
      expect(() =>
        d.decompress(
          bad,
          frameOffsets(two.lengths),
          two.lengths,
          out,
          new Uint32Array([0, src.length]),
          new Uint32Array([src.length, src.length]),
        ),
      ).toThrow(/frame 1 of batch/);
    }
  });
});
