/**
 * Page hashing: the native multi-page BLAKE3 (native/src/blake3_pages.c) must give exactly the
 * digests of @napi-rs/blake-hash, for every kernel, any page list, and leave other slots untouched;
 * the fallback (VNSTORE_NATIVE=0 or no addon) must give the same bytes.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { blake3 } from '@napi-rs/blake-hash';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable } from '../src/format/pages.js';
import { hashPage, hashPages, imageDigest, pageHasherStatus } from '../src/chunk/hash.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SENTINEL = 0xa5;

/** Pages of the kinds that stress a hasher: random, zero, one repeated byte, a counter pattern. */
const pageArb = fc.oneof(
  fc.uint8Array({ minLength: PAGE_SIZE, maxLength: PAGE_SIZE }),
  fc.constant(new Uint8Array(PAGE_SIZE)),
  fc.integer({ min: 0, max: 255 }).map((b) => new Uint8Array(PAGE_SIZE).fill(b)),
  fc.integer({ min: 1, max: 251 }).map((m) => Uint8Array.from({ length: PAGE_SIZE }, (_, i) => i % m)),
);

/** Page lists with repeats, any order, lengths around the 8-lane group size. */
const caseArb = fc
  .array(pageArb, { minLength: 1, maxLength: 12 })
  .chain((pages) => fc.tuple(fc.constant(pages), fc.array(fc.nat({ max: pages.length - 1 }), { maxLength: 27 })));

function reference(src: Uint8Array, list: Uint32Array, slots: number): Buffer {
  const want = Buffer.alloc(slots * DIGEST_BYTES, SENTINEL);
  for (const p of list) blake3(Buffer.from(src.buffer, src.byteOffset + p * PAGE_SIZE, PAGE_SIZE)).copy(want, p * DIGEST_BYTES);
  return want;
}

