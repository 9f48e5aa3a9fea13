/**
 * PackWriter.appendMany: chunks chosen from a block (gaps, any payload order, pack and write-batch
 * boundaries inside the block) land in sealed packs whose index and table of contents give back
 * exactly their bytes; append() of single chunks mixes in freely.
 */
import { blake3 } from '@napi-rs/blake-hash';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { getCodec } from '../src/chunk/codec.js';
import { makePage, makeTempDir, packProblems, PAGE, removeDir, type PageKindSpec } from './helpers/engine.js';

const DIGEST = 32;

/** A block's chunks: a page kind and seed each, and whether appendMany is given it. */
function chunkList(kinds: PageKindSpec[], pick: fc.Arbitrary<boolean>, maxLength: number) {
  return fc.array(fc.record({ kind: fc.constantFrom(...kinds), pick, seed: fc.nat() }), { minLength: 1, maxLength });
}

/** One block as a worker returns it: payloads back to back (chunk i's at `at[i]`), digests in page order. */
function makeBlock(chunks: { kind: PageKindSpec; seed: number }[], seedStride: number) {
  const pages = chunks.map((c, i) => makePage(c.kind, c.seed * seedStride + i));
  const c = getCodec().compressPages(
    Buffer.concat(pages),
    pages.map((_, i) => i * PAGE),
  );
  const at: number[] = [];
  for (let i = 0, pos = 0; i < pages.length; pos += c.lengths[i++]) at.push(pos);
  return { payload: c.payload, lengths: c.lengths, codecs: c.codecs, digests: Buffer.concat(pages.map((p) => blake3(p))), at };
}

/** A fresh format-1 store (LevelDB index entries; format 3: format3-roundtrip); its packs are checked once closed. */
async function withStore(packTargetBytes: number, fn: (store: Store) => Promise<void>): Promise<void> {
  const dir = makeTempDir('vnstore-pw-');
  try {
    await Store.init(dir, { format: 1 });
    const store = await Store.open(dir, { workers: 0, packTargetBytes });
    try {
      await fn(store);
    } finally {
      await store.close();
    }
    // Every pack sealed well-formed: trailer, table of contents, payload CRC, chunk prefixes.
    expect(await packProblems(dir)).toEqual([]);
  } finally {
    removeDir(dir);
  }
}

describe('PackWriter.appendMany', () => {
  it('stores exactly the chosen chunks, across pack boundaries, findable by digest', async () => {
    await fc.assert(
      fc.asyncProperty(
        chunkList(['random', 'compressible', 'sparse'], fc.boolean(), 60),
        fc.integer({ min: 2, max: 40 }).map((k) => k * 1024), // pack target: a few chunks per pack
        fc.boolean(),
        async (chunks, packTarget, reversed) =>
          withStore(packTarget, async (store) => {
            const { payload, lengths, codecs, digests, at } = makeBlock(chunks, 64);
            const len = (i: number) => lengths[i];
            let order = chunks.map((_, i) => i).filter((i) => chunks[i].pick);
            if (reversed) order = order.reverse(); // payloads not in ascending order: no run to extend
            store.writer.appendMany(
              digests,
              order.map((i) => i * DIGEST),
              payload,
              order.map((i) => at[i]),
              order.map(len),
              order.map((i) => codecs[i]),
              order.length,
            );
            const single = makePage('random', 424242);
            const singleDigest = blake3(single);
            store.writer.append(singleDigest, single, 0); // Raw codec
            // Before sealing, the open pack's table of contents answers exact lookups.
            const before = new Map(order.map((i) => [i, store.writer.locateUnindexed(digests.subarray(i * DIGEST, (i + 1) * DIGEST))]));
            for (const i of chunks.map((_, k) => k).filter((k) => !chunks[k].pick)) {
              if (
                !order.some((j) => digests.subarray(j * DIGEST, (j + 1) * DIGEST).equals(digests.subarray(i * DIGEST, (i + 1) * DIGEST)))
              ) {
                expect(store.writer.locateUnindexed(digests.subarray(i * DIGEST, (i + 1) * DIGEST))).toBeUndefined();
              }
            }
            await store.writer.flush();
            for (const i of order) {
              const digest = digests.subarray(i * DIGEST, (i + 1) * DIGEST);
              const [loc] = await store.lookupExact([digest]);
              expect(before.get(i)).toEqual(loc); // the same location before and after indexing
              expect(loc?.storedLength).toBe(len(i));
              expect(loc?.codec).toBe(codecs[i]);
              const bytes = await store.packs.read(loc!.pack, loc!.offset, loc!.storedLength);
              expect(bytes.equals(payload.subarray(at[i], at[i] + len(i)))).toBe(true);
            }
            for (const i of chunks.map((_, k) => k).filter((k) => !chunks[k].pick)) {
              expect((await store.lookupExact([digests.subarray(i * DIGEST, (i + 1) * DIGEST)]))[0]).toBeUndefined();
            }
            const [sloc] = await store.lookupExact([singleDigest]);
            expect((await store.packs.read(sloc!.pack, sloc!.offset, sloc!.storedLength)).equals(single)).toBe(true);
            expect(store.writer.unindexedChunks).toBe(0);
          }),
      ),
      { numRuns: 25 },
    );
  });
});

