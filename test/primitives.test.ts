/**
 * The shared primitives (issue 11, "one of each"): the LEB128 varint codec that manifests and the
 * chunk index both use, and the binary search over ascending pack offsets.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ByteReader, ByteWriter, putVarint, varintBytes } from '../src/format/varint.js';
import { CONTAINER_CODEC } from '../src/format/pack.js';
import { decodeChunkValue, encodeChunkValue } from '../src/store/db.js';
import { indexOfSorted } from '../src/util/search.js';

describe('varint codec', () => {
  it('writes the LEB128 bytes of known values', () => {
    const out = new Uint8Array(16);
    expect([...out.subarray(0, putVarint(out, 0, 0))]).toEqual([0]);
    expect([...out.subarray(0, putVarint(out, 0, 127))]).toEqual([0x7f]);
    expect([...out.subarray(0, putVarint(out, 0, 128))]).toEqual([0x80, 0x01]);
    expect([...out.subarray(0, putVarint(out, 0, 300))]).toEqual([0xac, 0x02]);
    expect([...out.subarray(0, putVarint(out, 0, 2 ** 53 - 1))]).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    expect(putVarint(out, 3, 300)).toBe(5);
  });

  it('round-trips every safe integer through putVarint, ByteWriter and ByteReader', () => {
    fc.assert(
      fc.property(fc.array(fc.maxSafeNat(), { maxLength: 20 }), (values) => {
        const w = new ByteWriter(1);
        for (const v of values) w.varint(v);
        const bytes = w.finish();
        const direct = new Uint8Array(values.reduce((n, v) => n + varintBytes(v), 0));
        let p = 0;
        for (const v of values) p = putVarint(direct, p, v);
        expect(p).toBe(direct.length);
        expect(Buffer.from(direct).equals(bytes)).toBe(true);
        const r = new ByteReader(bytes, 'test');
        expect(values.map(() => r.varint())).toEqual(values);
        expect(r.remaining).toBe(0);
      }),
    );
  });

  it('encodes chunk locations with the same codec (exact bytes, round trip)', () => {
    expect([...encodeChunkValue({ pack: 1, offset: 16, storedLength: 4096, codec: 0 })]).toEqual([0x01, 0x10, 0x80, 0x80, 0x01]);
    expect([...encodeChunkValue({ pack: 300, offset: 128, storedLength: 10, codec: 5 })]).toEqual([0xac, 0x02, 0x80, 0x01, 0x28, 0x05]);
    fc.assert(
      fc.property(
        fc.nat(),
        fc.nat(),
        fc.integer({ min: 1, max: 4096 }),
        fc.integer({ min: 0, max: 200 }).filter((c) => c !== CONTAINER_CODEC),
        (pack, offset, storedLength, codec) => {
          const loc = { pack, offset, storedLength, codec };
          expect(decodeChunkValue(encodeChunkValue(loc))).toEqual(loc);
        },
      ),
    );
    // A page in a zstd container (pack format 2) also names its member and the container's page count.
    expect([...encodeChunkValue({ pack: 1, offset: 16, storedLength: 700, codec: CONTAINER_CODEC, member: 3, pages: 16 })]).toEqual([
      0x01, 0x10, 0xf2, 0x15, 0xf3, 0x01,
    ]);
    fc.assert(
      fc.property(
        fc.nat(),
        fc.nat(),
        fc.integer({ min: 1, max: 65536 }),
        fc.integer({ min: 1, max: 16 }).chain((pages) => fc.tuple(fc.constant(pages), fc.integer({ min: 0, max: pages - 1 }))),
        (pack, offset, storedLength, [pages, member]) => {
          const loc = { pack, offset, storedLength, codec: CONTAINER_CODEC, member, pages };
          expect(decodeChunkValue(encodeChunkValue(loc))).toEqual(loc);
        },
      ),
    );
  });
});

describe('indexOfSorted', () => {
  it('finds every present value and nothing else, within the first `count` entries', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.nat(1000), { maxLength: 50 }), fc.nat(1000), fc.nat(50), (raw, probe, cut) => {
        const sorted = Float64Array.from(raw.sort((a, b) => a - b));
        const count = Math.min(cut, sorted.length);
        expect(indexOfSorted(sorted, probe)).toBe(raw.indexOf(probe));
        expect(indexOfSorted(sorted, probe, count)).toBe(raw.slice(0, count).indexOf(probe));
      }),
    );
    expect(indexOfSorted([], 1)).toBe(-1);
    expect(indexOfSorted(Uint32Array.of(16, 20, 4116), 4116)).toBe(2);
  });
});
