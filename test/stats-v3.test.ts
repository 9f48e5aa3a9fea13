/**
 * `stats --detail / --vm / --snapshot / --exact` on a store of format 3 (issue 16), against the
 * format-1 store of the same data (the store copied, then upgraded): every count must agree (logical
 * bytes, pages, distinct, referenced, unique and shared chunks, garbage), and the unique bytes differ
 * by exactly the table cost per chunk (27 B on format 3 against the version-1 TOC entry).
 */
import { cpSync, promises as fsp, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { TOC_ENTRY_BYTES } from '../src/format/pack.js';
import { listCommittedRecords } from '../src/maintenance/live-v3.js';
import type { StatsReport } from '../src/maintenance/stats.js';
import { numberedDetail } from '../src/maintenance/stats-v3.js';
import { makePage, removeDir, runCli, tempDirs } from './helpers/engine.js';
import { numberedStoreAfterForget, openNumbered } from './helpers/numbered.js';

const tmp = tempDirs();
const tmpRoots: string[] = [];
afterAll(() => tmpRoots.forEach(removeDir));
const V3_TABLE_BYTES = 27; // 24 B of digest prefix + a 3-byte item (docs/FORMAT.md, "Store format 3")

/** Pages below `sharedBelow` are the same in every image (shared across VMs); the rest are the image's own. */
function image(seed: number, pages: number, sharedBelow: number): Buffer {
  return Buffer.concat(
    Array.from({ length: pages }, (_, p) =>
      makePage(p % 7 === 0 ? 'zero' : p % 3 === 0 ? 'random' : 'compressible', p < sharedBelow ? p : seed * 1000 + p),
    ),
  );
}

async function ok(args: string[]): Promise<string> {
  const r = await runCli(args, { env: { VNSTORE_PACK_TARGET_BYTES: String(64 * 1024) } });
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout.toString();
}

const stats = async (store: string, ...args: string[]) =>
  JSON.parse(await ok(['stats', '--store', store, '--json', ...args])) as StatsReport;

describe('stats --detail on format 3', () => {
  it('agrees with the same data on format 1: counts equal, unique bytes differ by the table cost only', async () => {
    const root = tmp('stats-v3');
    const v1 = path.join(root, 'v1');
    await ok(['init', '--store', v1, '--format', '1']);
    const ids: string[] = [];
    for (const [vm, seeds] of [
      ['web', [1, 2, 3]],
      ['db', [4, 5]],
      ['cache', [6]],
    ] as const) {
      for (const seed of seeds) {
        const file = path.join(root, `${seed}.img`);
        writeFileSync(file, image(seed, 150, 60 + seed * 5));
        ids.push((await ok(['put', '--store', v1, '--vm', vm, file])).trim());
      }
    }
    await ok(['forget', '--store', v1, ids[3]]); // db's first: its own chunks become garbage
    const v3 = path.join(root, 'v3');
    cpSync(v1, v3, { recursive: true });
    await ok(['upgrade', '--store', v3]);

    const a = await stats(v1, '--detail');
    const b = await stats(v3, '--detail');
    for (const k of ['snapshots', 'logicalBytes', 'pages', 'zeroPages', 'distinctChunks', 'referencedChunks', 'dedupRatio'] as const) {
      expect(b.summary[k], k).toBe(a.summary[k]);
    }
    expect(b.summary.dedupBasis).toBe('referenced-chunks');
    expect(b.summary.referencedChunks).toBeLessThan(b.summary.distinctChunks); // the forgotten snapshot's chunks
    expect(b.sharing).toEqual(a.sharing);
    expect(b.sharing!.sharedChunks[0][1]).toBeGreaterThan(0);
    expect(b.garbage!.chunks).toBe(a.garbage!.chunks);
    expect(b.garbage!.chunks).toBe(b.summary.distinctChunks - b.summary.referencedChunks!);
    expect(b.garbage!.payloadBytes).toBe(a.garbage!.payloadBytes);
    expect(b.garbage!.unindexedPayloadBytes).toBe(0); // the upgrade copies no dead payload
    expect(b.missingChunks).toBe(0);
    const extra = V3_TABLE_BYTES - TOC_ENTRY_BYTES;
    for (const [i, v] of b.vmStats.entries()) {
      const w = a.vmStats[i];
      // (addedBytes is recounted for format 3 by the upgrade: upgrade-cli.test.ts)
      expect([v.vm, v.snapshots, v.logicalBytes, v.distinctChunks, v.uniqueChunks]).toEqual([
        w.vm,
        w.snapshots,
        w.logicalBytes,
        w.distinctChunks,
        w.uniqueChunks,
      ]);
      expect(v.uniqueBytes, v.vm).toBe(w.uniqueBytes! + extra * w.uniqueChunks!);
    }
    expect(b.snapshotStats!.length).toBe(5);
    for (const [i, s] of b.snapshotStats!.entries()) {
      const t = a.snapshotStats![i];
      expect([s.id, s.distinctChunks, s.uniqueChunks, s.logicalBytes, s.zeroPages]).toEqual([
        t.id,
        t.distinctChunks,
        t.uniqueChunks,
        t.logicalBytes,
        t.zeroPages,
      ]);
      expect(s.uniqueBytes, s.id).toBe(t.uniqueBytes! + extra * t.uniqueChunks!);
    }

    const vm = await stats(v3, '--vm', 'web');
    expect(vm.vmStats.map((v) => v.vm)).toEqual(['web']);
    expect(vm.snapshotStats!.map((s) => s.id)).toEqual(ids.slice(0, 3));
    const one = await stats(v3, '--snapshot', ids[5]);
    expect(one.snapshotStats).toEqual([b.snapshotStats!.find((s) => s.id === ids[5])]);

    const exact = await stats(v3, '--exact');
    expect(exact.exact!.drifted).toBe(false);
    expect(exact.exact!.drift).toEqual({});
    const exactV1 = (await stats(v1, '--exact')).exact!.counters;
    for (const k of ['snapshots', 'logicalBytes', 'pages', 'zeroPages', 'chunks', 'chunkBytes', 'keptBases'] as const) {
      expect(exact.exact!.counters[k], k).toBe(exactV1[k]);
    }
    expect(exact.exact!.counters.manifestBytes).toBe(exact.summary.manifestBytes);
  }, 180_000);
});

describe('stats --detail on format 3 reads each manifest once', () => {
  it('the live marking and the sharing tally share one load of every manifest, delta bases included', async () => {
    const { root, dir } = await numberedStoreAfterForget('stats-v3-once', { compact: false });
    tmpRoots.push(root);
    const store = await openNumbered(dir);
    const reads = new Map<string, number>();
    const spy = vi.spyOn(fsp, 'readFile');
    try {
      const records = await listCommittedRecords(store.db);
      const vms = [...new Set(records.map((r) => r.vm))].sort();
      const manifestReads = () => {
        reads.clear();
        for (const [file] of spy.mock.calls) {
          const name = String(file);
          if (name.endsWith('.vnm')) reads.set(path.basename(name), (reads.get(path.basename(name)) ?? 0) + 1);
        }
        return reads;
      };
      const detail = await numberedDetail(store, records, vms);
      const bases = records.filter((r) => r.base !== undefined).length;
      expect(bases, 'the fixture has delta-encoded snapshots').toBeGreaterThan(0);
      const onDisk = readdirSync(path.join(dir, 'manifests')).sort();
      expect([...manifestReads().keys()].sort()).toEqual(onDisk); // committed and kept bases
      for (const [name, n] of reads) expect(n, name).toBe(1);
      expect(detail.sharing.snapDistinct.length).toBe(records.length);
      expect(detail.sharing.missing).toBe(0);
    } finally {
      spy.mockRestore();
      await store.close();
    }
  });
});
