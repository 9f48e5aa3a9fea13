/**
 * compact crash safety (issue 16), as for gc: `vnstore compact` is SIGKILLed at random instants and
 * inside each window of the write order it shares with gc (VNSTORE_GC_FAILPOINT); every time the
 * store must open, check clean with every chunk re-read (structure, counters, data), list exactly the
 * snapshots it had and restore each bit-exact; a later compact finishes the job.
 *
 * Reproduce a failing run with VNSTORE_CRASH_SEED=<seed printed in the assertion message>.
 */
import { cpSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { runCompact } from '../src/maintenance/compact.js';
import { Store } from '../src/store/store.js';
import { compressiblePage, makeTempDir, prng, randomPage, removeDir, runCli } from './helpers/engine.js';
import { expectAllRestore, putImage, runAndKill, textPage, type KillFrom } from './helpers/maintenance.js';

const PACK_TARGET = 24 * 1024; // small packs: compact works in many crash-safe steps
const ENV = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
const SEED = Number(process.env.VNSTORE_CRASH_SEED ?? Date.now() % 1_000_000);
const TRIALS = 10;
const ARGS = (dir: string) => ['compact', '--store', dir, '--min-age', '0'];

let root: string;
let template: string;
const images = new Map<string, Buffer>();
let workMs = 300;
let startupMs = 300;
let steps = 5;

beforeAll(async () => {
  root = makeTempDir('compact-crash');
  template = path.join(root, 'template');
  await Store.init(template, { format: 1 }); // format 3: maintenance-crash-v3.test.ts
  const store = await Store.open(template, { workers: 0, packTargetBytes: PACK_TARGET });
  const rand = prng(1616);
  let seed = 1;
  const fresh = () => (rand() % 8 === 0 ? randomPage(seed++) : rand() % 3 === 0 ? compressiblePage(seed++) : textPage(seed++));
  for (let vm = 0; vm < 3; vm++) {
    let img = Buffer.concat(Array.from({ length: 150 }, fresh));
    for (let gen = 0; gen < 2; gen++) {
      if (gen > 0) {
        img = Buffer.from(img);
        for (let i = 0; i < 150; i++) if (rand() % 3 === 0) fresh().copy(img, i * 4096);
      }
      const r = await putImage(store, `vm${vm}`, img);
      images.set(r.id, img);
    }
  }
  await store.close();
  const cal = path.join(root, 'calibrate');
  cpSync(template, cal, { recursive: true });
  const r = await runCli([...ARGS(cal), '--json'], { env: { ...ENV, VNSTORE_TRACE: '1' } });
  expect(r.code, r.stderr).toBe(0);
  const t = (label: string) => Number(new RegExp(`\\[trace\\s+([\\d.]+) ms\\] ${label}`).exec(r.stderr)?.[1]);
  workMs = Math.max(50, t('compact: done') - t('compact: planned'));
  startupMs = Math.max(100, t('compact: planned'));
  steps = r.stderr.split('gc: index updated').length - 1;
  // The run has many steps to die in.
  expect(steps).toBeGreaterThan(8);
  expect(JSON.parse(r.stdout.toString()).result.skipped).toEqual([]);
}, 60_000);

afterAll(() => removeDir(root));

/** Opens the crashed store: clean check (data re-read), every snapshot exact; then a compact finishes. */
async function expectRecovered(dir: string, context: string, readData: boolean, packsIndexed?: number): Promise<void> {
  const store = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
  try {
    // A v2 pack renamed into place but not indexed: recovery reads, verifies and indexes it.
    if (packsIndexed !== undefined) expect(store.recovery.packsIndexed, context).toBe(packsIndexed);
    expect(readdirSync(Store.paths(dir).tmp), `${context}: tmp/ after open`).toEqual([]);
    expect((await checkStore(store, { readData })).problems, `${context}: check after the crash`).toEqual([]);
    await expectAllRestore(store, images, context);
    const again = await runCompact(store, { minAgeMs: 0 });
    expect(again.result?.skipped ?? [], context).toEqual([]);
    expect((await runCompact(store, { minAgeMs: 0, dryRun: true })).plan.totals.packsChosen, `${context}: nothing left`).toBe(0);
    expect((await checkStore(store, { readData: true })).problems, `${context}: check after a second compact`).toEqual([]);
    await expectAllRestore(store, images, `${context}, second compact`);
  } finally {
    await store.close();
  }
}

describe(`SIGKILL during compact (${TRIALS} trials)`, () => {
  it('after every crash the store opens, checks clean and restores every snapshot bit-exact', async () => {
    const rand = prng(SEED + 1);
    const outcomes: string[] = [];
    for (let t = 0; t < TRIALS; t++) {
      const dir = path.join(root, `trial${t}`);
      cpSync(template, dir, { recursive: true });
      const kind = t % 3;
      const from: KillFrom = kind === 0 ? 'spawn' : kind === 1 ? 'planned' : { phase: 'gc: pack written', nth: 1 + (rand() % steps) };
      const delay = kind === 0 ? startupMs + (rand() % Math.round(workMs * 1.2 + 1)) : rand() % Math.round(workMs * 1.1 + 1);
      const context = `seed ${SEED} trial ${t} (kill ${typeof from === 'object' ? `at ${from.phase} #${from.nth}` : `${delay} ms after ${from}`})`;
      const k = await runAndKill(ARGS(dir), ENV, delay, from);
      if (k.signal !== 'SIGKILL') expect(k.code, `${context}: ${k.stderr}`).toBe(0);
      outcomes.push(k.signal === 'SIGKILL' ? k.phase : 'finished');
      await expectRecovered(dir, context, t % 2 === 0);
      removeDir(dir);
    }
    // The kills landed in the middle of the work, not only before or after it.
    const midway = outcomes.filter((p) => ['gc: pack written', 'gc: index updated', 'gc: packs removed', 'compact: planned'].includes(p));
    expect(midway.length, outcomes.join(', ')).toBeGreaterThanOrEqual(TRIALS * 0.4);
  }, 180_000);

  for (const point of ['pack-renamed', 'index-written', 'files-removed']) {
    it(`killed at ${point} (VNSTORE_GC_FAILPOINT): recovers, checks clean, restores exactly, a second compact finishes`, async () => {
      const nth = 1 + (SEED % Math.max(1, steps - 1));
      const context = `${point}:${nth}`;
      const dir = path.join(root, `fp-${point}`);
      cpSync(template, dir, { recursive: true });
      const r = await runCli(ARGS(dir), { env: { ...ENV, VNSTORE_GC_FAILPOINT: context } });
      expect(r.signal, `${context}: ${r.stderr}`).toBe('SIGKILL');
      await expectRecovered(dir, context, true, point === 'pack-renamed' ? 1 : undefined);
      removeDir(dir);
    }, 60_000);
  }
});
