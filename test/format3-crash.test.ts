/**
 * Crash safety of ingest on a format-3 store (issue 16): `vnstore put` is SIGKILLed at random instants
 * (from process start to after its commit), then the store must reopen, list only complete
 * snapshots, restore every one of them exactly, give numbers above every number handed out before,
 * and take a new put. Reproduce a failing run with VNSTORE_CRASH_SEED=<seed in the message>.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNextNumber } from '../src/store/number-allocator.js';
import { Store } from '../src/store/store.js';
import {
  compressiblePage,
  expectedImageDigest,
  makeTempDir,
  PAGE,
  prng,
  randomPage,
  removeDir,
  restoreToBuffer,
  runCli,
} from './helpers/engine.js';
import { runAndKill } from './helpers/maintenance.js';

const PACK_TARGET = 64 * 1024;
const ENV = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
const SEED = Number(process.env.VNSTORE_CRASH_SEED ?? Date.now() % 1_000_000);
const TRIALS = 12;
const PAGES = 512; // 2 MiB: a put seals a few dozen packs
/** Trace lines of `put` (VNSTORE_TRACE=1), in order. */
const PHASES = ['recovered', 'session begun', 'ingest drained', 'packs flushed', 'manifest written', 'committed'];

let root: string;
let dir: string;

beforeAll(async () => {
  root = makeTempDir('fmt3-crash');
  dir = path.join(root, 'store');
  const r = await runCli(['init', '--store', dir, '--format', '3']);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(() => removeDir(root));

/** A variant of `prev`: about a fifth of its pages replaced (random or compressible), the rest kept. */
function variant(prev: Buffer | undefined, rand: () => number): Buffer {
  const img = prev ? Buffer.from(prev) : Buffer.alloc(PAGES * PAGE);
  for (let p = 0; p < PAGES; p++) {
    if (prev && rand() % 5 !== 0) continue;
    const r = rand();
    if (r % 6 === 0) img.fill(0, p * PAGE, (p + 1) * PAGE);
    else (r % 2 === 0 ? randomPage(r) : compressiblePage(r)).copy(img, p * PAGE);
  }
  return img;
}

describe('format-3 put killed at random points', () => {
  it('committed snapshots survive exactly, partial ones never show, numbers never repeat', async () => {
    const rand = prng(SEED + 1);
    const ctx = `VNSTORE_CRASH_SEED=${SEED}`;
    const byDigest = new Map<string, Buffer>();
    const latest = new Map<string, Buffer>();
    // Calibrate: one whole put (the first snapshot of VM a).
    const first = variant(undefined, rand);
    const file0 = path.join(root, 'img-0');
    writeFileSync(file0, first);
    byDigest.set(expectedImageDigest(first), first);
    const t0 = Date.now();
    const r0 = await runCli(['put', '--store', dir, '--vm', 'a', file0], { env: ENV });
    expect(r0.code, r0.stderr).toBe(0);
    const putMillis = Date.now() - t0;
    latest.set('a', first);
    let killedMidway = 0;
    let committed = 0;
    let mark = 0;
    for (let t = 1; t <= TRIALS; t++) {
      const vm = rand() % 3 === 0 ? 'b' : 'a';
      const img = variant(latest.get(vm), rand);
      const file = path.join(root, `img-${t}`);
      writeFileSync(file, img);
      byDigest.set(expectedImageDigest(img), img);
      // Half the kills at a traced step of the put (the kill lands while the next step runs), half at
      // a random instant in the second half of a put (the first is mostly process start-up).
      // Odd trials take the phases in turn (every phase once in 12 trials, 'committed' included: at
      // least one put always commits, however long later puts take against the calibration).
      const phase = PHASES[((t - 1) >> 1) % PHASES.length];
      const k =
        t % 2 === 1
          ? await runAndKill(['put', '--store', dir, '--vm', vm, file], ENV, 0, { phase: `] ${phase} `, nth: 1 })
          : await runAndKill(
              ['put', '--store', dir, '--vm', vm, file],
              ENV,
              Math.round(putMillis * 0.5) + (rand() % Math.round(putMillis * 0.7)),
              'spawn',
            );
      if (k.signal === 'SIGKILL') killedMidway++;
      else expect(k.code, `${ctx} trial ${t}: ${k.stderr}`).toBe(0);
      const store = await Store.open(dir, { workers: 0 });
      try {
        expect(readdirSync(path.join(dir, 'tmp')), `${ctx} trial ${t}: tmp/ emptied`).toEqual([]);
        const next = store.numbered!.allocator.nextNumber;
        expect(next, `${ctx} trial ${t}: numbers only grow`).toBeGreaterThanOrEqual(mark);
        expect(next).toBeGreaterThanOrEqual(await readNextNumber(store.db));
        mark = next;
        const records = await store.listSnapshots();
        for (const rec of records) {
          const image = byDigest.get(rec.imageDigest);
          expect(image, `${ctx} trial ${t}: snapshot ${rec.id} is one of the images put`).toBeDefined();
          expect((await restoreToBuffer(store, rec)).equals(image!), `${ctx} trial ${t}: snapshot ${rec.id} exact`).toBe(true);
        }
        if (records.some((r) => r.imageDigest === expectedImageDigest(img))) {
          latest.set(vm, img);
          committed++;
        }
        // Every manifest on disk belongs to a committed snapshot (orphans removed on open).
        expect(readdirSync(path.join(dir, 'manifests')).length, `${ctx} trial ${t}`).toBe(records.length);
      } finally {
        await store.close();
      }
    }
    console.log(`format-3 put kills (${ctx}): ${killedMidway} of ${TRIALS} killed, ${committed} committed, put takes ~${putMillis} ms`);
    // Both sides of the commit point were reached.
    expect(killedMidway).toBeGreaterThan(TRIALS / 3);
    expect(committed).toBeGreaterThan(0);
    expect(committed).toBeLessThan(TRIALS);
    // The store takes a new put after all that, and its new chunks get new numbers.
    const last = variant(latest.get('a'), rand);
    const lastFile = path.join(root, 'img-last');
    writeFileSync(lastFile, last);
    const r = await runCli(['put', '--store', dir, '--vm', 'a', lastFile], { env: ENV });
    expect(r.code, r.stderr).toBe(0);
    const store = await Store.open(dir, { workers: 0 });
    try {
      const rec = await store.resolveSnapshot(r.stdout.toString().trim());
      expect((await restoreToBuffer(store, rec)).equals(last)).toBe(true);
      expect(store.numbered!.allocator.nextNumber).toBeGreaterThanOrEqual(mark);
    } finally {
      await store.close();
    }
  }, 300_000);
});