describe('PackWriter.appendMany with a lent payload', () => {
  /**
   * Long runs are written from the lent payload; the lender scribbles over it once every hold is
   * released (as a slab goes back to its pool and is reused): a release before its run was written
   * would leave the scribble in the pack.
   */
  it('writes long runs from the payload itself, releases each after its write, and the packs hold exactly the bytes', async () => {
    await fc.assert(
      fc.asyncProperty(
        chunkList(
          ['random', 'random', 'compressible'],
          fc.nat(9).map((n) => n > 0),
          300,
        ),
        fc.integer({ min: 16, max: 2048 }).map((k) => k * 1024),
        async (chunks, packTarget) =>
          withStore(packTarget, async (store) => {
            const { payload: compressed, lengths, codecs, digests, at } = makeBlock(chunks, 512);
            const payload = new Uint8Array(new SharedArrayBuffer(compressed.length + 8), 8, compressed.length);
            payload.set(compressed);
            const order = chunks.map((_, i) => i).filter((i) => chunks[i].pick);
            let holds = 1;
            let taken = 0;
            let mostHeld = 0;
            const free = () => {
              if (--holds === 0) payload.fill(0xee);
            };
            const loan = {
              hold: () => {
                holds++;
                taken++;
                mostHeld = Math.max(mostHeld, holds - 1);
                let released = false;
                return () => {
                  expect(released).toBe(false);
                  released = true;
                  free();
                };
              },
            };
            store.writer.appendMany(
              digests,
              order.map((i) => i * DIGEST),
              payload,
              order.map((i) => at[i]),
              order.map((i) => lengths[i]),
              order.map((i) => codecs[i]),
              order.length,
              undefined,
              undefined,
              loan,
            );
            free();
            await store.writer.flush();
            expect(holds).toBe(0); // every hold released once its run was written
            expect(mostHeld).toBeLessThanOrEqual(4); // LENT_RUNS_MAX: the rest are copied
            // A long run of picked pages in a pack that holds it is lent (cut at most twice short).
            let longest = 0;
            for (let i = 0, run = 0; i < chunks.length; i++) {
              run = chunks[i].pick ? run + lengths[i] : 0;
              longest = Math.max(longest, run);
            }
            if (longest >= 512 * 1024 && packTarget >= 1024 * 1024) expect(taken).toBeGreaterThan(0);
            for (const i of order) {
              const [loc] = await store.lookupExact([digests.subarray(i * DIGEST, (i + 1) * DIGEST)]);
              const bytes = await store.packs.read(loc!.pack, loc!.offset, loc!.storedLength);
              expect(bytes.equals(compressed.subarray(at[i], at[i] + lengths[i]))).toBe(true);
            }
          }),
      ),
      {
        numRuns: 30,
        // Raw pages, all picked: 1.2 MiB into 2 MiB packs (runs lent for certain), and 8 MiB in one
        // block (more runs than may be lent at once).
        examples: [
          [Array.from({ length: 300 }, (_, i) => ({ kind: 'random' as PageKindSpec, pick: true, seed: i })), 2048 * 1024],
          [Array.from({ length: 2048 }, (_, i) => ({ kind: 'random' as PageKindSpec, pick: true, seed: i })), 32 * 1024 * 1024],
        ],
      },
    );
  });
});

describe('PackWriter.locateUnindexed', () => {
  it('finds chunks whose fingerprints clash (an ambiguous table slot) by their exact digest, and no other', async () => {
    const dir = makeTempDir('vnstore-pw-');
    try {
      await Store.init(dir, { format: 1 }); // LevelDB index entries (format 3: format3-roundtrip)
      const store = await Store.open(dir, { workers: 0 });
      try {
        // Three digests sharing the 4-byte fingerprint, differing in the last byte (a guest can forge these).
        const digest = (last: number) => Buffer.concat([Buffer.from([1, 2, 3, 4]), Buffer.alloc(27, 9), Buffer.from([last])]);
        const [a, b, c] = [digest(1), digest(2), digest(3)];
        store.writer.append(a, makePage('random', 1), 0);
        store.writer.append(b, makePage('random', 2), 0);
        expect(store.table.get(a)?.ambiguous).toBe(true);
        const la = store.writer.locateUnindexed(a);
        const lb = store.writer.locateUnindexed(b);
        expect(la && lb && la.offset !== lb.offset).toBe(true);
        expect(store.writer.locateUnindexed(c)).toBeUndefined();
        expect(store.writer.unindexedChunks).toBe(2);
        expect([...store.writer.unindexedDigests()].map((d) => Buffer.from(d).toString('hex'))).toEqual([
          a.toString('hex'),
          b.toString('hex'),
        ]);
        await store.writer.flush();
        // Indexed now: the writer no longer answers for them; the index does.
        expect(store.writer.locateUnindexed(a)).toBeUndefined();
        expect(await store.lookupExact([a, b, c])).toEqual([la, lb, undefined]);
        expect((await store.packs.read(lb!.pack, lb!.offset, lb!.storedLength)).equals(makePage('random', 2))).toBe(true);
      } finally {
        await store.close();
      }
    } finally {
      removeDir(dir);
    }
  });
});