describe('hashPages', () => {
  it('matches @napi-rs/blake-hash page by page, digests at their page index, other slots untouched', () => {
    fc.assert(
      fc.property(caseArb, ([pages, picks]) => {
        const src = new Uint8Array(pages.length * PAGE_SIZE);
        pages.forEach((p, i) => src.set(p, i * PAGE_SIZE));
        const list = Uint32Array.from(picks);
        const out = new Uint8Array(pages.length * DIGEST_BYTES).fill(SENTINEL);
        hashPages(src, list, out);
        expect(Buffer.from(out).equals(reference(src, list, pages.length))).toBe(true);
      }),
      { numRuns: 150 },
    );
  });

  it('hashes a large unaligned batch (many full groups and a short one) exactly', () => {
    const count = 8 * 37 + 5;
    const backing = new Uint8Array(count * PAGE_SIZE + 3);
    const src = backing.subarray(3); // not 32-byte aligned: the kernel must use unaligned loads
    let x = 0x12345678;
    for (let i = 0; i < src.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      src[i] = x & 0xff;
    }
    const list = Uint32Array.from({ length: count }, (_, i) => (i * 11) % count); // a permutation: 11 is coprime to 301
    const out = new Uint8Array(count * DIGEST_BYTES);
    hashPages(src, list, out);
    for (let p = 0; p < count; p++) {
      expect(
        Buffer.from(out.subarray(p * DIGEST_BYTES, (p + 1) * DIGEST_BYTES)).equals(
          hashPage(src.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)),
        ),
      ).toBe(true);
    }
  });

  it('refuses page indices outside src or out, writing nothing', () => {
    const src = new Uint8Array(2 * PAGE_SIZE).fill(1);
    const out = new Uint8Array(2 * DIGEST_BYTES).fill(SENTINEL);
    expect(() => hashPages(src, Uint32Array.of(0, 2), out)).toThrow(RangeError);
    expect(() => hashPages(src, Uint32Array.of(1), new Uint8Array(DIGEST_BYTES))).toThrow(RangeError);
    expect(out.every((b) => b === SENTINEL)).toBe(true);
  });

  it('reports which hasher serves it', () => {
    const s = pageHasherStatus();
    if (s.native) expect(['avx2', 'avx512vl', 'avx512']).toContain(s.simd);
    else expect(s.error).toBeTruthy();
  });

  // Each kernel and the fallback, in a fresh process: the choice is made once per process.
  // `kernels`: what a native hasher may report with that pin (a pinned kernel the CPU lacks falls back to a narrower one).
  const variants: { name: string; env: Record<string, string>; native: boolean; kernels?: string[] }[] = [
    { name: 'the AVX2 kernel', env: { VNSTORE_HASH_SIMD: 'avx2' }, native: true, kernels: ['avx2'] },
    { name: 'the 8-lane AVX-512VL kernel', env: { VNSTORE_HASH_SIMD: 'avx512vl' }, native: true, kernels: ['avx512vl', 'avx2'] },
    { name: 'the widest kernel', env: {}, native: true, kernels: ['avx512', 'avx512vl', 'avx2'] },
    { name: 'the @napi-rs fallback (VNSTORE_NATIVE=0)', env: { VNSTORE_NATIVE: '0' }, native: false },
  ];
  for (const v of variants) {
    it(`gives the same digests through ${v.name}`, () => {
      const hashUrl = pathToFileURL(path.join(repoRoot, 'dist', 'chunk', 'hash.js')).href;
      const script = `
        import { createRequire } from 'node:module';
        const m = await import(${JSON.stringify(hashUrl)});
        const { blake3 } = createRequire(${JSON.stringify(path.join(repoRoot, 'package.json'))})('@napi-rs/blake-hash');
        const n = 8 * 5 + 3;
        const src = new Uint8Array(n * 4096);
        for (let i = 0; i < src.length; i++) src[i] = (i * 2654435761) >>> 24;
        const list = Uint32Array.from({ length: n }, (_, i) => n - 1 - i);
        const out = new Uint8Array(n * 32);
        m.hashPages(src, list, out);
        let bad = 0;
        for (let p = 0; p < n; p++) if (!blake3(Buffer.from(src.buffer, p * 4096, 4096)).equals(Buffer.from(out.buffer, p * 32, 32))) bad++;
        console.log(JSON.stringify({ bad, status: m.pageHasherStatus() }));
      `;
      const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...process.env, ...v.env },
        encoding: 'utf8',
      });
      expect(res.status, res.stderr).toBe(0);
      const got = JSON.parse(res.stdout.trim()) as { bad: number; status: { native: boolean; simd?: string } };
      expect(got.bad).toBe(0);
      if (!v.native) expect(got.status.native).toBe(false);
      else if (got.status.native) expect(v.kernels).toContain(got.status.simd);
    });
  }
});

describe('imageDigest', () => {
  it('is BLAKE3 of prefix, length and the whole digest list (zeros for non-digest pages), across its 2048-page chunks', () => {
    const prefix = Buffer.from('vnstore-image-v1\0', 'latin1');
    fc.assert(
      fc.property(
        // Runs of page kinds long enough to cross chunk boundaries; stale digests under zero pages.
        fc.array(fc.tuple(fc.constantFrom(PageKind.Digest, PageKind.Zero, PageKind.Unset), fc.integer({ min: 1, max: 1500 })), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.integer({ min: 0, max: 4095 }),
        fc.integer(),
        (runs, tail, seed) => {
          const pageCount = runs.reduce((n, [, len]) => n + len, 0);
          const table = new PageTable(pageCount);
          let x = seed | 1;
          for (let i = 0; i < table.digests.length; i++) {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            table.digests[i] = x & 0xff;
          }
          let p = 0;
          for (const [kind, len] of runs) table.kinds.fill(kind, p, (p += len));
          const byteLength = pageCount * PAGE_SIZE - (tail % PAGE_SIZE);
          const list = Buffer.alloc(pageCount * DIGEST_BYTES);
          for (let i = 0; i < pageCount; i++) {
            if (table.kinds[i] === PageKind.Digest)
              list.set(table.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
          }
          const len = Buffer.alloc(8);
          len.writeBigUInt64LE(BigInt(byteLength));
          expect(imageDigest(table, byteLength).equals(blake3(Buffer.concat([prefix, len, list])))).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });
});
