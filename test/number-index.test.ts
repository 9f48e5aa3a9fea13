/**
 * The format-3 number index, built from real version-3 TOCs (encoded, then parsed): after any mix of
 * fresh packs, gc-like rewrites that keep numbers, and dropped packs, every live number locates its
 * pack, entry and payload, and every digest finds its number exactly (fast-check against a model);
 * fingerprint clashes are answered exactly; duplicate numbers are refused; memory for 1M chunks.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CONTAINER_CODEC, PACK_HEADER_BYTES } from '../src/format/pack.js';
import { encodePackFooterV3, parsePackTocV3, parsePackTrailerV3, TOC_DIGEST_BYTES, type TocV3 } from '../src/format/pack-v3.js';
import { ChunkTable } from '../src/index/chunk-table.js';
import { NumberIndex } from '../src/index/number-index.js';

interface Chunk {
  number: number;
  digest: Uint8Array;
  codec: number;
  length: number;
  member: number;
}

/** The chunks' digest column as a version-4 TOC gives it: 24-byte prefixes. */
function prefixesOf(chunks: Chunk[]): Uint8Array {
  const out = new Uint8Array(chunks.length * TOC_DIGEST_BYTES);
  chunks.forEach((c, k) => out.set(c.digest.subarray(0, TOC_DIGEST_BYTES), k * TOC_DIGEST_BYTES));
  return out;
}

/** Encodes and parses a version-4 TOC for these chunks (containers: consecutive members). */
function tocFor(chunks: Chunk[]): TocV3 {
  const count = chunks.length;
  const digests = new Uint8Array(count * 32);
  chunks.forEach((c, k) => digests.set(c.digest, k * 32));
  let payload = 0;
  chunks.forEach((c) => (payload += c.member === 0 ? c.length : 0));
  const tocOffset = PACK_HEADER_BYTES + payload;
  const footer = encodePackFooterV3(
    {
      count,
      numbers: chunks.map((c) => c.number),
      digests,
      lengths: chunks.map((c) => c.length),
      codecs: chunks.map((c) => c.codec),
      members: chunks.map((c) => c.member),
    },
    tocOffset,
    0,
  );
  const fileSize = tocOffset + footer.length;
  const trailer = parsePackTrailerV3(footer.subarray(footer.length - 32), fileSize, 't');
  return parsePackTocV3(footer.subarray(0, footer.length - 32), trailer, 't');
}

/** Fresh chunks numbered from `first`: per-page items and containers of `containerPages`. */
function freshChunks(first: number, n: number, containerPages: number, digestOf: (k: number) => Uint8Array): Chunk[] {
  const out: Chunk[] = [];
  for (let k = 0; k < n; k++) {
    const inContainer = containerPages > 1 && k < n - (n % containerPages);
    out.push({
      number: first + k,
      digest: digestOf(k),
      codec: inContainer ? CONTAINER_CODEC : k % 2,
      length: inContainer ? 20_000 : 1000 + k,
      member: inContainer ? k % containerPages : 0,
    });
  }
  return out;
}

/** Re-lays out kept chunks as a gc copy would: numbers kept, each chunk a per-page item. */
function copyOf(chunks: Chunk[]): Chunk[] {
  return chunks.map((c) => ({ ...c, codec: 1, length: 900, member: 0 }));
}

const op = fc.oneof(
  fc.record({ kind: fc.constant('fresh' as const), n: fc.integer({ min: 1, max: 40 }), pages: fc.constantFrom(1, 4, 16), skip: fc.nat(3) }),
  fc.record({ kind: fc.constant('rewrite' as const), which: fc.nat(), keep: fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }) }),
  fc.record({ kind: fc.constant('drop' as const), which: fc.nat() }),
);

