/**
 * Superseded pre-copy chunks (issue 11): a session keeps its new chunks until commit (bounded:
 * src/store/pending-chunks.ts), so a chunk new in an early round and replaced in a later round of
 * the same session is never stored. After 5 rounds rewriting 20% of the pages each, the packs hold
 * exactly the chunks the committed manifest references (each once, with its table entry and each
 * pack's framing), where before they held ~1.8x (bench/RESULTS.md). Dedup stays correct when two
 * sessions share a new chunk: one session's superseded chunk may be the other's live one.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { PAGE_SIZE } from '../src/format/pages.js';
import { Store } from '../src/store/store.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { prng, removeDir, restoreToBuffer } from './helpers/engine.js';
import { digestsOf, dirFileBytes, newStore, PACK_OVERHEAD, page, readIndex, TOC_ENTRY } from './helpers/maintenance.js';

const roots: string[] = [];
afterEach(() => {
  delete process.env.VNSTORE_PENDING_LIMIT_BYTES;
  for (const r of roots.splice(0)) removeDir(r);
});

/** Pre-copy rounds into one session: every page, then `dirty` of them with new content per round. */
async function precopy(store: Store, vm: string, pages: number, rounds: number, dirty: number, seed: number): Promise<{ rec: SnapshotRecord; image: Buffer }> {
  const rand = prng(seed);
  const names = Array.from({ length: pages }, (_, i) => `${i % 3 === 0 ? 'c' : 'r'}${seed * 1_000_000 + i}`);
  const s = await store.beginSession({ vm, parent: 'none', memoryBytes: pages * PAGE_SIZE });
  for (let round = 0; round < rounds; round++) {
    const list = round === 0 ? names.map((_, i) => i) : [...new Set(Array.from({ length: Math.round(pages * dirty) }, () => rand() % pages))];
    for (const i of list) if (round > 0) names[i] = `${i % 3 === 0 ? 'c' : 'r'}${seed * 1_000_000 + round * 100_000 + i}`;
    await s.writeScattered(list, Buffer.concat(list.map((i) => page(names[i]))));
  }
  const rec = await s.commit();
  return { rec, image: Buffer.concat(names.map(page)) };
}

/** Pack bytes on disk against the bound of what the snapshots reference (from the index). */
async function packsAgainstBound(dir: string, images: Buffer[]): Promise<{ packBytes: number; bound: number; chunks: number }> {
  const referenced = new Set(images.flatMap((img) => digestsOf(img).digests));
  const index = await readIndex(dir);
  const packs = dirFileBytes(path.join(dir, 'packs'));
  const stored = [...referenced].reduce((s, d) => s + index.get(d)!.storedLength, 0);
  return { packBytes: packs.bytes, bound: stored + referenced.size * TOC_ENTRY + packs.files * PACK_OVERHEAD, chunks: index.size };
}

describe('superseded pre-copy chunks', () => {
  it('5 rounds rewriting 20% of the pages each leave exactly the referenced chunks in packs (default bound)', async () => {
    const { root, dir, store } = await newStore('superseded', 32 * 1024 * 1024);
    roots.push(root);
    const { rec, image } = await precopy(store, 'vm', 4096, 5, 0.2, 3);
    expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
    expect(rec.newChunks).toBe(digestsOf(image).digests.length);
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    await store.close();
    const { packBytes, bound, chunks } = await packsAgainstBound(dir, [image]);
    expect(chunks).toBe(new Set(digestsOf(image).digests).size); // no chunk of an earlier round left
    expect(packBytes).toBe(bound);
  }, 120_000);

  it('past the bound, kept chunks go to the writer early and every page still restores', async () => {
    process.env.VNSTORE_PENDING_LIMIT_BYTES = String(256 * 1024); // overflows many times a round
    const { root, dir, store } = await newStore('superseded-small', 64 * 1024);
    roots.push(root);
    const { rec, image } = await precopy(store, 'vm', 1024, 5, 0.2, 5);
    expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    await store.close();
    const { packBytes, bound } = await packsAgainstBound(dir, [image]);
    // What overflowed before a later round replaced it stays as garbage: more than the bound, and
    // far less than storing every round (1 + 4 x 0.2 = 1.8x the image's chunks).
    expect(packBytes).toBeGreaterThan(bound);
    expect(packBytes).toBeLessThan(1.8 * bound);
  }, 120_000);

  for (const order of ['A commits first', 'B commits first'] as const) {
    for (const aKeeps of [false, true]) {
      it(`two sessions share a new chunk (${order}; A ${aKeeps ? 'keeps' : 'supersedes'} it): stored once, both restore exactly`, async () => {
        const { root, dir, store } = await newStore('superseded-shared', 32 * 1024 * 1024);
        roots.push(root);
        const shared = page('r777');
        const a = await store.beginSession({ vm: 'a', parent: 'none', memoryBytes: 3 * PAGE_SIZE });
        const b = await store.beginSession({ vm: 'b', parent: 'none', memoryBytes: 3 * PAGE_SIZE });
        await a.writePages(0, Buffer.concat([shared, page('r1'), page('c2')]));
        await a.drain();
        await b.writePages(0, Buffer.concat([page('r3'), shared, page('c4')]));
        await b.drain();
        if (!aKeeps) await a.writePage(0, page('r5')); // a later round replaces it in A only
        const want = { a: Buffer.concat([aKeeps ? shared : page('r5'), page('r1'), page('c2')]), b: Buffer.concat([page('r3'), shared, page('c4')]) };
        const [first, second] = order === 'A commits first' ? [a, b] : [b, a];
        const recs = [await first.commit(), await second.commit()];
        for (const rec of recs) expect((await restoreToBuffer(store, rec)).equals(want[rec.vm as 'a' | 'b']), rec.vm).toBe(true);
        expect((await checkStore(store, { readData: true })).problems).toEqual([]);
        await store.close();
        const { packBytes, bound, chunks } = await packsAgainstBound(dir, [want.a, want.b]);
        expect(chunks).toBe(new Set([...digestsOf(want.a).digests, ...digestsOf(want.b).digests]).size);
        expect(packBytes).toBe(bound); // the shared chunk once, the superseded one not at all
      }, 60_000);
    }
  }
});
