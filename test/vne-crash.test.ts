/**
 * The coordinator killed at random points: `vnstore snapshot --env` is SIGKILLed mid-run (during
 * pre-copy rounds, stop-and-copies, prepares or group commits), the store is reopened (recovery)
 * and checked: every group it shows holds every VM of its epoch and the channel state, never a
 * part, and the store checks clean; the next run takes the next epoch and commits.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { Store } from '../src/store/store.js';
import { CLI, initStore, runCli, tempDirs } from './helpers/engine.js';

const tempDir = tempDirs();
const MEMBERS = ['env9.channels', 'vm0', 'vm0.disk', 'vm1', 'vm1.disk', 'vm2', 'vm2.disk', 'vm3', 'vm3.disk'];

describe('coordinator killed mid-epoch', () => {
  it('never leaves a partial group committed, and the next epoch succeeds', { timeout: 240_000 }, async () => {
    const root = tempDir('vne-crash');
    const store = await initStore(root);
    const env = path.join(root, 'env.json');
    writeFileSync(
      env,
      JSON.stringify({
        name: 'env9',
        seed: 9,
        scenario: { vms: 4, hosts: 2, minPages: 256, sizeRatio: 4, pageMs: 1, bytesPerSec: 40_000, transferMs: 10_000 },
      }),
    );
    // A whole run first, timed: how long 6 epochs take depends on the machine's load (4-7 s on
    // 2 idle cores, twice that when shared), so the kills are spread over that run's time and
    // the later ones land among commits.
    const started = Date.now();
    const whole = await runCli(['snapshot', '--env', env, '--store', store, '--epochs', '6', '--interval', '100']);
    expect(whole.code, whole.stderr).toBe(0);
    const runMs = Date.now() - started;
    const kills = [0.08, 0.22, 0.36, 0.5, 0.64, 0.78].map((f) => Math.round(f * runMs));
    let committedBefore = 6;
    for (const ms of kills) {
      const child = spawn(process.execPath, [CLI, 'snapshot', '--env', env, '--store', store, '--epochs', '6', '--interval', '100'], {
        stdio: 'ignore',
      });
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      await new Promise((r) => setTimeout(r, ms));
      child.kill('SIGKILL');
      await exited;
      const s = await Store.open(store, { workers: 0 });
      try {
        const snaps = await s.listSnapshots();
        const groups = new Map<string, string[]>();
        for (const x of snaps) groups.set(x.group as string, [...(groups.get(x.group as string) ?? []), x.vm]);
        for (const [g, vms] of groups) expect(vms.sort(), `killed at ${ms} ms: group ${g}`).toEqual(MEMBERS);
        // epochs are numbered on from the last committed one: no gaps, no repeats
        expect([...groups.keys()].sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))).toEqual(
          Array.from({ length: groups.size }, (_, i) => `env9-e${i + 1}`),
        );
        expect(groups.size).toBeGreaterThanOrEqual(committedBefore);
        committedBefore = groups.size;
        expect((await checkStore(s)).problems, `killed at ${ms} ms`).toEqual([]);
      } finally {
        await s.close();
      }
    }
    expect(committedBefore, 'no kill came after a commit: the test did not test it').toBeGreaterThan(6);
    const next = await runCli(['snapshot', '--env', env, '--store', store, '--verify-restore', '--json']);
    expect(next.stderr).toBe('');
    expect(next.code).toBe(0);
    const out = JSON.parse(next.stdout.toString());
    expect(out.epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
      [`env9-e${committedBefore + 1}`, 'committed'],
    ]);
    expect(out.verified[0]).toMatchObject({ transfersOk: true, check: { violations: [], lost: 0 } });
  });
});
