/**
 * stats (issue 3, "stats"): every figure checked against a brute-force computation from the raw
 * images and the files on disk: logical bytes, zero pages, distinct chunks, stored bytes, ratios,
 * per-VM and per-snapshot added and unique bytes, the sharing matrix, garbage; counters stay exact
 * through commits, aborted sessions, forget and gc, and `--exact` reports drift.
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forget } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { storeStats, type StatsReport } from '../src/maintenance/stats.js';
import { COUNTERS_KEY } from '../src/store/counters.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { digestsOf, imageOf, page, putGroup, putImage, storedLengths, TOC_ENTRY } from './helpers/maintenance.js';

const PACK_TARGET = 20 * 1024;
let root: string;
let dir: string;
const images = new Map<string, Buffer>();
const recs: SnapshotRecord[] = [];
/** Content stored but never committed: an aborted session's pages and a page written twice. */
const garbagePages: Buffer[] = [];

function sum(xs: number[]): number {
  return xs.reduce((s, x) => s + x, 0);
}

function fileBytes(d: string): { files: number; bytes: number } {
  const names = readdirSync(d);
  return { files: names.length, bytes: sum(names.map((n) => statSync(path.join(d, n)).size)) };
}

/** Everything stats reports, computed here from the images (and file sizes) alone. */
function bruteForce(live: Map<string, Buffer>, vms: string[]) {
  const all = [...live.values()];
  const per = new Map([...live].map(([id, img]) => [id, new Set(digestsOf(img).digests)]));
  const lengths = storedLengths([...all, ...garbagePages]);
  const count = new Map<string, number>();
  for (const s of per.values()) for (const d of s) count.set(d, (count.get(d) ?? 0) + 1);
  const vmOf = new Map(recs.map((r) => [r.id, r.vm]));
  const vmSets = vms.map((vm) => new Set([...per].filter(([id]) => vmOf.get(id) === vm).flatMap(([, s]) => [...s])));
  const bytesOf = (ds: Iterable<string>) => sum([...ds].map((d) => lengths.get(d)! + TOC_ENTRY));
  return {
    logicalBytes: sum(all.map((i) => i.length)),
    pages: sum(all.map((i) => digestsOf(i).pages)),
    zeroPages: sum(all.map((i) => digestsOf(i).zeroPages)),
    referenced: new Set([...per.values()].flatMap((s) => [...s])),
    lengths,
    unique: new Map(
      [...per].map(([id, s]) => {
        const u = [...s].filter((d) => count.get(d) === 1);
        return [id, { chunks: u.length, bytes: bytesOf(u), distinct: s.size }];
      }),
    ),
    vmDistinct: vmSets.map((s) => s.size),
    vmUnique: vmSets.map((s, i) => {
      const u = [...s].filter((d) => vmSets.every((o, j) => j === i || !o.has(d)));
      return { chunks: u.length, bytes: bytesOf(u) };
    }),
    shared: vmSets.map((a) => vmSets.map((b) => [...a].filter((d) => b.has(d)).length)),
  };
}

beforeAll(async () => {
  root = makeTempDir('stats');
  dir = path.join(root, 'store');
  await Store.init(dir, { format: 1 }); // legacy counters and LevelDB index (format 3: stats-v3.test.ts)
  const store = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
  const os = Array.from({ length: 10 }, (_, i) => (i % 4 === 0 ? `c${i}` : `r${i}`)); // "OS pages" all VMs share
  const put = async (vm: string, names: string[], tail = 0) => {
    const img = imageOf(names, tail);
    const r = await putImage(store, vm, img);
    recs.push(r);
    images.set(r.id, img);
  };
  await put('web', [...os, 'z', 'z', 'r100', 'c101', 'r102', 'r102']);
  await put('web', [...os, 'z', 'r103', 'r100', 'c101', 'r104', 'r102'], 3000);
  await put('db', ['z', ...os.slice(2), 'r200', 'r201', 'c202', 'z', 'z']);
  await put('db', ['z', ...os.slice(2), 'r200', 'r203', 'c202', 'z', 'r100']);
  for (const r of await putGroup(store, 'epoch-1', [
    { vm: 'web', image: imageOf([...os, 'r300', 'r301']) },
    { vm: 'cache', image: imageOf(['r400', 'r401', 'z', 'r9', 'r301']) },
  ])) {
    recs.push(r);
    images.set(r.id, imageOf(r.vm === 'web' ? [...os, 'r300', 'r301'] : ['r400', 'r401', 'z', 'r9', 'r301']));
  }
  // Garbage: an aborted session's chunks, and a page superseded within a committed session.
  // (writePages, not writePage: single pages are only gathered, and an abort drops them unstored.)
  const aborted = await store.beginSession({ vm: 'web', parent: 'none' });
  for (let i = 0; i < 3; i++) {
    garbagePages.push(page(`r${500 + i}`));
    await aborted.writePages(i, page(`r${500 + i}`));
  }
  await aborted.drain(); // stored (and then abandoned) before the abort
  await aborted.abort();
  const s = await store.beginSession({ vm: 'cache' });
  garbagePages.push(page('r600'));
  await s.writePages(5, page('r600')); // sent at once, so stored (writePage would replace it unsent)
  await s.drain();
  await s.writePage(5, page('r601')); // the last write wins: r600 is stored but unused
  const r = await s.commit({ byteLength: 6 * 4096 });
  recs.push(r);
  images.set(r.id, imageOf(['r400', 'r401', 'z', 'r9', 'r301', 'r601']));
  await store.close();
});

