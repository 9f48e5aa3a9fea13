import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { compressSync } from 'lz4-napi';
import { crc32 } from 'node:zlib';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import {
  ChunkCodec,
  CodecError,
  NativeUnavailableError,
  PAGE_SIZE,
  crc32Kind,
  crc32OnThreadPool,
  getCodec,
  nativeCodecStatus,
  type PageCodec,
} from '../src/chunk/codec.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nativeLoaded = nativeCodecStatus().loaded;
const js = getCodec('js');
const codecs: PageCodec[] = nativeLoaded ? [getCodec('native'), js] : [js];

// ---------------------------------------------------------------------------------------------
// Page generators: the kinds of content guest memory holds.

const tile = (pattern: Uint8Array): Uint8Array => {
  const page = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i++) page[i] = pattern[i % pattern.length];
  return page;
};

const randomPage = fc.uint8Array({ minLength: PAGE_SIZE, maxLength: PAGE_SIZE });
const zeroPage = fc.constant(new Uint8Array(PAGE_SIZE));
const patternPage = fc.uint8Array({ minLength: 1, maxLength: 64 }).map(tile);
const textPage = fc
  .array(fc.constantFrom('the ', 'page ', 'kernel ', 'struct ', '0x7fff', '\n', '\0\0\0\0', 'GET / HTTP/1.1\r\n'), {
    minLength: 1,
    maxLength: 64,
  })
  .map((words) => tile(new TextEncoder().encode(words.join(''))));
/** Runs of zeros, a repeated byte, or random bytes: sparse structs, partially used pages. */
const mixedPage = fc
  .array(fc.tuple(fc.integer({ min: 1, max: 1024 }), fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 255 })), fc.nat()), {
    minLength: 1,
    maxLength: 12,
  })
  .map((runs) => {
    const page = new Uint8Array(PAGE_SIZE);
    let pos = 0;
    for (const [len, fill, seed] of runs) {
      const end = Math.min(PAGE_SIZE, pos + len);
      let x = seed | 1;
      for (; pos < end; pos++) {
        x = (Math.imul(x, 1103515245) + 12345) | 0;
        page[pos] = fill >= 0 ? fill : x >>> 24;
      }
      if (pos === PAGE_SIZE) break;
    }
    return page;
  });
/** A page that differs from zero in one byte (the hardest case for a zero check). */
const oneBytePage = fc.tuple(fc.integer({ min: 0, max: PAGE_SIZE - 1 }), fc.integer({ min: 1, max: 255 })).map(([i, v]) => {
  const page = new Uint8Array(PAGE_SIZE);
  page[i] = v;
  return page;
});
const anyPage = fc.oneof(randomPage, zeroPage, patternPage, textPage, mixedPage, oneBytePage);

/** Pages laid out in one src buffer at arbitrary (also unaligned) offsets, in a shuffled order. */
const batch = fc
  .record({
    pages: fc.array(anyPage, { minLength: 0, maxLength: 8 }),
    lead: fc.integer({ min: 0, max: 17 }),
    reversed: fc.boolean(),
  })
  .map(({ pages, lead, reversed }) => {
    const src = new Uint8Array(lead + pages.length * PAGE_SIZE);
    const offsets: number[] = [];
    pages.forEach((p, i) => {
      src.set(p, lead + i * PAGE_SIZE);
      offsets.push(lead + i * PAGE_SIZE);
    });
    if (reversed) {
      offsets.reverse();
      pages.reverse();
    }
    return { src, offsets, pages };
  });

const eq = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

function payloadAt(lengths: Uint32Array, payload: Buffer, i: number): Buffer {
  let pos = 0;
  for (let k = 0; k < i; k++) pos += lengths[k];
  return payload.subarray(pos, pos + lengths[i]);
}

function checkShape(pages: Uint8Array[], lengths: Uint32Array, codecs: Uint8Array, payload: Buffer): void {
  expect(lengths.length).toBe(pages.length);
  expect(codecs.length).toBe(pages.length);
  expect(lengths.reduce((a, b) => a + b, 0)).toBe(payload.length);
  pages.forEach((page, i) => {
    if (codecs[i] === ChunkCodec.Raw) {
      expect(lengths[i]).toBe(PAGE_SIZE);
      expect(eq(payloadAt(lengths, payload, i), page)).toBe(true);
    } else {
      expect(codecs[i]).toBe(ChunkCodec.Lz4);
      expect(lengths[i]).toBeGreaterThan(0);
      expect(lengths[i]).toBeLessThan(PAGE_SIZE);
    }
  });
}

