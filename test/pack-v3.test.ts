/**
 * Pack formats 3 and 4 (store format 3: the TOC is the index; version 4 keeps 24-byte digest
 * prefixes, version 3 whole digests, both parsed to prefixes). Round-trips of any mix of per-page
 * chunks and containers with any increasing numbers (fast-check); the exact bytes of a small pack;
 * every byte flip in the TOC or trailer refused; structurally wrong TOCs with a valid checksum
 * refused; each version's TOC length refused by the other.
 */
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CONTAINER_CODEC, encodePackHeader, PACK_HEADER_BYTES, PACK_TRAILER_BYTES, writePackTrailer } from '../src/format/pack.js';
import {
  encodePackFooterV3,
  metaCodec,
  metaMember,
  metaPages,
  metaStoredLength,
  numberAt,
  numberRuns,
  PACK_VERSION_NUMBERED,
  PACK_VERSION_PREFIXED,
  parsePackTocV3,
  prefixColumn,
  parsePackTrailerV3,
  type TocV3Input,
} from '../src/format/pack-v3.js';
import { CorruptError } from '../src/util/errors.js';

type Item = { codec: 0 | 1; length: number } | { codec: 2; length: number; pages: number };

const itemArb: fc.Arbitrary<Item> = fc.oneof(
  fc.record({ codec: fc.constantFrom(0 as const, 1 as const), length: fc.integer({ min: 1, max: 4096 }) }),
  fc.record({ codec: fc.constant(2 as const), length: fc.integer({ min: 1, max: 0xffff }), pages: fc.integer({ min: 1, max: 16 }) }),
);

/** Entry columns of the items, with numbers from `gaps` (gap 0 = the next number). */
function tocOf(items: Item[], first: number, gaps: number[], digestSeed: number): TocV3Input {
  const lengths: number[] = [];
  const codecs: number[] = [];
  const members: number[] = [];
  for (const it of items) {
    const n = it.codec === 2 ? it.pages : 1;
    for (let m = 0; m < n; m++) {
      lengths.push(it.length);
      codecs.push(it.codec);
      members.push(it.codec === 2 ? m : 0);
    }
  }
  const count = lengths.length;
  const numbers: number[] = [];
  let next = first;
  for (let k = 0; k < count; k++) {
    next += gaps[k % Math.max(gaps.length, 1)] ?? 0;
    numbers.push(next++);
  }
  const digests = new Uint8Array(count * 32);
  for (let i = 0; i < digests.length; i++) digests[i] = (i * 131 + digestSeed * 7 + (i >>> 5)) & 0xff;
  return { count, numbers, digests, lengths, codecs, members };
}

