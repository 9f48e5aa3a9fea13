/**
 * The demo (npm run demo) at its defaults, twice on one store: its coordinated snapshots commit and
 * resume from the store with their transfers' checksums, and its closing figures are the store's
 * own (the "overall reduction" equals the one `vnstore stats` prints just above), and a second run
 * says what happened instead of printing a giant "for this run" ratio.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
// @ts-expect-error: a plain .mjs script without types
import { runSummary } from '../scripts/demo-report.mjs';
import { REPO_ROOT, makeTempDir, removeDir, runCli } from './helpers/engine.js';

const summary = runSummary as (before: object | undefined, after: object, rows: object[]) => string[];

function runDemo(store: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO_ROOT, 'scripts/demo.mjs')], {
      cwd: REPO_ROOT,
      env: { ...process.env, VNSTORE_STORE: store },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

describe('demo figures', () => {
  it('runSummary: exact lines for a first run and for a run that added no chunk', () => {
    const M = 2 ** 20;
    const rows = [
      { logicalBytes: 64 * M, newChunks: 10 },
      { logicalBytes: 64 * M, newChunks: 0 },
    ];
    expect(summary(undefined, { snapshots: 2, logicalBytes: 128 * M, onDiskBytes: 16 * M, reduction: 8 }, rows)).toEqual([
      'this run: 2 snapshots, 128.0 MiB of VM memory; the store grew by 16.0 MiB on disk (12.5% of it)',
      'whole store: 2 snapshots, 128.0 MiB of VM memory in 16.0 MiB on disk: overall reduction 8.00x',
    ]);
    const again = rows.map((r) => ({ ...r, newChunks: 0 }));
    expect(
      summary({ onDiskBytes: 16 * M }, { snapshots: 4, logicalBytes: 256 * M, onDiskBytes: 16.5 * M, reduction: 256 / 16.5 }, again),
    ).toEqual([
      'this run: 2 snapshots, 128.0 MiB of VM memory; the store grew by 0.5 MiB on disk (0.4% of it)',
      '  every page was already in the store (the demo generates the same images each run): only manifests and catalog entries were added',
      'whole store: 4 snapshots, 256.0 MiB of VM memory in 16.5 MiB on disk: overall reduction 15.52x',
    ]);
  });

  it('a first and a second run on one store print one reduction, the one stats prints', async () => {
    const root = makeTempDir('demo');
    roots.push(root);
    const store = path.join(root, 'store');
    for (const run of [1, 2]) {
      const r = await runDemo(store);
      expect(r.code, r.out).toBe(0);
      const statsRatio = /^dedup .*overall reduction (\d+\.\d\dx)$/m.exec(r.out)?.[1];
      const closing = r.out
        .slice(r.out.lastIndexOf('\nthis run: ') + 1)
        .trimEnd()
        .split('\n');
      // The coordinated part: 3 epochs committed and each resumed from the store, checksums verified.
      for (const e of [1, 2, 3].map((k) => k + 3 * (run - 1))) {
        expect(r.out).toMatch(new RegExp(`^epoch ${e}: group demo-e${e} committed$`, 'm'));
        expect(r.out).toMatch(
          new RegExp(`^restored demo-e${e}: consistent, 0 frame\\(s\\) lost across the cut, transfers ended with their checksums`, 'm'),
        );
      }
      expect(r.out).toMatch(new RegExp(`\\$ vnstore restore --group demo-e${3 * run} -o DIR\\n  web1\\.img  8388608 bytes, verified`));
      const listed = JSON.parse((await runCli(['ls', '--json', '--store', store])).stdout.toString()) as {
        group: string | null;
        byteLength?: number;
      }[];
      const envMembers = listed.filter((x) => x.group?.startsWith('demo-e')).length;
      expect(envMembers).toBeGreaterThanOrEqual(3 * 4 * run); // every VM's memory in every group, at least
      expect(closing.at(-1)).toMatch(
        new RegExp(
          `^whole store: ${9 * run + envMembers} snapshots, [\\d.]+ MiB of VM memory in [\\d.]+ MiB on disk: overall reduction ${statsRatio}$`,
        ),
      );
      expect(r.out).not.toMatch(/for this run/);
      // LevelDB may compact on a re-run, so the store can even shrink a little: the share may be negative.
      const grewShare = Number(/\((-?[\d.]+)% of it\)$/m.exec(closing[0])?.[1]);
      expect(Number.isFinite(grewShare), closing.join('\n')).toBe(true);
      if (run === 1) {
        expect(closing).toHaveLength(2);
        expect(grewShare).toBeGreaterThan(5);
      } else {
        expect(closing[1]).toMatch(/every page was already in the store/);
        expect(grewShare).toBeLessThan(1);
      }
    }
  }, 400_000);
});
