/**
 * gc and compact on a store of format 3, SIGKILLed at random instants and inside each window of
 * their write order (VNSTORE_GC_FAILPOINT): every time, the store opens (its recovery deletes a
 * killed step's copy or finishes its `d` records), checks clean (with every chunk re-read every other
 * trial), restores every snapshot bit-exact, and a second run finishes the job.
 *
 * Reproduce a failing run with VNSTORE_CRASH_SEED=<seed printed in the assertion message>.
 */
import { cpSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { runCompact } from '../src/maintenance/compact.js';
import { runGc } from '../src/maintenance/gc.js';
import { Store } from '../src/store/store.js';
import { makeTempDir, prng, removeDir, runCli } from './helpers/engine.js';
import { expectAllRestore, runAndKill, type KillFrom } from './helpers/maintenance.js';
import { numberedStoreAfterForget, openNumbered, type NumberedFixture } from './helpers/numbered.js';

const ENV = { VNSTORE_PACK_TARGET_BYTES: String(24 * 1024) };
const SEED = Number(process.env.VNSTORE_CRASH_SEED ?? Date.now() % 1_000_000);
const TRIALS = 6;
const COMMANDS = {
  gc: (dir: string) => ['gc', '--store', dir, '--max-unused', '0'],
  compact: (dir: string) => ['compact', '--store', dir, '--min-age', '0'],
};
type Command = keyof typeof COMMANDS;

let root: string;
let fx: NumberedFixture;

beforeAll(async () => {
  fx = await numberedStoreAfterForget('crash-v3', { compact: false });
  root = makeTempDir('crash-v3-trials');
}, 60_000);

afterAll(() => {
  removeDir(root);
  removeDir(fx.root);
});

/** Opens the crashed store: clean check, every snapshot exact; then a second run leaves nothing to do. */
async function expectRecovered(dir: string, cmd: Command, context: string, readData: boolean): Promise<void> {
  const store = await openNumbered(dir);
  try {
    expect(readdirSync(Store.paths(dir).tmp), `${context}: tmp/ after open`).toEqual([]);
    expect(store.recovery.conflictingPacks, context).toEqual([]);
    expect((await checkStore(store, { readData })).problems, `${context}: check after the crash`).toEqual([]);
    await expectAllRestore(store, fx.expected, context);
    if (cmd === 'gc') {
      expect((await runGc(store, { maxUnused: { bytes: 0 } })).result!.skipped, context).toEqual([]);
      expect((await runGc(store, { maxUnused: { bytes: 0 }, dryRun: true })).plan.totals.deadBytesKept, `${context}: nothing left`).toBe(0);
    } else {
      expect((await runCompact(store, { minAgeMs: 0 })).result?.skipped ?? [], context).toEqual([]);
      expect((await runCompact(store, { minAgeMs: 0, dryRun: true })).plan.totals.packsChosen, `${context}: nothing left`).toBe(0);
    }
    expect((await checkStore(store, { readData: true })).problems, `${context}: check after a second run`).toEqual([]);
    await expectAllRestore(store, fx.expected, `${context}, second run`);
  } finally {
    await store.close();
  }
}

for (const cmd of ['gc', 'compact'] as const) {
  describe(`SIGKILL during ${cmd} on store format 3`, () => {
    let workMs = 300;
    let startupMs = 300;
    let steps = 3;

    beforeAll(async () => {
      const cal = path.join(root, `calibrate-${cmd}`);
      cpSync(fx.dir, cal, { recursive: true });
      const r = await runCli([...COMMANDS[cmd](cal), '--json'], { env: { ...ENV, VNSTORE_TRACE: '1' } });
      expect(r.code, r.stderr).toBe(0);
      const t = (label: string) => Number(new RegExp(`\\[trace\\s+([\\d.]+) ms\\] ${label}`).exec(r.stderr)?.[1]);
      workMs = Math.max(50, t(`${cmd}: done`) - t(`${cmd}: planned`));
      startupMs = Math.max(100, t(`${cmd}: planned`));
      steps = r.stderr.split(`${cmd}: index updated`).length - 1;
      expect(steps).toBeGreaterThan(2); // the run has steps to die in
      removeDir(cal);
    }, 60_000);

    it('after every random kill the store opens, checks clean and restores every snapshot bit-exact', async () => {
      const rand = prng(SEED + (cmd === 'gc' ? 1 : 2));
      for (let t = 0; t < TRIALS; t++) {
        const dir = path.join(root, `${cmd}-trial${t}`);
        cpSync(fx.dir, dir, { recursive: true });
        const kind = t % 3;
        const from: KillFrom = kind === 0 ? 'spawn' : kind === 1 ? 'planned' : { phase: `${cmd}: pack written`, nth: 1 + (rand() % steps) };
        const delay = kind === 0 ? startupMs + (rand() % Math.round(workMs * 1.2 + 1)) : rand() % Math.round(workMs * 1.1 + 1);
        const context = `seed ${SEED} ${cmd} trial ${t} (kill ${typeof from === 'object' ? `at ${from.phase} #${from.nth}` : `${delay} ms after ${from}`})`;
        const k = await runAndKill(COMMANDS[cmd](dir), ENV, delay, from);
        if (k.signal !== 'SIGKILL') expect(k.code, `${context}: ${k.stderr}`).toBe(0);
        await expectRecovered(dir, cmd, context, t % 2 === 0);
        removeDir(dir);
      }
    }, 180_000);

    for (const point of ['pack-renamed', 'index-written', 'files-removed']) {
      it(`killed at ${point}: the copy deleted or the deletion finished on open; clean, exact`, async () => {
        const nth = 1 + (SEED % Math.max(1, steps - 1));
        const context = `${cmd} ${point}:${nth}`;
        const dir = path.join(root, `${cmd}-fp-${point}`);
        cpSync(fx.dir, dir, { recursive: true });
        const r = await runCli(COMMANDS[cmd](dir), { env: { ...ENV, VNSTORE_GC_FAILPOINT: `${point}:${nth}` } });
        expect(r.signal, `${context}: ${r.stderr}`).toBe('SIGKILL');
        if (point === 'pack-renamed') {
          const store = await openNumbered(dir);
          expect(store.recovery.copiesRemoved, `${context}: the killed step's copy`).toHaveLength(1);
          await store.close();
        }
        await expectRecovered(dir, cmd, context, true);
        removeDir(dir);
      }, 60_000);
    }
  });
}
