/**
 * gc (issue 3, "gc"): the plan is a pure function with exact arithmetic; gc reclaims exactly the dead
 * bytes (computed here from the images, not from the store), copies chunks as stored, and every
 * remaining snapshot restores bit-exact; a session open in the same process (before and during gc,
 * including one that references chunks gc had planned to drop) commits and restores exactly.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { readCounters } from '../src/store/counters.js';
import { forget } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { DEFAULT_MAX_UNUSED, parseMaxUnused, parseSize, planGc, type MaxUnused, type PackLiveness } from '../src/maintenance/gc-plan.js';
import fc from 'fast-check';
import { recount } from '../src/maintenance/stats.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { prng, removeDir, restoreToBuffer, runCli } from './helpers/engine.js';
import {
  dirFileBytes,
  commitRestoreReopen,
  digestsOf,
  expectAllRestore,
  imageOf,
  newStore,
  page,
  PACK_OVERHEAD,
  putImage,
  readIndex,
  storedLengths,
  TOC_ENTRY,
} from './helpers/maintenance.js';

const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) removeDir(r);
});

const PACK_TARGET = 16 * 1024;

function pl(id: number, payloadBytes: number, liveBytes: number, liveChunks: number, chunks = 4, indexedChunks = chunks): PackLiveness {
  return {
    id,
    bytes: 48 + payloadBytes + 11 * chunks,
    payloadBytes,
    chunks,
    indexedChunks,
    indexedBytes: payloadBytes,
    liveChunks,
    liveBytes,
  };
}

describe('gc plan (pure)', () => {
  const packs = [pl(1, 16384, 16384, 4), pl(2, 16384, 4096, 1), pl(3, 16384, 0, 0), pl(4, 16384, 12288, 3), pl(5, 8000, 2000, 2)];

  it('drops dead packs, rewrites the sparsest until unused bytes are within the target, and predicts exact sizes', () => {
    // 20% of the pack bytes after gc: rewriting packs 2 and 5 (live 25%, the sparsest) is enough.
    const plan = planGc(packs, { maxUnused: { percent: 20 }, repackSmall: false, targetBytes: 16384 });
    expect(plan.packs.map((p) => p.action)).toEqual(['keep', 'rewrite', 'drop', 'keep', 'rewrite']);
    expect(plan.packs[3].reason).toMatch(/unused within target/);
    expect(plan.drop).toEqual([3]);
    expect(plan.rewrite).toEqual([2, 5]);
    // Packs 2 and 5's live data (4096 + 2000 B, 3 chunks) fit one new pack.
    expect(plan.newPacks).toEqual([{ from: [2, 5], chunks: 3, payloadBytes: 6096, bytes: 16 + 6096 + 3 * 11 + 32 }]);
    const old = packs[1].bytes + packs[2].bytes + packs[4].bytes;
    expect(plan.totals.reclaimBytes).toBe(old - (16 + 6096 + 33 + 32));
    expect(plan.totals.deadBytesKept).toBe(4096);
    expect(plan.totals.packBytesAfter).toBe(packs[0].bytes + packs[3].bytes + 16 + 6096 + 33 + 32);
    expect(plan.totals.maxUnusedBytes).toBe(Math.floor(plan.totals.packBytesAfter * 0.2));
    expect(plan.totals.chunksRemoved).toBe(3 + 4 + 2); // dead indexed chunks of packs 2, 3 and 5
    expect(plan.totals.bytesCopied).toBe(6096);

    // The default (5%) goes on to pack 4 as well; so does 0 bytes, which reclaims every dead byte.
    for (const maxUnused of [DEFAULT_MAX_UNUSED, { bytes: 0 }]) {
      const all = planGc(packs, { maxUnused, repackSmall: false, targetBytes: 16384 });
      expect(all.packs.map((p) => p.action)).toEqual(['keep', 'rewrite', 'drop', 'rewrite', 'rewrite']);
      // New packs close at the target: 4096 + 12288 reaches 16384 - 16, then 2000 starts another.
      expect(all.newPacks.map((n) => n.from)).toEqual([[2, 4], [5]]);
      expect(all.totals.deadBytesKept).toBe(0);
      expect(all.totals.deadBytesRemoved).toBe(all.totals.deadBytes);
    }
    // --max-repack bounds the copying: pack 4's 12 KiB do not fit after 2 and 5.
    const bounded = planGc(packs, { maxUnused: { bytes: 0 }, maxRepackBytes: 6096, repackSmall: false, targetBytes: 16384 });
    expect(bounded.rewrite).toEqual([2, 5]);
    expect(bounded.packs[3].reason).toMatch(/max-repack/);
    // Unlimited: only drops.
    expect(planGc(packs, { maxUnused: { unlimited: true }, repackSmall: false, targetBytes: 16384 }).packs.map((p) => p.action)).toEqual([
      'keep',
      'keep',
      'drop',
      'keep',
      'keep',
    ]);

    const small = planGc([pl(1, 4096, 4096, 1, 1), pl(2, 4096, 4096, 1, 1), pl(3, 16384, 16384, 4)], {
      maxUnused: DEFAULT_MAX_UNUSED,
      repackSmall: true,
      targetBytes: 65536,
    });
    // Packs under a quarter of the target merge; pack 3 (16 476 B) is just above it.
    expect(small.rewrite).toEqual([1, 2]);
    expect(small.packs[0].reason).toMatch(/small/);
    expect(small.newPacks).toEqual([{ from: [1, 2], chunks: 2, payloadBytes: 8192, bytes: 16 + 8192 + 22 + 32 }]);
    expect(() => planGc(packs, { maxUnused: { percent: 100 }, repackSmall: false, targetBytes: 16384 })).toThrow(RangeError);
    expect(() => planGc(packs, { maxUnused: { bytes: -1 }, repackSmall: false, targetBytes: 16384 })).toThrow(RangeError);
    expect(() => planGc(packs, { maxUnused: DEFAULT_MAX_UNUSED, maxRepackBytes: -1, repackSmall: false, targetBytes: 16384 })).toThrow(
      RangeError,
    );
    expect(planGc([], { maxUnused: DEFAULT_MAX_UNUSED, repackSmall: false, targetBytes: 16384 }).totals.reclaimBytes).toBe(0);
  });

  it('parses --max-unused and sizes', () => {
    expect(parseMaxUnused('5%')).toEqual({ percent: 5 });
    expect(parseMaxUnused('0.5 %')).toEqual({ percent: 0.5 });
    expect(parseMaxUnused('0')).toEqual({ bytes: 0 });
    expect(parseMaxUnused('200M')).toEqual({ bytes: 200 * 2 ** 20 });
    expect(parseMaxUnused('1.5GiB')).toEqual({ bytes: 1.5 * 2 ** 30 });
    expect(parseMaxUnused('unlimited')).toEqual({ unlimited: true });
    for (const bad of ['100%', 'half', '-1', '5%%', '3X', '']) expect(parseMaxUnused(bad), bad).toBeUndefined();
    expect(parseSize('2k')).toBe(2048);
    expect(parseSize('7')).toBe(7);
    expect(parseSize('1e3')).toBeUndefined();
  });

  const arbPack = (id: number) =>
    fc
      .record({
        chunks: fc.integer({ min: 1, max: 40 }),
        indexedFrac: fc.double({ min: 0, max: 1, noNaN: true }),
        liveFrac: fc.double({ min: 0, max: 1, noNaN: true }),
        avg: fc.integer({ min: 1, max: 4096 }),
        liveShare: fc.double({ min: 0, max: 1, noNaN: true }),
      })
      .map(({ chunks, indexedFrac, liveFrac, avg, liveShare }): PackLiveness => {
        const payloadBytes = chunks * avg;
        const indexedChunks = Math.round(chunks * indexedFrac);
        const liveChunks = Math.round(indexedChunks * liveFrac);
        const liveBytes = liveChunks === 0 ? 0 : liveChunks + Math.floor((payloadBytes - liveChunks) * liveShare);
        return {
          id,
          bytes: 48 + payloadBytes + 11 * chunks,
          payloadBytes,
          chunks,
          indexedChunks,
          indexedBytes: Math.max(liveBytes, Math.floor((payloadBytes * indexedChunks) / chunks)),
          liveChunks,
          liveBytes,
        };
      });
  const arbPacks = fc.integer({ min: 0, max: 30 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => arbPack(i * 3 + 1))));
  const arbMaxUnused: fc.Arbitrary<MaxUnused> = fc.oneof(
    fc.integer({ min: 0, max: 99 }).map((percent) => ({ percent })),
    fc.integer({ min: 0, max: 200_000 }).map((bytes) => ({ bytes })),
  );

  it('leaves unused bytes within the target whenever --max-repack allows; never copies more than --max-repack', () => {
    fc.assert(
      fc.property(
        arbPacks,
        arbMaxUnused,
        fc.option(fc.integer({ min: 0, max: 300_000 }), { nil: undefined }),
        fc.boolean(),
        (packs, maxUnused, maxRepackBytes, repackSmall) => {
          const plan = planGc(packs, { maxUnused, maxRepackBytes, repackSmall, targetBytes: 16384 });
          const t = plan.totals;
          expect(t.bytesCopied).toBeLessThanOrEqual(maxRepackBytes ?? Infinity);
          const candidates = plan.packs.filter((p) => p.liveChunks > 0 && p.liveBytes < p.payloadBytes);
          const allowed = maxRepackBytes === undefined || candidates.reduce((s, p) => s + p.liveBytes, 0) <= maxRepackBytes;
          if (allowed) expect(t.deadBytesKept).toBeLessThanOrEqual(t.maxUnusedBytes!);
          // Exact bookkeeping: every pack decided once; dead packs always go; sizes add up.
          for (const p of plan.packs) expect(p.action === 'drop').toBe(p.liveChunks === 0);
          expect(plan.drop.length + plan.rewrite.length + plan.packs.filter((p) => p.action === 'keep').length).toBe(packs.length);
          expect(t.deadBytesKept).toBe(t.deadBytes - t.deadBytesRemoved);
          expect(t.packBytesAfter).toBe(t.packBytes - t.reclaimBytes);
          expect(t.packBytesAfter).toBe(
            plan.packs.filter((p) => p.action === 'keep').reduce((s, p) => s + p.bytes, 0) + plan.newPacks.reduce((s, n) => s + n.bytes, 0),
          );
          expect(plan.newPacks.flatMap((n) => n.from)).toEqual(plan.rewrite);
          // Sparsest first: with no bound on copying, no kept pack with dead bytes is sparser than a rewritten one.
          if (maxRepackBytes === undefined && !repackSmall) {
            const kept = candidates.filter((p) => p.action === 'keep');
            for (const r of plan.packs.filter((p) => p.action === 'rewrite'))
              for (const k of kept) expect(r.liveFraction).toBeLessThanOrEqual(k.liveFraction);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

/** Three VMs' snapshots over a page vocabulary; returns the images by snapshot id. */
async function buildStore(store: Store): Promise<{ recs: SnapshotRecord[]; images: Map<string, Buffer> }> {
  const rand = prng(7);
  const vocab = (n: number) => (rand() % 9 === 0 ? 'z' : rand() % 3 === 0 ? `c${n}` : `r${n}`);
  const recs: SnapshotRecord[] = [];
  const images = new Map<string, Buffer>();
  for (const [vm, base, size] of [
    ['a', 0, 40],
    ['b', 1000, 28],
    ['c', 2000, 20],
  ] as const) {
    let names = Array.from({ length: size }, (_, i) => (i < 6 ? `r${i}` : vocab(base + i))); // r0..r5 shared by all VMs
    for (let gen = 0; gen < 3; gen++) {
      if (gen > 0) names = names.map((n, i) => (rand() % 10 < 3 ? vocab(base + 100 * gen + i) : n));
      const img = imageOf(names, vm === 'b' ? 777 : 0);
      const r = await putImage(store, vm, img);
      recs.push(r);
      images.set(r.id, img);
    }
  }
  return { recs, images };
}