for (const version of [PACK_VERSION_NUMBERED, PACK_VERSION_PREFIXED]) {
  /** Bytes of a digest in this version's TOC. */
  const stride = version === PACK_VERSION_NUMBERED ? 32 : 24;

  /** A whole pack: header, payload bytes of the items' lengths, footer. */
  function packBytes(items: Item[], toc: TocV3Input): Buffer {
    const payloadBytes = items.reduce((s, it) => s + it.length, 0);
    const payload = Buffer.alloc(payloadBytes, 0x5a);
    const tocOffset = PACK_HEADER_BYTES + payloadBytes;
    return Buffer.concat([encodePackHeader(4096, version), payload, encodePackFooterV3(toc, tocOffset, crc32(payload), version)]);
  }

  function parse(file: Buffer, as = version) {
    const trailer = parsePackTrailerV3(file.subarray(file.length - PACK_TRAILER_BYTES), file.length, 'test', as);
    return parsePackTocV3(file.subarray(trailer.tocOffset, file.length - PACK_TRAILER_BYTES), trailer, 'test', as);
  }

  describe(`pack format ${version}`, () => {
    it('round-trips any items and increasing numbers: numbers, digests, offsets, codecs, members', () => {
      fc.assert(
        fc.property(
          fc.array(itemArb, { minLength: 1, maxLength: 40 }),
          fc.integer({ min: 0, max: 2 ** 48 - 2 ** 30 }),
          fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 100_000 })), { maxLength: 8 }),
          fc.integer({ min: 0, max: 255 }),
          (items, first, gaps, seed) => {
            const toc = tocOf(items, first, gaps, seed);
            const file = packBytes(items, toc);
            const got = parse(file);
            expect(got.count).toBe(toc.count);
            // Parsed: each digest's first 24 bytes, whichever the version.
            expect(Buffer.from(got.digests).equals(Buffer.from(prefixColumn(toc.digests, toc.count, 32)))).toBe(true);
            // The digest column sits where digestsAt says, `stride` bytes an entry, for a pread of one digest.
            expect(got.digestStride).toBe(stride);
            const tocOffset = PACK_HEADER_BYTES + items.reduce((s, it) => s + it.length, 0);
            const last = (toc.count - 1) * stride;
            expect(Buffer.from(file.subarray(tocOffset + got.digestsAt + last, tocOffset + got.digestsAt + last + stride))).toEqual(
              Buffer.from(toc.digests.subarray((toc.count - 1) * 32, (toc.count - 1) * 32 + stride)),
            );
            // A TOC of the other version's digest length does not parse as this one.
            const other = version === PACK_VERSION_NUMBERED ? PACK_VERSION_PREFIXED : PACK_VERSION_NUMBERED;
            expect(() => parse(file, other)).toThrow(CorruptError);
            let offset = PACK_HEADER_BYTES;
            let k = 0;
            for (const it of items) {
              const n = it.codec === 2 ? it.pages : 1;
              for (let m = 0; m < n; m++, k++) {
                expect(numberAt(got, k)).toBe(toc.numbers[k]);
                expect(got.offsets[k]).toBe(offset);
                expect(metaStoredLength(got.metas[k])).toBe(it.length);
                expect(metaCodec(got.metas[k])).toBe(it.codec);
                expect(metaMember(got.metas[k])).toBe(it.codec === 2 ? m : 0);
                expect(metaPages(got.metas[k])).toBe(n);
              }
              offset += it.length;
            }
            const runs = numberRuns(toc.numbers, toc.count);
            expect(got.runStarts).toEqual(runs.starts);
            expect(got.runLengths).toEqual(runs.lengths);
          },
        ),
        { numRuns: 300 },
      );
    });

    it('writes the exact bytes of a small pack: one number run, a page item, a container item, the digests', () => {
      const items: Item[] = [
        { codec: 1, length: 3 },
        { codec: 2, length: 5, pages: 2 },
      ];
      const toc = tocOf(items, 300, [], 1);
      const file = packBytes(items, toc);
      const tocOffset = PACK_HEADER_BYTES + 8;
      expect(file.subarray(0, 16).toString('hex')).toBe(Buffer.from('VNSTPACK').toString('hex') + `0${version}00` + '0000' + '00100000');
      // runs: count 1, gap 300 (varint ac 02), length-1 = 2; items: 01 0300, 12 0500; then 3 digests
      // (version 4: the first 24 bytes of each).
      expect(file.subarray(tocOffset, tocOffset + 10).toString('hex')).toBe('01ac0202' + '010300' + '120500');
      expect(Buffer.from(file.subarray(tocOffset + 10, tocOffset + 10 + 3 * stride))).toEqual(
        Buffer.from(version === PACK_VERSION_NUMBERED ? toc.digests : prefixColumn(toc.digests, 3, 32)),
      );
      expect(file.length).toBe(tocOffset + 10 + 3 * stride + PACK_TRAILER_BYTES);
      const t = file.subarray(file.length - 32);
      expect(t.readUInt32LE(0)).toBe(3);
      expect(t.readUInt32LE(4)).toBe(tocOffset);
      expect(t.subarray(24).toString('latin1')).toBe('VNSTPEND');
    });

    it(`costs ${stride} B of digest a chunk, 3 B an item and a few bytes of numbers a pack`, () => {
      const pages: Item[] = Array.from({ length: 1000 }, () => ({ codec: 1 as const, length: 1500 }));
      const fresh = tocOf(pages, 5_000_000, [], 2);
      expect(encodePackFooterV3(fresh, 16 + 1500 * 1000, 0, version).length).toBe(
        1 + 4 + 2 + 1000 * 3 + 1000 * stride + PACK_TRAILER_BYTES,
      );
      const containers: Item[] = Array.from({ length: 100 }, () => ({ codec: 2 as const, length: 30_000, pages: 16 }));
      const compacted = tocOf(containers, 5_000_000, [], 3);
      expect(encodePackFooterV3(compacted, 16 + 30_000 * 100, 0, version).length).toBe(
        1 + 4 + 2 + 100 * 3 + 1600 * stride + PACK_TRAILER_BYTES,
      );
    });

    it('refuses every single-byte change of the TOC and trailer', () => {
      const items: Item[] = [
        { codec: 0, length: 7 },
        { codec: 2, length: 9, pages: 3 },
        { codec: 1, length: 2 },
      ];
      const file = packBytes(items, tocOf(items, 12345, [0, 9], 4));
      const tocOffset = PACK_HEADER_BYTES + 18;
      for (let p = tocOffset; p < file.length; p++) {
        for (const x of [0x01, 0x80, 0xff]) {
          const bad = Buffer.from(file);
          bad[p] ^= x;
          expect(() => parse(bad), `byte ${p} ^ ${x}`).toThrow(CorruptError);
        }
      }
    });

    it('refuses structurally wrong TOCs whose checksum holds', () => {
      /** A file of 6 payload bytes whose TOC is `toc` (hex) for `count` chunks, with valid checksums. */
      const withToc = (tocHex: string, count: number, payloadBytes = 6): Buffer => {
        const toc = Buffer.from(tocHex, 'hex');
        const t = Buffer.alloc(PACK_TRAILER_BYTES);
        writePackTrailer(t, count, PACK_HEADER_BYTES + payloadBytes, toc, 0);
        return Buffer.concat([encodePackHeader(4096, version), Buffer.alloc(payloadBytes), toc, t]);
      };
      const d = (n: number) => '00'.repeat(stride * n);
      // Sound: two runs (5, then 9..), two items of 3 bytes.
      expect(parse(withToc('02' + '0500' + '0300' + '010300' + '010300' + d(2), 2)).runStarts).toEqual([5, 9]);
      const cases: [string, string, number][] = [
        ['run that continues its predecessor', '02' + '0500' + '0000' + '010300' + '010300' + d(2), 2],
        ['runs short of the count', '01' + '0500' + '010300' + '010300' + d(2), 2],
        ['runs beyond the count', '01' + '0502' + '010300' + '010300' + d(2), 2],
        ['no runs', '00' + '010300' + '010300' + d(2), 2],
        ['unknown codec', '01' + '0501' + '030300' + '010300' + d(2), 2],
        ['page count outside a container', '01' + '0501' + '110600' + d(2), 2],
        ['container beyond the count', '01' + '0501' + '220600' + d(2), 2],
        ['zero length', '01' + '0501' + '010000' + '010600' + d(2), 2],
        ['lengths short of the payload', '01' + '0501' + '010200' + '010300' + d(2), 2],
        ['trailing bytes', '01' + '0501' + '010300' + '010300' + d(2) + '00', 2],
        ['digests missing', '01' + '0501' + '010300' + '010300' + d(1) + '00'.repeat(stride - 1), 2],
      ];
      for (const [what, hex, count] of cases) {
        expect(() => parse(withToc(hex, count)), what).toThrow(CorruptError);
      }
      // A zero count, and a TOC offset inside the header.
      expect(() => parse(withToc('01' + '0500' + '010600' + d(1), 0))).toThrow(CorruptError);
    });

    it('refuses numbers that do not strictly increase, or leave 48 bits, when writing', () => {
      expect(() => numberRuns([3, 3], 2)).toThrow(RangeError);
      expect(() => numberRuns([4, 2], 2)).toThrow(RangeError);
      expect(() => numberRuns([2 ** 48], 1)).toThrow(RangeError);
      expect(numberRuns([1, 2, 3, 7, 8, 20], 6)).toEqual({ starts: [1, 7, 20], lengths: [3, 2, 1] });
      const members = [0, 1, 0];
      expect(() =>
        encodePackFooterV3(
          {
            count: 3,
            numbers: [1, 2, 3],
            digests: new Uint8Array(96),
            lengths: [9, 8, 9],
            codecs: [CONTAINER_CODEC, CONTAINER_CODEC, 1],
            members,
          },
          16 + 17,
          0,
        ),
      ).toThrow(RangeError);
    });
  });
}