afterAll(() => removeDir(root));

async function statsOf(options: Parameters<typeof storeStats>[1]): Promise<StatsReport> {
  const store = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
  try {
    return await storeStats(store, options);
  } finally {
    await store.close();
  }
}

describe('stats', () => {
  it('summary counters equal a brute-force count from the images and the files', async () => {
    const bf = bruteForce(images, ['cache', 'db', 'web']);
    const r = await statsOf({ exact: true });
    const s = r.summary;
    const distinct = bf.lengths.size; // every distinct page ever stored, garbage included
    const stored = sum([...bf.lengths.values()]);
    const packs = fileBytes(path.join(dir, 'packs'));
    const manifests = fileBytes(path.join(dir, 'manifests'));
    expect(r.source).toBe('counters');
    expect(r.exact!.drifted).toBe(false);
    expect(s.snapshots).toBe(images.size);
    expect(s.vms).toBe(3);
    expect(s.groups).toBe(1);
    expect(s.logicalBytes).toBe(bf.logicalBytes);
    expect(s.pages).toBe(bf.pages);
    expect(s.zeroPages).toBe(bf.zeroPages);
    expect(s.nonZeroPages).toBe(bf.pages - bf.zeroPages);
    expect(s.distinctChunks).toBe(distinct);
    expect(s.chunkRawBytes).toBe(distinct * 4096);
    expect(s.storedBytes).toBe(stored);
    expect(s.packs).toBe(packs.files);
    expect(s.packBytes).toBe(packs.bytes);
    expect(s.packPayloadBytes).toBe(stored); // no duplicate copies yet
    expect(s.manifestBytes).toBe(manifests.bytes);
    expect(s.keptBaseManifests).toBe(0);
    expect(s.onDiskBytes).toBe(s.packBytes + s.manifestBytes + s.keptBaseManifestBytes + s.indexBytes + s.tableBytes);
    // Not payload: pack framing and tables (the pack files less the stored payload), manifests, index, table.
    expect(s.metadataBytes).toBe(packs.bytes - stored + manifests.bytes + s.indexBytes + s.tableBytes);
    expect(s.metadataFraction).toBe(s.metadataBytes / s.onDiskBytes);
    expect(s.dedupRatio).toBe((bf.pages - bf.zeroPages) / distinct);
    expect(s.dedupBasis).toBe('indexed-chunks');
    expect(s.compressionRatio).toBe((distinct * 4096) / stored);
    expect(s.reduction).toBe(bf.logicalBytes / s.onDiskBytes);
    // Per VM, from the catalog: added bytes as recorded at commit.
    for (const v of r.vmStats) {
      const mine = recs.filter((x) => x.vm === v.vm && images.has(x.id));
      expect(v.snapshots).toBe(mine.length);
      expect(v.logicalBytes).toBe(sum(mine.map((x) => images.get(x.id)!.length)));
      expect(v.addedBytes).toBe(sum(mine.map((x) => x.addedBytes)));
    }
    // Bytes added when stored: new chunks' payload + table entries + the manifest.
    const first = recs[0];
    const firstDistinct = new Set(digestsOf(images.get(first.id)!).digests);
    expect(first.addedBytes).toBe(
      sum([...firstDistinct].map((d) => bf.lengths.get(d)! + TOC_ENTRY)) + statSync(path.join(dir, 'manifests', `${first.id}.vnm`)).size,
    );
  });

  it('detail: unique bytes per snapshot and VM, the sharing matrix and garbage, exactly', async () => {
    const vms = ['cache', 'db', 'web'];
    const bf = bruteForce(images, vms);
    const r = await statsOf({ detail: true });
    expect(r.summary.referencedChunks).toBe(bf.referenced.size);
    expect(r.summary.dedupRatio).toBe((bf.pages - bf.zeroPages) / bf.referenced.size);
    for (const s of r.snapshotStats!) {
      const want = bf.unique.get(s.id)!;
      expect([s.id, s.distinctChunks, s.uniqueChunks, s.uniqueBytes]).toEqual([s.id, want.distinct, want.chunks, want.bytes]);
    }
    expect(r.sharing!.vms).toEqual(vms);
    expect(r.sharing!.sharedChunks).toEqual(bf.shared);
    for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) expect(r.sharing!.fraction[a][b]).toBe(bf.shared[a][b] / bf.shared[a][a]);
    r.vmStats.forEach((v, i) => {
      expect(v.distinctChunks).toBe(bf.vmDistinct[i]);
      expect(v.uniqueChunks).toBe(bf.vmUnique[i].chunks);
      expect(v.uniqueBytes).toBe(bf.vmUnique[i].bytes);
    });
    const garbage = [...bf.lengths.keys()].filter((d) => !bf.referenced.has(d));
    expect(garbage.length).toBe(4);
    expect(r.garbage).toEqual({
      chunks: 4,
      payloadBytes: sum(garbage.map((d) => bf.lengths.get(d)!)),
      unindexedPayloadBytes: 0,
      totalPayloadBytes: sum(garbage.map((d) => bf.lengths.get(d)!)),
    });
    expect(r.missingChunks).toBe(0);
    // --vm and --snapshot narrow the rows (figures stay store-wide).
    const one = await statsOf({ vm: 'db' });
    expect(one.vmStats.map((v) => v.vm)).toEqual(['db']);
    expect(one.snapshotStats!.every((s) => s.vm === 'db')).toBe(true);
    const snap = await statsOf({ snapshot: recs[2].id.slice(0, 14) });
    expect(snap.snapshotStats!.map((s) => s.id)).toEqual([recs[2].id]);
  });

  it('counters stay exact through forget and gc; a store without counters is recounted; drift is reported', async () => {
    const store = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
    await forget(store, { ids: [recs[0].id, recs[2].id] });
    const live = new Map(images);
    live.delete(recs[0].id);
    live.delete(recs[2].id);
    await runGc(store, { maxUnused: { bytes: 0 } });
    const r = await storeStats(store, { exact: true, detail: true });
    const bf = bruteForce(live, ['cache', 'db', 'web']);
    expect(r.exact!.drifted).toBe(false);
    expect(r.summary.snapshots).toBe(live.size);
    expect(r.summary.logicalBytes).toBe(bf.logicalBytes);
    expect(r.summary.distinctChunks).toBe(bf.referenced.size); // gc left exactly the referenced chunks
    expect(r.summary.storedBytes).toBe(sum([...bf.referenced].map((d) => bf.lengths.get(d)!)));
    expect(r.summary.packBytes).toBe(fileBytes(path.join(dir, 'packs')).bytes);
    expect(r.garbage!.totalPayloadBytes).toBe(0);
    // Drift: tamper with the base counters; --exact says so.
    await store.db.put(COUNTERS_KEY, Buffer.from(JSON.stringify({ v: 1, snapshots: 99 })));
    const drifted = await storeStats(store, { exact: true });
    expect(drifted.exact!.drifted).toBe(true);
    expect(drifted.exact!.drift.snapshots).toEqual({ counter: drifted.summary.snapshots, exact: live.size });
    expect(drifted.summary.snapshots).not.toBe(live.size);
    // A store from before counters (no base key): recounted and initialised.
    await store.db.del(COUNTERS_KEY);
    const legacy = await storeStats(store, {});
    expect(legacy.source).toBe('recount');
    expect(legacy.summary.snapshots).toBe(live.size);
    const after = await storeStats(store, { exact: true });
    expect(after.source).toBe('counters');
    expect(after.exact!.drifted).toBe(false);
    await store.close();
  });
});