describe('gc on a store', () => {
  it('--max-unused 0 reclaims exactly the dead bytes; copies keep their stored bytes; all else restores', async () => {
    const { root, dir, store } = await newStore('gc-exact', PACK_TARGET, 1); // legacy accounting (format 3: gc-v3.test.ts)
    roots.push(root);
    const { recs, images } = await buildStore(store);
    const lengths = storedLengths([...images.values()]);
    // Forget the first snapshot of each VM and the last of c.
    const gone = [recs[0], recs[3], recs[6], recs[8]];
    await forget(store, { ids: gone.map((r) => r.id) });
    for (const r of gone) images.delete(r.id);
    await store.close();

    const indexBefore = await readIndex(dir);
    expect([...indexBefore.keys()].sort()).toEqual([...lengths.keys()].sort()); // every distinct page stored once
    const live = new Set([...images.values()].flatMap((img) => digestsOf(img).digests));
    const dead = [...lengths.keys()].filter((d) => !live.has(d));
    const deadBytes = dead.reduce((s, d) => s + lengths.get(d)!, 0);
    const liveBytes = [...live].reduce((s, d) => s + lengths.get(d)!, 0);
    expect(dead.length).toBeGreaterThan(20);
    const packsBefore = dirFileBytes(path.join(dir, 'packs'));

    const s = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
    const dry = await runGc(s, { maxUnused: { bytes: 0 }, dryRun: true });
    expect(dirFileBytes(path.join(dir, 'packs'))).toEqual(packsBefore); // a dry run changes nothing
    const report = await runGc(s, { maxUnused: { bytes: 0 } });
    const r = report.result!;
    expect(report.live.chunks).toBe(live.size);
    expect(r.chunksRemoved).toBe(dead.length);
    expect(r.deadBytesRemoved).toBe(deadBytes);
    expect(r.skipped).toEqual([]);
    expect(r.chunksRescued).toBe(0);
    const packsAfter = dirFileBytes(path.join(dir, 'packs'));
    expect(r.reclaimedBytes).toBe(packsBefore.bytes - packsAfter.bytes);
    expect(r.reclaimedBytes).toBe(dry.plan.totals.reclaimBytes);
    // What is left is exactly the live chunks, each once, plus per-chunk table entries and per-pack framing.
    expect(packsAfter.bytes).toBe(liveBytes + live.size * TOC_ENTRY + packsAfter.files * PACK_OVERHEAD);
    await expectAllRestore(s, images, 'after gc');
    expect(await readCounters(s.db)).toEqual(await recount(s));
    const again = await runGc(s, { maxUnused: { bytes: 0 }, dryRun: true });
    expect(again.plan.totals.deadBytes).toBe(0);
    expect(again.plan.drop.length + again.plan.rewrite.length).toBe(0);
    const check = await checkStore(s, { readData: true });
    expect(check.problems).toEqual([]);
    await s.close();

    const indexAfter = await readIndex(dir);
    expect([...indexAfter.keys()].sort()).toEqual([...live].sort());
    for (const d of live) {
      // Copied as stored: same length and codec, no recompression.
      expect(indexAfter.get(d)!.storedLength).toBe(indexBefore.get(d)!.storedLength);
      expect(indexAfter.get(d)!.codec).toBe(indexBefore.get(d)!.codec);
    }
    expect(readdirSync(path.join(dir, 'tmp'))).toEqual([]);
  });

  it('the default (5% unused) reclaims what the plan says and leaves unused bytes within the target', async () => {
    const { root, dir, store } = await newStore('gc-default', PACK_TARGET, 1); // legacy plan (format 3: gc-v3.test.ts)
    roots.push(root);
    const { recs, images } = await buildStore(store);
    await forget(store, { ids: [recs[0].id, recs[1].id, recs[4].id] });
    for (const r of [recs[0], recs[1], recs[4]]) images.delete(r.id);
    const before = dirFileBytes(path.join(dir, 'packs')).bytes;
    const report = await runGc(store);
    const t = report.plan.totals;
    expect(t.deadBytes).toBeGreaterThan(0);
    expect(t.deadBytesKept).toBeLessThanOrEqual(t.maxUnusedBytes!);
    expect(t.maxUnusedBytes).toBe(Math.floor(t.packBytesAfter * 0.05));
    expect(report.result!.reclaimedBytes).toBe(t.reclaimBytes);
    expect(before - dirFileBytes(path.join(dir, 'packs')).bytes).toBe(t.reclaimBytes);
    const next = await runGc(store, { dryRun: true });
    expect(next.plan.totals.deadBytes).toBe(t.deadBytesKept);
    await expectAllRestore(store, images, 'after default gc');
    expect((await checkStore(store)).problems).toEqual([]);
    await store.close();
  });

  it('a session open before gc, writing during it (even chunks gc planned to drop), commits and restores exactly', async () => {
    const { root, store } = await newStore('gc-session', PACK_TARGET);
    roots.push(root);
    const { recs, images } = await buildStore(store);
    const goneImg = images.get(recs[0].id)!;
    await forget(store, { ids: [recs[0].id] });
    images.delete(recs[0].id);
    const live = new Set([...images.values()].flatMap((img) => digestsOf(img).digests));
    // Pages only the forgotten snapshot held: gc plans to drop them.
    const deadPages: Buffer[] = [];
    for (let i = 0; i * 4096 < goneImg.length; i++) {
      const p = goneImg.subarray(i * 4096, (i + 1) * 4096);
      const d = digestsOf(Buffer.from(p)).digests[0];
      if (d && !live.has(d)) deadPages.push(Buffer.from(p));
    }
    expect(deadPages.length).toBeGreaterThanOrEqual(6);

    const s = await store.beginSession({ vm: 'new', parent: 'none' });
    const want: Buffer[] = [];
    const write = async (i: number, p: Buffer) => {
      await s.writePage(i, p);
      want[i] = p;
    };
    await write(0, deadPages[0]); // referenced before gc starts: live through the session
    await write(1, page('r9000')); // a brand-new chunk
    await write(2, page('r0')); // live anyway

    // During the copy phase (packs.read), the session looks up another dead chunk: rescued and copied.
    const origRead = store.packs.read.bind(store.packs);
    let hooked = false;
    store.packs.read = async (...args) => {
      if (!hooked) {
        hooked = true;
        await write(3, deadPages[1]);
        await s.drain();
      }
      return origRead(...args);
    };
    // While gc's index batch is being written, the session looks up a chunk that batch removes: it
    // waits for the batch and stores a fresh copy.
    const origBatch = store.db.batch.bind(store.db);
    let batches = 0;
    (store.db as { batch: unknown }).batch = () => {
      const b = origBatch();
      const realWrite = b.write.bind(b);
      (b as { write: unknown }).write = (opts?: { sync?: boolean }) => {
        if (opts?.sync && batches++ === 0) void write(4, deadPages[2]);
        return realWrite(opts ?? {});
      };
      return b;
    };
    const report = await runGc(store, { maxUnused: { bytes: 0 } });
    store.packs.read = origRead;
    (store.db as { batch: unknown }).batch = origBatch;
    expect(hooked).toBe(true);
    expect(report.live.sessions).toBe(1);
    expect(report.result!.chunksRescued).toBeGreaterThanOrEqual(1);
    // The lookup raced the batch: held until it settled (then "absent") or answered after it.
    expect(report.result!.lookupsHeld).toBeLessThanOrEqual(1);

    await write(5, deadPages[3]); // after gc: whatever gc did, the session gets a durable chunk
    await write(6, Buffer.alloc(4096));
    await write(7, deadPages[0]);
    const rec = await s.commit();
    const img = Buffer.concat(want);
    images.set(rec.id, img);
    expect((await restoreToBuffer(store, rec)).equals(img)).toBe(true);
    await expectAllRestore(store, images, 'after session commit');
    const check = await checkStore(store, { readData: true });
    expect(check.problems).toEqual([]);
    await store.close();
  });

  it('sessions writing while gc runs concurrently (random interleavings) commit and restore exactly', async () => {
    const { root, store } = await newStore('gc-concurrent', PACK_TARGET);
    roots.push(root);
    const { recs, images } = await buildStore(store);
    let current = store;
    const candidates = [...images.values()].flatMap((img) =>
      Array.from({ length: Math.floor(img.length / 4096) }, (_, i) => Buffer.from(img.subarray(i * 4096, (i + 1) * 4096))),
    );
    const rand = prng(99);
    for (let round = 0; round < 4; round++) {
      const ids = [...images.keys()];
      const victim = ids[rand() % ids.length];
      await forget(current, { ids: [victim] });
      images.delete(victim);
      const s = await current.beginSession({ vm: `s${round}`, parent: 'none' });
      const want: Buffer[] = [];
      const gc = runGc(current, { maxUnused: rand() % 2 ? { bytes: 0 } : { percent: 5 } });
      for (let i = 0; i < 40; i++) {
        const p = rand() % 4 === 0 ? page(`r${50_000 + round * 100 + i}`) : candidates[rand() % candidates.length];
        await s.writePage(i, p);
        want[i] = p;
        if (rand() % 3 === 0) await new Promise((r) => setImmediate(r));
      }
      await gc;
      current = await commitRestoreReopen(current, s, want, images, `round ${round}`);
    }
    expect(recs.length).toBe(9);
    await current.close();
  });
});