describe('number index (store format 3)', () => {
  it('locates every live number and finds every digest exactly after fresh packs, rewrites and drops', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 25 }), (ops) => {
        const index = new NumberIndex(new ChunkTable(64));
        const packs = new Map<number, Chunk[]>();
        const dead: Chunk[] = [];
        let nextPack = 1;
        let nextNumber = 0;
        const digestOf = (pack: number, entry: number) => packs.get(pack)![entry].digest.subarray(0, TOC_DIGEST_BYTES);
        const add = (chunks: Chunk[]) => {
          const id = nextPack++;
          packs.set(id, chunks);
          expect(index.addPack(id, tocFor(chunks), digestOf)).toEqual([]);
          return id;
        };
        const remove = (id: number) => {
          const chunks = packs.get(id)!;
          index.removePack(id, prefixesOf(chunks));
          packs.delete(id);
        };
        for (const o of ops) {
          const ids = [...packs.keys()];
          if (o.kind === 'fresh') {
            nextNumber += o.skip; // holes: numbers whose pack was never sealed
            add(freshChunks(nextNumber, o.n, o.pages, () => randomBytes(32)));
            nextNumber += o.n;
          } else if (ids.length > 0) {
            const id = ids[o.which % ids.length];
            const chunks = packs.get(id)!;
            if (o.kind === 'drop') {
              remove(id);
              dead.push(...chunks);
            } else {
              const kept = chunks.filter((_, k) => o.keep[k % 40]);
              dead.push(...chunks.filter((_, k) => !o.keep[k % 40]));
              remove(id); // gc: the copy replaces the original in one step
              if (kept.length > 0) add(copyOf(kept));
            }
          }
        }
        let live = 0;
        for (const [id, chunks] of packs) {
          chunks.forEach((c, k) => {
            const at = index.locate(c.number);
            expect(at?.pack).toBe(id);
            expect(at?.entry).toBe(k);
            expect(at?.location.storedLength).toBe(c.length);
            expect(at?.location.codec).toBe(c.codec);
            expect(index.lookup(c.digest, digestOf)).toBe(c.number);
            live++;
          });
        }
        expect(index.size).toBe(live);
        for (const c of dead) {
          expect(index.locate(c.number)).toBeUndefined();
          expect(index.lookup(c.digest, digestOf)).toBeUndefined();
        }
        expect(index.locate(nextNumber + 5)).toBeUndefined();
      }),
      { numRuns: 150 },
    );
  });

  it('answers digests that share a fingerprint exactly, before and after one of them goes', () => {
    // The fingerprint reads a digest's first 12 bytes: digests equal there clash whatever the seed
    // (they differ inside the 24-byte prefix the TOC keeps).
    const clash = (tail: number) => {
      const d = new Uint8Array(32).fill(0xab);
      d[23] = tail;
      return d;
    };
    const index = new NumberIndex(new ChunkTable(64));
    const packs = new Map<number, Chunk[]>();
    const digestOf = (pack: number, entry: number) => packs.get(pack)![entry].digest.subarray(0, TOC_DIGEST_BYTES);
    const a = freshChunks(10, 3, 1, (k) => (k === 1 ? clash(1) : randomBytes(32)));
    const b = freshChunks(13, 2, 1, (k) => (k === 0 ? clash(2) : randomBytes(32)));
    packs.set(1, a);
    expect(index.addPack(1, tocFor(a), digestOf)).toEqual([]);
    packs.set(2, b);
    expect(index.addPack(2, tocFor(b), digestOf)).toEqual([]);
    expect(index.candidate(clash(1)).kind).toBe('exact');
    expect(index.lookup(clash(1), digestOf)).toBe(11);
    expect(index.lookup(clash(2), digestOf)).toBe(13);
    expect(index.lookup(clash(3), digestOf)).toBeUndefined();
    index.removePack(1, prefixesOf(a));
    expect(index.lookup(clash(1), digestOf)).toBeUndefined();
    expect(index.lookup(clash(2), digestOf)).toBe(13);
    // A digest absent from the table whose fingerprint one stored chunk has: confirmed false.
    const lone = freshChunks(20, 1, 1, () => clash(7));
    packs.set(3, lone);
    const other = new NumberIndex(new ChunkTable(64));
    other.addPack(3, tocFor(lone), digestOf);
    expect(other.candidate(clash(8)).kind).toBe('confirm');
    expect(other.lookup(clash(8), digestOf)).toBeUndefined();
    expect(other.lookup(clash(7), digestOf)).toBe(20);
  });

  it('refuses a pack whose numbers another pack holds, naming it, and adds nothing', () => {
    const index = new NumberIndex(new ChunkTable(64));
    const first = freshChunks(100, 10, 4, () => randomBytes(32));
    expect(index.addPack(1, tocFor(first), () => new Uint8Array(32))).toEqual([]);
    const other = freshChunks(200, 5, 1, () => randomBytes(32));
    expect(index.addPack(2, tocFor(other), () => new Uint8Array(32))).toEqual([]);
    const copy = copyOf([first[3], first[7]]);
    expect(index.addPack(3, tocFor(copy), () => new Uint8Array(32))).toEqual([1]);
    expect(index.overlapping([99, 204], [2, 1])).toEqual([1, 2]);
    expect(index.overlapping([110], [90])).toEqual([]);
    expect(index.size).toBe(15);
    expect(index.locate(103)?.pack).toBe(1);
    expect(index.nextNumber).toBe(205);
  });

  it('holds 1M chunks in under 48 B each, built from their TOCs in a few seconds', () => {
    const perPack = 32_768;
    const packs = 32; // 1,048,576 chunks
    const index = new NumberIndex();
    let numbers = 0;
    const tocs: TocV3[] = [];
    for (let p = 0; p < packs; p++) {
      const all = randomBytes(perPack * 32);
      tocs.push(tocFor(freshChunks(numbers, perPack, 16, (k) => all.subarray(k * 32, k * 32 + 32))));
      numbers += perPack;
    }
    const digestOf = (pack: number, entry: number) => tocs[pack].digests.subarray(entry * TOC_DIGEST_BYTES, (entry + 1) * TOC_DIGEST_BYTES);
    const started = process.hrtime.bigint();
    for (let p = 0; p < packs; p++) expect(index.addPack(p, tocs[p], digestOf)).toEqual([]);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const perChunk = index.memoryBytes / index.size;
    console.log(
      `number index: ${index.size} chunks, ${index.memoryBytes} B (${perChunk.toFixed(1)} B a chunk), built in ${ms.toFixed(0)} ms`,
    );
    expect(index.size).toBe(perPack * packs);
    expect(perChunk).toBeLessThan(48);
    for (let k = 0; k < 1000; k++) {
      const n = (k * 7919) % numbers;
      const at = index.locate(n)!;
      expect(index.lookup(digestOf(at.pack, at.entry), digestOf)).toBe(n);
    }
  });
});