/** Decodes one payload into a page framed by guard bytes; asserts the guards survive. */
function decodeGuarded(codec: PageCodec, payload: Uint8Array, kind: number): Uint8Array {
  const guard = 64;
  const dst = new Uint8Array(guard + PAGE_SIZE + guard).fill(0xa5);
  try {
    codec.decodePage(payload, kind, dst, guard);
  } finally {
    let intact = true;
    for (let i = 0; i < guard; i++) intact &&= dst[i] === 0xa5 && dst[guard + PAGE_SIZE + i] === 0xa5;
    expect(intact, 'bytes outside the destination page were written').toBe(true);
  }
  return dst.slice(guard, guard + PAGE_SIZE);
}

// ---------------------------------------------------------------------------------------------

describe('getCodec', () => {
  it('caches, honours prefer and VNSTORE_NATIVE=0', () => {
    expect(getCodec('js')).toBe(js);
    expect(js.kind).toBe('js');
    expect(getCodec()).toBe(getCodec('auto'));
    expect(getCodec().kind).toBe(nativeLoaded ? 'native' : 'js');
    const saved = process.env.VNSTORE_NATIVE;
    process.env.VNSTORE_NATIVE = '0';
    try {
      expect(getCodec().kind).toBe('js');
    } finally {
      if (saved === undefined) delete process.env.VNSTORE_NATIVE;
      else process.env.VNSTORE_NATIVE = saved;
    }
    if (!nativeLoaded) expect(() => getCodec('native')).toThrow(NativeUnavailableError);
  });

  it('CodecError carries a stable code', () => {
    const e = new CodecError('x');
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('E_CODEC');
    expect(e.name).toBe('CodecError');
  });
});

