/**
 * Manifest encoding: any page table (zero and digest pages, with or without a base that shares some
 * digests) decodes back exactly, into a buffer sized exactly once from the plan.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeManifestHeader, decodeManifestPages, encodeManifest, planManifest } from '../src/format/manifest.js';
import { DIGEST_BYTES, PageKind, PageTable } from '../src/format/pages.js';

/** A page: zero, or a digest from a small pool (so runs repeat and bases share digests). */
const pageSpec = fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 5 }));

function table(spec: number[]): PageTable {
  const t = new PageTable(spec.length);
  spec.forEach((d, i) => (d < 0 ? t.setZero(i) : t.setDigest(i, new Uint8Array(DIGEST_BYTES).fill(d + 1))));
  return t;
}

describe('manifest encoding', () => {
  it('round-trips any page table, self-contained or against a base, in an exactly sized buffer', () => {
    fc.assert(
      fc.property(
        fc.array(pageSpec, { maxLength: 300 }),
        fc.option(fc.array(pageSpec, { maxLength: 300 }), { nil: undefined }),
        (spec, baseSpec) => {
          const pages = table(spec);
          const base = baseSpec ? table(baseSpec) : undefined;
          const plan = planManifest(pages, base);
          const header = {
            meta: { id: '01a2b3c4d5e6f708', vm: 'vm-é', time: '2026-12-01T00:00:00.000Z' },
            byteLength: spec.length * 4096,
            pageCount: spec.length,
            imageDigest: new Uint8Array(DIGEST_BYTES).fill(9),
            baseId: base ? '01a2b3c4d5e6f709' : undefined,
          };
          const { bytes, stats } = encodeManifest(header, pages, base, plan);
          expect(bytes.buffer.byteLength).toBe(bytes.length); // sized once, never grown
          expect(stats.zeroPages).toBe(spec.filter((d) => d < 0).length);
          expect(stats.digestEntries + stats.sameEntries).toBe(spec.filter((d) => d >= 0).length);
          const { header: h, reader } = decodeManifestHeader(bytes, 'test');
          expect(h).toEqual({ ...header, imageDigest: header.imageDigest });
          const back = decodeManifestPages(h, reader, 'test', base);
          expect(Array.from(back.kinds)).toEqual(spec.map((d) => (d < 0 ? PageKind.Zero : PageKind.Digest)));
          for (let i = 0; i < spec.length; i++) if (spec[i] >= 0) expect(back.digestAt(i)[0]).toBe(spec[i] + 1);
        },
      ),
    );
  });

  it('refuses a plan made against another base', () => {
    const pages = table([0, 1, -1]);
    const plan = planManifest(pages);
    const header = {
      meta: { id: 'a', vm: 'v', time: 't' },
      byteLength: 3 * 4096,
      pageCount: 3,
      imageDigest: new Uint8Array(32),
      baseId: 'b',
    };
    expect(() => encodeManifest(header, pages, table([0, 1, 2]), plan)).toThrow(RangeError);
  });
});
