/**
 * gc streams (issues 11 and 16): the rewrite copies live chunks into new packs through the one pack
 * writer a bounded window at a time, so its peak memory does not grow with pack size. The same
 * workload (a 128 MiB image, every other page rewritten, the first snapshot forgotten: 64 MiB to
 * copy) is collected at the default pack size (32 MiB) and at 512 MiB packs, each gc in its own
 * child process; their peak RSS must agree within 32 MiB. Before streaming, gc held a pack's live
 * payload several times over: 241 MiB at 32 MiB packs against 322 MiB at 512 MiB (bench/RESULTS.md).
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/engine.js';

const MIB = 1024 * 1024;

interface Row {
  packMib: number;
  peakRssBytes: number;
  peakRssAtOpenBytes: number;
  bytesCopied: number;
  packsRewritten: number;
  packsWritten: number;
}

describe('gc memory', () => {
  it('peak RSS of a gc rewrite is the same at 32 MiB and 512 MiB packs', () => {
    const r = spawnSync(
      process.execPath,
      [path.join(REPO_ROOT, 'bench/gc-rss.mjs'), '--data-mib', '128', '--packs-mib', '32,512', '--json'],
      { encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const rows = (JSON.parse(r.stdout) as { rows: Row[] }).rows;
    expect(rows.map((x) => x.packMib)).toEqual([32, 512]);
    const [small, large] = rows;
    // Exactly the odd pages of the forgotten image are live in its packs: 16384 raw 4 KiB chunks.
    for (const x of rows) expect(x.bytesCopied).toBe(64 * MIB);
    expect(small.packsRewritten).toBe(4); // the first image's four 32 MiB packs
    expect(large.packsRewritten).toBe(1); // one pack holds both images
    expect(Math.abs(large.peakRssBytes - small.peakRssBytes)).toBeLessThan(32 * MIB);
  }, 300_000);
});