describe.each(codecs.map((c) => [c.kind, c] as const))('%s codec', (_kind, codec) => {
  it('round-trips arbitrary pages, one by one and batched, byte for byte', () => {
    fc.assert(
      fc.property(batch, ({ src, offsets, pages }) => {
        const { payload, lengths, codecs: kinds } = codec.compressPages(src, offsets);
        checkShape(pages, lengths, kinds, payload);
        pages.forEach((page, i) => {
          expect(eq(decodeGuarded(codec, payloadAt(lengths, payload, i), kinds[i]), page)).toBe(true);
        });
        const out = new Uint8Array(8 + pages.length * PAGE_SIZE);
        codec.decodePages(payload, lengths, kinds, out, 8);
        pages.forEach((page, i) => expect(eq(out.subarray(8 + i * PAGE_SIZE, 8 + (i + 1) * PAGE_SIZE), page)).toBe(true));
        // ArrayLike inputs work the same as typed arrays.
        const again = codec.compressPages(src, Array.from(offsets));
        expect(again.payload.equals(payload)).toBe(true);
        // Into a caller's (reused, dirty) buffer: the same bytes, as a view of that buffer.
        const dst = new Uint8Array(pages.length * PAGE_SIZE + 5).fill(0xee);
        const into = codec.compressPages(src, offsets, dst);
        expect(into.payload.equals(payload)).toBe(true);
        expect(into.payload.buffer).toBe(dst.buffer);
        expect(Array.from(into.lengths)).toEqual(Array.from(lengths));
        expect(Array.from(into.codecs)).toEqual(Array.from(kinds));
      }),
      { numRuns: 200 },
    );
  });

  it('stores incompressible pages Raw and compressible pages Lz4', () => {
    const random = randomBytes(PAGE_SIZE);
    const zeros = new Uint8Array(PAGE_SIZE);
    const text = tile(new TextEncoder().encode('struct task_struct *next; '));
    const src = Buffer.concat([random, zeros, text]);
    const { payload, lengths, codecs: kinds } = codec.compressPages(src, [0, PAGE_SIZE, 2 * PAGE_SIZE]);
    expect(Array.from(kinds)).toEqual([ChunkCodec.Raw, ChunkCodec.Lz4, ChunkCodec.Lz4]);
    expect(lengths[0]).toBe(PAGE_SIZE);
    expect(payload.subarray(0, PAGE_SIZE).equals(random)).toBe(true);
    expect(lengths[1]).toBeLessThan(64);
    expect(lengths[2]).toBeLessThan(256);
  });

  it('payload never aliases src', () => {
    const src = randomBytes(PAGE_SIZE);
    const { payload } = codec.compressPages(src, [0]);
    src.fill(0);
    expect(payload.equals(src)).toBe(false);
  });

  it('refuses a destination smaller than the worst case, before compressing anything', () => {
    const src = randomBytes(2 * PAGE_SIZE);
    const dst = new Uint8Array(2 * PAGE_SIZE - 1).fill(7);
    expect(() => codec.compressPages(src, [0, PAGE_SIZE], dst)).toThrow(RangeError);
    expect(dst.every((b) => b === 7)).toBe(true);
  });

  it('handles an empty batch', () => {
    const r = codec.compressPages(new Uint8Array(0), []);
    expect(r.payload.length).toBe(0);
    expect(r.lengths.length).toBe(0);
    codec.decodePages(r.payload, r.lengths, r.codecs, new Uint8Array(0));
    expect(codec.zeroMask(new Uint8Array(0), 0).length).toBe(0);
  });

  it('rejects bad offsets and short destinations with RangeError', () => {
    const src = new Uint8Array(2 * PAGE_SIZE);
    for (const off of [-1, 1.5, PAGE_SIZE + 1, Number.NaN, 2 * PAGE_SIZE]) {
      expect(() => codec.compressPages(src, [0, off])).toThrow(RangeError);
    }
    const { payload, lengths, codecs: kinds } = codec.compressPages(src, [0]);
    expect(() => codec.decodePage(payload, kinds[0], new Uint8Array(PAGE_SIZE - 1), 0)).toThrow(RangeError);
    expect(() => codec.decodePage(payload, kinds[0], new Uint8Array(PAGE_SIZE), 1)).toThrow(RangeError);
    expect(() => codec.decodePage(payload, kinds[0], new Uint8Array(PAGE_SIZE), -1)).toThrow(RangeError);
    expect(() => codec.decodePages(payload, lengths, kinds, new Uint8Array(PAGE_SIZE), 4)).toThrow(RangeError);
    expect(() => codec.zeroMask(src, 3)).toThrow(RangeError);
  });

  it('every truncation of an Lz4 payload throws CodecError', () => {
    fc.assert(
      fc.property(fc.oneof(textPage, mixedPage, patternPage, zeroPage), (page) => {
        const { payload, codecs: kinds } = codec.compressPages(page, [0]);
        fc.pre(kinds[0] === ChunkCodec.Lz4);
        for (let len = 0; len < payload.length; len++) {
          expect(() => decodeGuarded(codec, payload.subarray(0, len), ChunkCodec.Lz4)).toThrow(CodecError);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('trailing bytes after an Lz4 block throw CodecError', () => {
    fc.assert(
      fc.property(fc.oneof(textPage, mixedPage), fc.uint8Array({ minLength: 1, maxLength: 8 }), (page, extra) => {
        const { payload, codecs: kinds } = codec.compressPages(page, [0]);
        fc.pre(kinds[0] === ChunkCodec.Lz4 && payload.length + extra.length < PAGE_SIZE);
        const long = Buffer.concat([payload, extra]);
        expect(() => decodeGuarded(codec, long, ChunkCodec.Lz4)).toThrow(CodecError);
      }),
      { numRuns: 200 },
    );
  });

  it('corrupt payloads throw CodecError or yield exactly one page, never touching other bytes', () => {
    fc.assert(
      fc.property(
        fc.oneof(textPage, mixedPage, randomPage),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
        (page, flips) => {
          const { payload, codecs: kinds } = codec.compressPages(page, [0]);
          const bad = Buffer.from(payload);
          for (const [at, x] of flips) bad[at % bad.length] ^= x;
          try {
            const out = decodeGuarded(codec, bad, kinds[0]);
            expect(out.length).toBe(PAGE_SIZE);
          } catch (err) {
            expect(err).toBeInstanceOf(CodecError);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('garbage payloads under any codec byte throw CodecError or yield exactly one page', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: PAGE_SIZE + 8 }), fc.integer({ min: 0, max: 255 }), (bytes, kind) => {
        try {
          decodeGuarded(codec, bytes, kind);
          expect(kind === ChunkCodec.Raw ? bytes.length === PAGE_SIZE : kind === ChunkCodec.Lz4).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(CodecError);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('rejects wrong-length Raw, out-of-range Lz4 lengths and unknown codecs', () => {
    const dst = new Uint8Array(PAGE_SIZE);
    expect(() => codec.decodePage(new Uint8Array(PAGE_SIZE - 1), ChunkCodec.Raw, dst, 0)).toThrow(CodecError);
    expect(() => codec.decodePage(new Uint8Array(PAGE_SIZE + 1), ChunkCodec.Raw, dst, 0)).toThrow(CodecError);
    expect(() => codec.decodePage(new Uint8Array(0), ChunkCodec.Lz4, dst, 0)).toThrow(CodecError);
    expect(() => codec.decodePage(new Uint8Array(PAGE_SIZE), ChunkCodec.Lz4, dst, 0)).toThrow(CodecError);
    for (const bad of [2, 255, -1, 1.5, 0.5, 256]) {
      expect(() => codec.decodePage(new Uint8Array(PAGE_SIZE), bad as ChunkCodec, dst, 0)).toThrow(CodecError);
    }
    // Valid blocks for 2 KiB and 8 KiB of 'a': short and long output, not a page.
    for (const size of [PAGE_SIZE / 2, PAGE_SIZE * 2]) {
      const block = compressSync(Buffer.alloc(size, 0x61)).subarray(4); // strip lz4-napi's size prefix
      expect(() => decodeGuarded(codec, block, ChunkCodec.Lz4)).toThrow(CodecError);
    }
  });

  it('decodePages rejects a lengths table that does not tile the payload, naming the bad page', () => {
    const src = Buffer.concat([tile(new Uint8Array([1, 2, 3])), tile(new Uint8Array([4, 5]))]);
    const { payload, lengths, codecs: kinds } = codec.compressPages(src, [0, PAGE_SIZE]);
    const dst = new Uint8Array(2 * PAGE_SIZE);
    expect(() => codec.decodePages(payload.subarray(1), lengths, kinds, dst)).toThrow(CodecError);
    const badKinds = Uint8Array.from([kinds[0], 7]);
    expect(() => codec.decodePages(payload, lengths, badKinds, dst)).toThrow(/page 1/);
    expect(() => codec.decodePages(payload, lengths, Uint8Array.of(1), dst)).toThrow(TypeError);
  });

  it('zeroMask matches a naive check', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(zeroPage, oneBytePage, anyPage), { maxLength: 10 }), fc.integer({ min: 0, max: 7 }), (pages, lead) => {
        // Unaligned view: the mask must not depend on the buffer's alignment.
        const backing = new Uint8Array(lead + pages.length * PAGE_SIZE);
        const src = backing.subarray(lead);
        pages.forEach((p, i) => src.set(p, i * PAGE_SIZE));
        const mask = codec.zeroMask(src, pages.length);
        expect(Array.from(mask)).toEqual(pages.map((p) => (p.every((b) => b === 0) ? 1 : 0)));
      }),
      { numRuns: 100 },
    );
  });
});

describe('decodeChunks (one call per restore window)', () => {
  it('decodes chunks at any offsets into any slots, flags exactly the corrupt ones, the same on every codec', () => {
    fc.assert(
      fc.property(batch, fc.array(fc.nat(), { maxLength: 3 }), fc.nat(), (b, corrupt, gap) => {
        const { payload, lengths, codecs: kinds } = js.compressPages(b.src, b.offsets);
        const n = b.pages.length;
        // Lay the payloads out with gaps (as coalesced pack reads have), and send them to slots in reverse.
        const offsets = new Uint32Array(n);
        const stored = new Uint8Array(payload.length + n * (gap % 37));
        let at = 0;
        let from = 0;
        for (let i = 0; i < n; i++) {
          at += gap % 37;
          offsets[i] = at;
          stored.set(payload.subarray(from, from + lengths[i]), at);
          at += lengths[i];
          from += lengths[i];
        }
        const broken = new Set(n > 0 ? corrupt.map((c) => c % n) : []);
        for (const i of broken) stored[offsets[i] + Math.floor(lengths[i] / 2)] ^= 0x5a;
        const slots = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
        const results = codecs.map((c) => {
          const out = new Uint8Array(n * PAGE_SIZE).fill(0xee);
          const failed = new Uint8Array(n);
          const bad = c.decodeChunks(stored, offsets, lengths, kinds, slots, out, failed);
          return { out, failed, bad };
        });
        for (const r of results) {
          expect(r.bad).toBe(r.failed.reduce((s, f) => s + f, 0));
          for (let i = 0; i < n; i++) {
            const page = r.out.subarray(slots[i] * PAGE_SIZE, (slots[i] + 1) * PAGE_SIZE);
            if (!broken.has(i)) {
              expect(r.failed[i]).toBe(0);
              expect(eq(page, b.pages[i])).toBe(true);
            } else if (!r.failed[i] && kinds[i] === 0) {
              expect(eq(page, b.pages[i])).toBe(false); // a flipped Raw byte decodes; verification catches it
            }
          }
        }
        // Every codec flags the same chunks and writes the same bytes for the good ones.
        for (const r of results) expect(Array.from(r.failed)).toEqual(Array.from(results[0].failed));
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a range past src or a slot past out before writing anything', () => {
    const { payload, lengths, codecs: kinds } = js.compressPages(new Uint8Array(PAGE_SIZE).fill(3), [0]);
    for (const c of codecs) {
      const out = new Uint8Array(PAGE_SIZE).fill(9);
      const failed = new Uint8Array(1).fill(7);
      expect(() => c.decodeChunks(payload, Uint32Array.of(1), lengths, kinds, Uint32Array.of(0), out, failed)).toThrow(RangeError);
      expect(() => c.decodeChunks(payload, Uint32Array.of(0), lengths, kinds, Uint32Array.of(1), out, failed)).toThrow(RangeError);
      expect(out.every((x) => x === 9) && failed[0] === 7).toBe(true);
    }
  });
});

/** The CPU flags Linux lists ('' elsewhere). */
function readCpuFlags(): string {
  try {
    return /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '';
  } catch {
    return '';
  }
}

describe.runIf(nativeLoaded)("the addon's CRC-32 (a pack payload's checksum)", () => {
  // Where the CPU has PCLMULQDQ it folds by carry-less multiplication above 64 bytes: it must be
  // zlib's CRC-32 at every length, offset and starting value, and when a checksum is continued.
  it('equals node:zlib crc32 on random bytes, lengths 0-20,000, any offset, continued in two parts', async () => {
    const crcAsync = crc32OnThreadPool();
    expect(crcAsync).toBeDefined();
    // The folding is what is tested here wherever the CPU has it (its load-time self-test passed).
    const pclmul = process.arch === 'x64' && /\bpclmulqdq\b/.test(readCpuFlags());
    expect(crc32Kind()).toBe(pclmul ? 'pclmul' : 'zlib');
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: 20_000 }),
        fc.nat(15),
        fc.nat(),
        fc.double({ min: 0, max: 1, noNaN: true }),
        async (bytes, off, start, cut) => {
          const data = bytes.subarray(Math.min(off, bytes.length));
          const seed = start >>> 0;
          // node:zlib answers 0 for no bytes whatever the starting value (zlib's crc32 of a null buffer).
          const want = data.length === 0 ? seed : crc32(data, seed);
          expect(await crcAsync!(data, seed)).toBe(want);
          const k = Math.floor(cut * data.length);
          expect(await crcAsync!(data.subarray(k), await crcAsync!(data.subarray(0, k), seed))).toBe(want);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('equals zlib with the folding pinned off ($VNSTORE_CRC=zlib), on a buffer past 1 MiB', () => {
    const codecUrl = pathToFileURL(path.join(repoRoot, 'dist', 'chunk', 'codec.js')).href;
    const script = `
      import { crc32 } from 'node:zlib';
      const m = await import(${JSON.stringify(codecUrl)});
      const data = new Uint8Array((1 << 20) + 37);
      for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
      const crc = m.crc32OnThreadPool();
      console.log(JSON.stringify({ same: (await crc(data, 7)) === crc32(data, 7), kind: m.crc32Kind() }));
    `;
    for (const env of [{}, { VNSTORE_CRC: 'zlib' }]) {
      const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
      expect(res.status, res.stderr).toBe(0);
      const got = JSON.parse(res.stdout.trim()) as { same: boolean; kind: string };
      expect(got.same).toBe(true);
      if ('VNSTORE_CRC' in env) expect(got.kind).toBe('zlib');
      else expect(got.kind).toBe(crc32Kind());
    }
  });
});

describe.runIf(nativeLoaded)('native and js interoperate', () => {
  it('each decodes the other', () => {
    const native = getCodec('native');
    fc.assert(
      fc.property(batch, ({ src, offsets, pages }) => {
        for (const [enc, dec] of [
          [native, js],
          [js, native],
        ] as const) {
          const { payload, lengths, codecs: kinds } = enc.compressPages(src, offsets);
          const out = new Uint8Array(pages.length * PAGE_SIZE);
          dec.decodePages(payload, lengths, kinds, out, 0);
          pages.forEach((page, i) => {
            expect(eq(out.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), page)).toBe(true);
            expect(eq(decodeGuarded(dec, payloadAt(lengths, payload, i), kinds[i]), page)).toBe(true);
          });
        }
        // The Raw/Lz4 choice is the same rule on both sides (sizes may differ by encoder).
        const a = native.compressPages(src, offsets);
        const b = js.compressPages(src, offsets);
        for (let i = 0; i < pages.length; i++) {
          if (a.codecs[i] !== b.codecs[i]) {
            // Only possible when one encoder lands just under PAGE_SIZE and the other does not.
            expect(Math.max(a.lengths[i], b.lengths[i])).toBeGreaterThan(PAGE_SIZE - 64);
          }
        }
      }),
      { numRuns: 200 },
    );
  });

  it('agree on corrupt input being corrupt (both throw, or both give the same page)', () => {
    const native = getCodec('native');
    fc.assert(
      fc.property(fc.oneof(textPage, mixedPage), fc.nat(), fc.integer({ min: 1, max: 255 }), (page, at, x) => {
        const { payload, codecs: kinds } = js.compressPages(page, [0]);
        const bad = Buffer.from(payload);
        bad[at % bad.length] ^= x;
        const attempt = (c: PageCodec): Uint8Array | 'error' => {
          try {
            return decodeGuarded(c, bad, kinds[0]);
          } catch (err) {
            expect(err).toBeInstanceOf(CodecError);
            return 'error';
          }
        };
        const [n, j] = [attempt(native), attempt(js)];
        if (n !== 'error' && j !== 'error') expect(eq(n, j)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('fallback when liblz4 is missing', () => {
  // The addon is already loaded in this process, so the failure path runs in a child process with
  // VNSTORE_LZ4_SONAME pointing at a library that does not exist. The child loads codec.ts
  // transpiled to plain JS (Node 20 cannot strip types), with its addon path made absolute.
  it('the addon fails to load cleanly and getCodec() falls back to js', () => {
    const cacheDir = path.join(repoRoot, 'node_modules', '.cache');
    mkdirSync(cacheDir, { recursive: true });
    const dir = mkdtempSync(path.join(cacheDir, 'vnstore-codec-test-'));
    try {
      const source = readFileSync(path.join(repoRoot, 'src/chunk/codec.ts'), 'utf8');
      const addonUrl = pathToFileURL(path.join(repoRoot, 'native/build/Release/vnstore_native.node')).href;
      const withAddon = source.replace("'../../native/build/Release/vnstore_native.node'", JSON.stringify(addonUrl));
      expect(withAddon).not.toBe(source);
      // Its own relative imports (constants) come from the build of the same sources.
      const rewritten = withAddon.replace(
        /from '\.\.\/([^']+\.js)'/g,
        (_m, rel: string) => `from ${JSON.stringify(pathToFileURL(path.join(repoRoot, 'dist', rel)).href)}`,
      );
      const out = ts.transpileModule(rewritten, {
        compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
      }).outputText;
      const file = path.join(dir, 'codec.mjs');
      writeFileSync(file, out);
      const script = `
        const m = await import(${JSON.stringify(pathToFileURL(file).href)});
        const c = m.getCodec();
        let nativeErr = '';
        try { m.getCodec('native'); } catch (e) { nativeErr = e.code; }
        const page = new Uint8Array(m.PAGE_SIZE).fill(7);
        const r = c.compressPages(page, [0]);
        const back = new Uint8Array(m.PAGE_SIZE);
        c.decodePage(r.payload, r.codecs[0], back, 0);
        console.log(JSON.stringify({ kind: c.kind, nativeErr, status: m.nativeCodecStatus(), ok: back.every((b) => b === 7) }));
      `;
      const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...process.env, VNSTORE_LZ4_SONAME: 'liblz4.so.999', VNSTORE_NATIVE: '' },
        encoding: 'utf8',
      });
      expect(res.status, res.stderr).toBe(0);
      const got = JSON.parse(res.stdout.trim()) as {
        kind: string;
        nativeErr: string;
        ok: boolean;
        status: { loaded: boolean; error?: string };
      };
      expect(got.kind).toBe('js');
      expect(got.ok).toBe(true);
      expect(got.nativeErr).toBe('E_NATIVE_UNAVAILABLE');
      expect(got.status.loaded).toBe(false);
      if (nativeLoaded) expect(got.status.error).toMatch(/liblz4\.so\.999/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
