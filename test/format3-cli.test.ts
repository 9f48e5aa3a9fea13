/**
 * The CLI on a format-3 store (issue 16): `init --format 3` (hidden, experimental), put and restore
 * (a file, stdout, a whole group) exact, `stats --json` with the format-3 metadata figures and
 * `stats --detail`; gc, compact, check --read-data and check --repair-index running on it, the store
 * clean afterwards.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { makePage, runCli, singleErrorLine, tempDirs } from './helpers/engine.js';

const tmp = tempDirs();

function image(seed: number, pages: number): Buffer {
  return Buffer.concat(
    Array.from({ length: pages }, (_, p) => makePage(p % 4 === 0 ? 'zero' : p % 3 === 0 ? 'random' : 'compressible', seed * 1000 + p)),
  );
}

async function ok(args: string[]): Promise<string> {
  const r = await runCli(args);
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout.toString();
}

describe('CLI on a format-3 store', () => {
  it('init (format 3 by default), put, restore (file, stdout, group), stats --json and --detail, maintenance', async () => {
    const root = tmp('fmt3-cli');
    const store = path.join(root, 'store');
    expect(await ok(['init', '--store', store])).toContain('format version 3');
    expect(JSON.parse(readFileSync(path.join(store, 'vnstore.json'), 'utf8')).version).toBe(3);
    const help = await ok(['init', '--help']);
    expect(help).not.toContain('--format'); // only tests and benches of the legacy layouts use it
    expect(help).toContain('store format 3');
    for (const v of ['1', '2']) {
      const legacy = path.join(root, `legacy${v}`);
      expect(await ok(['init', '--store', legacy, '--format', v])).toContain(`format version ${v}`);
      expect(JSON.parse(readFileSync(path.join(legacy, 'vnstore.json'), 'utf8')).version).toBe(Number(v));
    }
    for (const v of ['4', '0', '3.0', 'x']) {
      const bad = await runCli(['init', '--store', path.join(root, 'other'), '--format', v]);
      expect(bad.code).toBe(2);
      expect(singleErrorLine(bad.stderr)).toContain(`--format takes 1, 2, 3, got "${v}"`);
    }

    const a = image(1, 200);
    const b = image(2, 120);
    writeFileSync(path.join(root, 'a.img'), a);
    writeFileSync(path.join(root, 'b.img'), b);
    const idA = (await ok(['put', '--store', store, '--vm', 'a', '--group', 'g1', path.join(root, 'a.img')])).trim();
    await ok(['put', '--store', store, '--vm', 'b', '--group', 'g1', path.join(root, 'b.img')]);
    await ok(['restore', '--store', store, idA, '-o', path.join(root, 'a.out')]);
    expect(readFileSync(path.join(root, 'a.out')).equals(a)).toBe(true);
    const stdout = await runCli(['restore', '--store', store, idA]);
    expect(stdout.code).toBe(0);
    expect(stdout.stdout.equals(a)).toBe(true);
    await ok(['restore', '--store', store, '--group', 'g1', '-o', path.join(root, 'g')]);
    expect(readFileSync(path.join(root, 'g', 'a.img')).equals(a)).toBe(true);
    expect(readFileSync(path.join(root, 'g', 'b.img')).equals(b)).toBe(true);

    const stats = JSON.parse(await ok(['stats', '--store', store, '--json'])) as { summary: Record<string, number> };
    const s = stats.summary;
    expect(s.snapshots).toBe(2);
    expect(s.tableBytes).toBe(0); // no chunk-table.bin on format 3
    const packFiles = readdirSync(path.join(store, 'packs')).reduce((n, f) => n + readFileSync(path.join(store, 'packs', f)).length, 0);
    expect(s.packBytes).toBe(packFiles);
    expect(s.metadataBytes).toBe(s.packBytes - s.packPayloadBytes + s.manifestBytes + s.keptBaseManifestBytes + s.indexBytes);
    // Every distinct non-zero page once: 24 B of digest prefix + 3 B of item + per-pack header and trailer.
    expect(s.distinctChunks).toBe(200 - 50 + 120 - 30);
    expect(s.packBytes - s.packPayloadBytes).toBeGreaterThanOrEqual(27 * s.distinctChunks + 48);

    // stats --detail on format 3 (compared with format 1 in stats-v3.test.ts): both VMs' chunks, none shared here.
    const detail = JSON.parse(await ok(['stats', '--store', store, '--json', '--detail'])) as {
      summary: { referencedChunks: number };
      vmStats: { distinctChunks: number }[];
    };
    expect(detail.summary.referencedChunks).toBe(s.distinctChunks);
    expect(detail.vmStats.map((v) => v.distinctChunks)).toEqual([150, 90]);
    // diff reads version-2 manifests (by number) as page digests: two pages of a's next snapshot changed.
    const a2 = Buffer.from(a);
    makePage('random', 777).copy(a2, 5 * 4096);
    makePage('random', 778).copy(a2, 7 * 4096);
    writeFileSync(path.join(root, 'a2.img'), a2);
    const idA2 = (await ok(['put', '--store', store, '--vm', 'a', path.join(root, 'a2.img')])).trim();
    const diff = JSON.parse(await ok(['diff', '--store', store, '--json', idA, idA2])) as { total: Record<string, number> };
    expect(diff.total).toMatchObject({ changed: 2, added: 0, removed: 0, becameZero: 0, unchanged: 198 });
    await ok(['forget', '--store', store, idA2]);
    // gc, compact, check and repair work on format 3 (src/maintenance/*-v3.ts).
    for (const cmd of [['gc'], ['compact', '--min-age', '0'], ['check', '--read-data'], ['check', '--repair-index']]) {
      const r = await runCli([...cmd, '--store', store, '--json']);
      expect(r.code, `${cmd.join(' ')}: ${r.stderr}`).toBe(0);
    }
    const out = await runCli(['check', '--read-data', '--store', store, '--json']);
    const check = JSON.parse(String(out.stdout)) as { ok: boolean; problems: unknown[] };
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);
  }, 120_000);
});