describe('vnstore gc (CLI)', () => {
  it('--help, --dry-run --json changes nothing, --json reports, bad options fail with one line', async () => {
    const { root, dir, store } = await newStore('gc-cli', PACK_TARGET);
    roots.push(root);
    const { recs, images } = await buildStore(store);
    await forget(store, { ids: [recs[1].id, recs[2].id] });
    images.delete(recs[1].id);
    images.delete(recs[2].id);
    await store.close();
    const env = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
    expect((await runCli(['gc', '--help'])).stdout.toString()).toMatch(/--max-unused <PCT\|SIZE>[\s\S]*--max-repack <SIZE>/);
    const before = dirFileBytes(path.join(dir, 'packs'));
    const dry = await runCli(['gc', '--store', dir, '--dry-run', '--json'], { env });
    expect(dry.code, dry.stderr).toBe(0);
    const plan = JSON.parse(dry.stdout.toString());
    expect(plan.dryRun).toBe(true);
    expect(plan.result).toBeUndefined();
    expect(Number.isSafeInteger(plan.plan.totals.reclaimBytes)).toBe(true);
    expect(dirFileBytes(path.join(dir, 'packs'))).toEqual(before);
    const human = await runCli(['gc', '--store', dir, '--dry-run'], { env });
    expect(human.stdout.toString()).toMatch(new RegExp(`would reclaim .* \\(${plan.plan.totals.reclaimBytes} bytes\\)`));
    const real = await runCli(['gc', '--store', dir, '--json'], { env });
    expect(real.code, real.stderr).toBe(0);
    const rep = JSON.parse(real.stdout.toString());
    expect(rep.result.reclaimedBytes).toBe(plan.plan.totals.reclaimBytes);
    expect(before.bytes - dirFileBytes(path.join(dir, 'packs')).bytes).toBe(rep.result.reclaimedBytes);
    expect(typeof rep.seconds).toBe('number');
    for (const [args, code, msg] of [
      [['gc', '--store', dir, '--max-unused', '100%'], 2, /--max-unused takes a percentage below 100/],
      [['gc', '--store', dir, '--max-unused', 'half'], 2, /--max-unused takes/],
      [['gc', '--store', dir, '--max-repack', 'lots'], 2, /--max-repack takes a size/],
      [['gc', '--store', path.join(root, 'none')], 3, /not a vnstore store/],
    ] as const) {
      const r = await runCli([...args]);
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
      expect(r.stderr).toMatch(msg);
    }
    const s = await Store.open(dir, { workers: 0 });
    await expectAllRestore(s, images, 'after CLI gc');
    await s.close();
    expect(existsSync(path.join(dir, 'lock'))).toBe(false);
  });
});
