/**
 * A put killed outright (SIGKILL, no chance to clean up) at the default pack size: the packs it had
 * sealed are removed when the store is next opened in full, committed snapshots stay exact, and the
 * store checks clean (issue 15: what a failed put wrote is removed on the spot, else on next open).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { gcSweeper } from '../src/maintenance/sweeper.js';
import { Store } from '../src/store/store.js';
import { CLI, makeTempDir, removeDir, restoreToBuffer, runCli } from './helpers/engine.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

const packFiles = (store: string) =>
  readdirSync(path.join(store, 'packs'))
    .filter((n) => n.endsWith('.vpk'))
    .sort();

async function waitFor(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('a put killed outright', () => {
  it('leaves no pack behind once the store is opened again (default pack size)', async () => {
    const root = makeTempDir('unclean');
    roots.push(root);
    const store = path.join(root, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    const kept = randomBytes(3 * 2 ** 20);
    writeFileSync(path.join(root, 'kept.img'), kept);
    const put = await runCli(['put', '--vm', 'kept', '--json', '--store', store, path.join(root, 'kept.img')]);
    expect(put.code, put.stderr).toBe(0);
    const keptId = JSON.parse(put.stdout.toString()).id as string;
    const before = packFiles(store);

    // 160 MiB of incompressible pages: several 32 MiB packs, killed once two are sealed.
    writeFileSync(path.join(root, 'big.img'), randomBytes(160 * 2 ** 20));
    const child = spawn(process.execPath, [CLI, 'put', '--vm', 'big', '--store', store, path.join(root, 'big.img')], {
      stdio: 'ignore',
      env: { ...process.env, VNSTORE_PACK_TARGET_BYTES: '' },
    });
    const exited = new Promise((r) => child.on('exit', r));
    await waitFor('two packs sealed by the put', () => packFiles(store).length >= before.length + 2);
    child.kill('SIGKILL');
    await exited;
    expect(packFiles(store).length).toBeGreaterThanOrEqual(before.length + 2);

    // A catalog-only command leaves them (it loads no chunk table), and so does an open without a
    // sweeper (the store layer has no gc of its own); the next full open with one drops them.
    expect((await runCli(['ls', '--store', store])).code).toBe(0);
    const bare = await Store.open(store, { workers: 0 });
    await bare.close();
    expect(packFiles(store).length).toBeGreaterThanOrEqual(before.length + 2);
    const s = await Store.open(store, { workers: 0, sweeper: gcSweeper });
    try {
      expect(packFiles(store)).toEqual(before);
      const rec = await s.resolveSnapshot(keptId);
      expect((await restoreToBuffer(s, rec)).equals(kept)).toBe(true);
      expect((await s.listSnapshots()).map((r) => r.vm)).toEqual(['kept']);
      const report = await checkStore(s, { readData: true });
      expect(report.problems).toEqual([]);
    } finally {
      await s.close();
    }
    // And the store takes the same image again in full.
    const again = await runCli(['put', '--vm', 'big', '--json', '--store', store, path.join(root, 'big.img')]);
    expect(again.code, again.stderr).toBe(0);
    const s2 = await Store.open(store, { workers: 0 });
    try {
      const rec = await s2.resolveSnapshot(JSON.parse(again.stdout.toString()).id);
      expect((await restoreToBuffer(s2, rec)).equals(readFileSync(path.join(root, 'big.img')))).toBe(true);
    } finally {
      await s2.close();
    }
  }, 180_000);
});