describe('vnstore stats (CLI)', () => {
  it('--json with exact integers and stable names, human output, --vm/--snapshot, clear errors', async () => {
    const r = await runCli(['stats', '--store', dir, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout.toString());
    for (const k of [
      'snapshots',
      'vms',
      'groups',
      'logicalBytes',
      'pages',
      'zeroPages',
      'nonZeroPages',
      'distinctChunks',
      'chunkRawBytes',
      'storedBytes',
      'packs',
      'packBytes',
      'manifestBytes',
      'indexBytes',
      'onDiskBytes',
      'metadataBytes',
    ]) {
      expect(Number.isSafeInteger(j.summary[k]), k).toBe(true);
    }
    expect(typeof j.summary.dedupRatio).toBe('number');
    expect(j.garbage).toBeUndefined();
    const d = await runCli(['stats', '--store', dir, '--detail', '--json']);
    expect(JSON.parse(d.stdout.toString()).sharing.vms).toEqual(['cache', 'db', 'web']);
    const h = await runCli(['stats', '--store', dir, '--detail']);
    expect(h.code).toBe(0);
    expect(h.stdout.toString()).toMatch(/^store .*\nsnapshots +\d+ \(3 VM\(s\), 1 group\(s\)\)/);
    expect(h.stdout.toString()).toMatch(/sharing: share of the row VM/);
    expect((await runCli(['stats', '--help'])).stdout.toString()).toMatch(/--snapshot/);
    for (const [args, code, msg] of [
      [['stats', '--store', dir, '--vm', 'nope'], 6, /no snapshots of VM nope/],
      [['stats', '--store', dir, '--snapshot', 'ffffffffffffffff'], 6, /no snapshot/],
      [['stats', '--store', dir, '--snapshot', 'xyz'], 2, /not a snapshot id/],
    ] as const) {
      const e = await runCli([...args]);
      expect(e.code, e.stderr).toBe(code);
      expect(e.stderr.split('\n').filter(Boolean)).toHaveLength(1);
      expect(e.stderr).toMatch(msg);
    }
  });
});
