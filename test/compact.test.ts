/**
 * vnstore compact (issue 16): cold LZ4 pages into zstd containers of distinct pages, in first-seen
 * order; every snapshot restores exactly, check --read-data is clean (counters included), the store
 * shrinks, a second run has nothing to do; restoring decodes each container once per window; gc
 * re-containers the live pages of a container that lost some; sessions commit while compact runs;
 * without libzstd compact fails with one line while reading still works.
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { getZstd } from '../src/chunk/zstd.js';
import { CONTAINER_CODEC, PACK_VERSION_CONTAINERS, packFileName } from '../src/format/pack.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind } from '../src/format/pages.js';
import { compressContainers, decodeContainer } from '../src/chunk/container.js';
import { DEFAULT_COMPACT_LEVEL } from '../src/maintenance/compact-plan.js';
import { checkStore } from '../src/maintenance/check.js';
import { runCompact } from '../src/maintenance/compact.js';
import { forget } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { storeStats } from '../src/maintenance/stats.js';
import { WINDOW_PAGES } from '../src/store/job-sizes.js';
import { Store } from '../src/store/store.js';
import type { SnapshotRecord } from '../src/store/db.js';
import {
  compressiblePage,
  makeTempDir,
  prng,
  randomPage,
  removeDir,
  restoreToBuffer,
  runCli,
  singleErrorLine,
  sparsePage,
} from './helpers/engine.js';
import { startServe } from './helpers/serve-process.js';
import { commitRestoreReopen, dirFileBytes, expectAllRestore, newStore, putImage, textPage } from './helpers/maintenance.js';

const PACK_TARGET = 256 * 1024;
/** compact's default zstd level, written out: a change of the default should be a decision these tests notice. */
const DEFAULT_LEVEL = 8;
const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

/** 3 VMs × 3 generations of mostly compressible memory, each generation rewriting a third of it. */
async function buildStore(store: Store, pages = 300): Promise<{ recs: SnapshotRecord[]; images: Map<string, Buffer> }> {
  const rand = prng(16);
  const images = new Map<string, Buffer>();
  const recs: SnapshotRecord[] = [];
  let seed = 1;
  const fresh = () => {
    const k = rand() % 10;
    return k < 5
      ? textPage(seed++)
      : k < 6
        ? compressiblePage(seed++)
        : k < 8
          ? sparsePage(seed++)
          : k < 9
            ? Buffer.alloc(4096)
            : randomPage(seed++);
  };
  for (let vm = 0; vm < 3; vm++) {
    let img = Buffer.concat(Array.from({ length: pages }, fresh));
    for (let gen = 0; gen < 3; gen++) {
      if (gen > 0) {
        img = Buffer.from(img);
        for (let i = 0; i < pages; i++) if (rand() % 3 === 0) fresh().copy(img, i * 4096);
      }
      const r = await putImage(store, `vm${vm}`, img);
      recs.push(r);
      images.set(r.id, img);
    }
  }
  return { recs, images };
}

function packVersions(dir: string): number[] {
  return readdirSync(path.join(dir, 'packs'))
    .sort()
    .map((n) => readFileSync(path.join(dir, 'packs', n)).readUInt16LE(8));
}

async function containerEntries(store: Store): Promise<number> {
  let n = 0;
  for (const r of await store.listPacks()) n += (await store.packs.readToc(r.id)).filter((e) => e.codec === CONTAINER_CODEC).length;
  return n;
}

describe('vnstore compact', () => {
  it('compacts cold packs into zstd containers: exact restores, clean check, a smaller store, nothing left to do', async () => {
    const { root, dir, store } = await newStore('compact', PACK_TARGET, 1); // store format 2 (format 3: compact-v3.test.ts)
    roots.push(root);
    const { recs, images } = await buildStore(store);
    // Just written: nothing is cold at the default age.
    const young = await runCompact(store, { dryRun: true });
    expect(young.plan.totals.packsChosen).toBe(0);
    expect(young.plan.packs.every((p) => p.action === 'skip')).toBe(true);
    const before = await storeStats(store);
    const packBytes = dirFileBytes(path.join(dir, 'packs')).bytes;
    // An hour later (the clock is passed in): every pack is cold.
    const later = () => Date.now() + 60 * 60 * 1000;
    const config = () => JSON.parse(readFileSync(path.join(dir, 'vnstore.json'), 'utf8')) as { version: number };
    expect(config().version).toBe(1);
    const report = await runCompact(store, { now: later });
    expect(report.result!.skipped).toEqual([]);
    // The store's version says it may hold version-2 packs: an older vnstore refuses it whole.
    expect(config().version).toBe(2);
    expect(report.plan.totals.packsChosen).toBeGreaterThan(0);
    expect(report.result!.chunksCopied).toBe(report.plan.totals.liveChunks);
    const after = await storeStats(store);
    const packBytesAfter = dirFileBytes(path.join(dir, 'packs')).bytes;
    expect(report.packBytesAfter).toBe(packBytesAfter);
    expect(packBytesAfter).toBeLessThan(packBytes * 0.8);
    expect(after.summary.storedBytes).toBeLessThan(before.summary.storedBytes * 0.8);
    // The counters (container shares included) agree with a recount.
    expect((await storeStats(store, { exact: true })).exact!.drifted).toBe(false);
    expect(packVersions(dir)).toContain(PACK_VERSION_CONTAINERS);
    expect(await containerEntries(store)).toBeGreaterThan(0);
    await expectAllRestore(store, images, 'after compact');
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);

    // First-seen order: the oldest snapshot's distinct pages lie in page order in the new packs.
    const pages = await store.loadPages(recs[0].id);
    const seen = new Set<string>();
    let last = -1;
    let inContainers = 0;
    let inversions = 0;
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] !== PageKind.Digest) continue;
      const d = pages.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
      const key = Buffer.from(d).toString('hex');
      if (seen.has(key)) continue;
      seen.add(key);
      const [loc] = await store.lookupExact([d]);
      if (loc!.codec !== CONTAINER_CODEC) continue;
      const pos = loc!.pack * 2 ** 36 + loc!.offset * 16 + loc!.member!;
      inContainers++;
      if (pos <= last) inversions++;
      last = pos;
    }
    expect(inContainers).toBeGreaterThan(seen.size * 0.5);
    expect(inversions).toBe(0);

    // Without --level, compact writes its containers at the default level (chosen on real memory:
    // docs/DESIGN.md): a full container's frame is, byte for byte, its pages compressed at that level.
    const zstd = getZstd();
    let full: { pack: number; offset: number; storedLength: number } | undefined;
    for (const key of seen) {
      const [loc] = await store.lookupExact([Buffer.from(key, 'hex')]);
      if (loc!.codec === CONTAINER_CODEC && loc!.pages === 16) {
        full = loc!;
        break;
      }
    }
    expect(full).toBeDefined();
    const frame = Buffer.alloc(full!.storedLength);
    const fd = openSync(path.join(dir, 'packs', packFileName(full!.pack)), 'r');
    readSync(fd, frame, 0, frame.length, full!.offset);
    closeSync(fd);
    const raw = Buffer.alloc(16 * 4096);
    zstd.decompress(frame, Uint32Array.of(0), Uint32Array.of(frame.length), raw, Uint32Array.of(0), Uint32Array.of(raw.length));
    const at = (level: number) => zstd.compress(raw, Uint32Array.of(0), Uint32Array.of(raw.length), level).payload;
    expect(report.level).toBe(DEFAULT_LEVEL);
    expect(at(DEFAULT_LEVEL).equals(frame)).toBe(true);
    expect(at(3).equals(frame)).toBe(false);

    // Nothing left: a second run chooses no pack.
    const again = await runCompact(store, { now: later, dryRun: true });
    expect(again.plan.totals.packsChosen).toBe(0);

    // Restore decodes each container once per window at most: count frames decoded.
    const spy = vi.spyOn(zstd, 'decompress');
    try {
      const rec = recs[8];
      const table = await store.loadPages(rec.id);
      const perWindow = new Set<string>();
      const containers = new Set<string>();
      for (let i = 0; i < table.pageCount; i++) {
        if (table.kinds[i] !== PageKind.Digest) continue;
        const [loc] = await store.lookupExact([table.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)]);
        if (loc!.codec !== CONTAINER_CODEC) continue;
        perWindow.add(`${Math.floor(i / WINDOW_PAGES)}:${loc!.pack}:${loc!.offset}`);
        containers.add(`${loc!.pack}:${loc!.offset}`);
      }
      spy.mockClear();
      expect((await restoreToBuffer(store, rec)).equals(images.get(rec.id)!)).toBe(true);
      // Each container decoded exactly once per window that needs it (never once per page).
      expect(containers.size).toBeGreaterThan(0);
      expect(spy.mock.calls.length).toBe(perWindow.size);
    } finally {
      spy.mockRestore();
    }
    await store.close();
  });

  it('gc puts the live pages of a container that lost some into new containers', async () => {
    const { root, dir, store } = await newStore('compact-gc', PACK_TARGET, 1); // store format 2 (format 3: compact-v3.test.ts)
    roots.push(root);
    const { recs, images } = await buildStore(store);
    await runCompact(store, { minAgeMs: 0 });
    // The first generation of each VM goes: the pages it alone held die inside containers.
    await forget(store, { ids: [recs[0].id, recs[3].id, recs[6].id] });
    for (const r of [recs[0], recs[3], recs[6]]) images.delete(r.id);
    const dry = await runGc(store, { maxUnused: { bytes: 0 }, dryRun: true });
    expect(dry.plan.totals.deadBytes).toBeGreaterThan(0);
    const report = await runGc(store, { maxUnused: { bytes: 0 } });
    expect(report.result!.skipped).toEqual([]);
    expect(report.result!.packsRewritten).toBeGreaterThan(0);
    expect((await runGc(store, { maxUnused: { bytes: 0 }, dryRun: true })).plan.totals.deadBytes).toBe(0);
    // The copies are containers still (not LZ4 pages), in version 2 packs, each frame exactly its
    // pages at compact's default level (not gc's own zstd-3: forget + gc keeps what compact gained).
    let differsAt3 = 0;
    for (const name of report.result!.packsWritten) {
      const id = parseInt(name, 16);
      const toc = await store.packs.readToc(id);
      expect(toc.filter((e) => e.codec === CONTAINER_CODEC).length).toBeGreaterThan(toc.filter((e) => e.codec === 1).length * 4);
      for (const e of toc.filter((x) => x.codec === CONTAINER_CODEC && x.member === 0)) {
        const frame = Buffer.from(await store.packs.read(id, e.offset, e.storedLength));
        const pages = new Uint8Array(e.pages * PAGE_SIZE);
        expect(decodeContainer(frame, pages)).toBe(e.pages);
        const at = async (level: number) => {
          const z = await compressContainers(pages, [e.pages], level);
          return Buffer.from(z.payload.subarray(0, z.lengths[0]));
        };
        expect((await at(DEFAULT_COMPACT_LEVEL)).equals(frame), `${name} at ${e.offset}`).toBe(true);
        if (!(await at(3)).equals(frame)) differsAt3++;
      }
    }
    expect(differsAt3).toBeGreaterThan(0);
    expect(packVersions(dir).every((v) => v === PACK_VERSION_CONTAINERS)).toBe(true);
    await expectAllRestore(store, images, 'after gc');
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    await store.close();
  });

  it('sessions committing while compact runs restore exactly', async () => {
    const { root, store } = await newStore('compact-concurrent', PACK_TARGET, 1); // store format 2 (format 3: compact-v3.test.ts)
    roots.push(root);
    const { images } = await buildStore(store, 200);
    const candidates = [...images.values()].flatMap((img) =>
      Array.from({ length: img.length / 4096 }, (_, i) => Buffer.from(img.subarray(i * 4096, (i + 1) * 4096))),
    );
    const rand = prng(7);
    let current = store;
    for (let round = 0; round < 3; round++) {
      const s = await current.beginSession({ vm: `s${round}`, parent: 'none' });
      const want: Buffer[] = [];
      const compact = runCompact(current, { minAgeMs: 0 });
      for (let i = 0; i < 60; i++) {
        const p = rand() % 5 === 0 ? compressiblePage(90_000 + round * 100 + i) : candidates[rand() % candidates.length];
        await s.writePage(i, p);
        want[i] = p;
        if (rand() % 3 === 0) await new Promise((r) => setImmediate(r));
      }
      const rep = await compact;
      expect(rep.result?.skipped ?? []).toEqual([]);
      current = await commitRestoreReopen(current, s, want, images, `round ${round}`);
    }
    await current.close();
  });
});

describe('check --repair-index on a compacted store', () => {
  it('rebuilds the same index from v2 packs; a damaged container loses only its own pages', async () => {
    const { root, dir, store } = await newStore('compact-repair', PACK_TARGET, 1); // store format 2 (format 3: compact-v3.test.ts)
    roots.push(root);
    const { images } = await buildStore(store, 120);
    await runCompact(store, { minAgeMs: 0 });
    // Intact: the index rebuilt from the packs is the index compact wrote (members and page counts too).
    const intact = (await checkStore(store, { repairIndex: true })).repair!;
    expect([intact.indexEntriesAdded, intact.indexEntriesChanged, intact.indexEntriesRemoved]).toEqual([0, 0, 0]);
    expect(intact.packsQuarantined).toEqual([]);
    // Damage one container frame of a v2 pack.
    const packs = await store.listPacks();
    let target: { id: number; offset: number; length: number; members: number } | undefined;
    for (const r of packs) {
      const toc = await store.packs.readToc(r.id);
      const first = toc.find((e) => e.codec === CONTAINER_CODEC && e.member === 0 && e.pages === 16);
      if (first) {
        target = { id: r.id, offset: first.offset, length: first.storedLength, members: first.pages };
        break;
      }
    }
    expect(target).toBeDefined();
    await store.close();
    const file = path.join(dir, 'packs', `${target!.id.toString(16).padStart(8, '0')}.vpk`);
    const bytes = readFileSync(file);
    bytes[target!.offset + Math.floor(target!.length / 2)] ^= 0x5a;
    writeFileSync(file, bytes);
    const s = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
    try {
      const rep = (await checkStore(s, { repairIndex: true })).repair!;
      expect(rep.packsQuarantined.map((q) => q.pack)).toEqual([path.basename(file)]);
      expect(rep.packsSalvaged).toHaveLength(1);
      // The damaged frame's pages are lost (at most its 16); every other chunk of the pack is saved.
      expect(rep.packsSalvaged[0].badChunks).toBeGreaterThan(0);
      expect(rep.packsSalvaged[0].badChunks).toBeLessThanOrEqual(target!.members);
      expect(rep.packsSalvaged[0].goodChunks).toBeGreaterThan(0);
      // Snapshots that use none of the lost pages restore exactly; the others fail naming the damage.
      let exact = 0;
      let refused = 0;
      for (const rec of await s.listSnapshots()) {
        try {
          expect((await restoreToBuffer(s, rec)).equals(images.get(rec.id)!), rec.id).toBe(true);
          exact++;
        } catch (err) {
          expect((err as { code?: string }).code).toBe('E_CORRUPT');
          refused++;
        }
      }
      // The lost pages were live (some snapshot needs them); the other VMs' snapshots do not share them.
      expect(refused).toBeGreaterThan(0);
      expect(exact).toBeGreaterThan(0);
      expect(exact + refused).toBe(images.size);
    } finally {
      await s.close();
    }
  });
});

describe('vnstore compact (CLI)', () => {
  it('runs from compact and gc --compact, reports JSON, refuses bad options and a missing libzstd with one line', async () => {
    const { root, dir, store } = await newStore('compact-cli', PACK_TARGET);
    roots.push(root);
    const { images } = await buildStore(store, 120);
    await store.close();
    const env = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
    const help = (await runCli(['compact', '--help'])).stdout.toString();
    expect(help).toMatch(/--level <N>[\s\S]*--min-age[\s\S]*--max-repack <SIZE>/);
    expect(help).toMatch(new RegExp(`--level <N>[^-]*\\(default: "${DEFAULT_LEVEL}"\\)`));
    for (const [args, message] of [
      [['--level', '0'], /--level takes a whole number from 1 to 19/],
      [['--min-age', '-1'], /--min-age takes minutes/],
      [['--max-repack', 'lots'], /--max-repack takes a size/],
    ] as const) {
      const r = await runCli(['compact', '--store', dir, ...args], { env });
      expect(r.code).toBe(2);
      expect(singleErrorLine(r.stderr)).toMatch(message);
    }
    // Without libzstd: one line, exit 16; the dry run still plans; reading needs nothing.
    const noZstd = { ...env, VNSTORE_NATIVE: '0' };
    const refused = await runCli(['compact', '--store', dir, '--min-age', '0'], { env: noZstd });
    expect(refused.code).toBe(16);
    expect(singleErrorLine(refused.stderr)).toMatch(/compact needs libzstd/);
    const dry = await runCli(['compact', '--store', dir, '--min-age', '0', '--dry-run', '--json'], { env: noZstd });
    expect(dry.code, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout.toString()).plan.totals.packsChosen).toBeGreaterThan(0);

    const before = dirFileBytes(path.join(dir, 'packs')).bytes;
    const r = await runCli(['gc', '--store', dir, '--compact', '--json'], { env: { ...env } });
    expect(r.code, r.stderr).toBe(0);
    // Default age: the packs are minutes old at most, so gc --compact compacts nothing yet.
    expect(JSON.parse(r.stdout.toString()).compact.plan.totals.packsChosen).toBe(0);
    expect(JSON.parse(r.stdout.toString()).compact.level).toBe(DEFAULT_LEVEL);
    const c = await runCli(['compact', '--store', dir, '--min-age', '0', '--json'], { env });
    expect(c.code, c.stderr).toBe(0);
    const rep = JSON.parse(c.stdout.toString());
    expect(rep.level).toBe(DEFAULT_LEVEL);
    expect(rep.packBytesAfter).toBe(dirFileBytes(path.join(dir, 'packs')).bytes);
    expect(rep.packBytesAfter).toBeLessThan(before);
    const human = await runCli(['compact', '--store', dir, '--min-age', '0'], { env });
    expect(human.stdout.toString()).toMatch(/0 of \d+ pack\(s\)[\s\S]*nothing to compact/);
    // Restores, and check --read-data, with the fzstd fallback.
    const s = await Store.open(dir, { workers: 0 });
    await s.close();
    const check = await runCli(['check', '--store', dir, '--read-data'], { env: noZstd });
    expect(check.code, check.stderr).toBe(0);
    for (const [id, img] of images) {
      const out = path.join(root, `${id}.img`);
      const res = await runCli(['restore', '--store', dir, id, '-o', out], { env: noZstd });
      expect(res.code, res.stderr).toBe(0);
      expect(readFileSync(out).equals(img)).toBe(true);
    }
  });
});

describe('vnstore compact --server', () => {
  it('runs inside the server beside it, then the store checks clean and restores exactly', async () => {
    const root = makeTempDir('compact-server');
    roots.push(root);
    const dir = path.join(root, 'store');
    expect((await runCli(['init', '--store', dir, '--format', '1'])).code).toBe(0);
    const store = await Store.open(dir, { workers: 0, packTargetBytes: PACK_TARGET });
    const { images } = await buildStore(store, 100);
    await store.close();
    const token = (await runCli(['token', '--store', dir])).stdout.toString().trim();
    const srv = await startServe(dir);
    try {
      const env = { VNSTORE_SERVER: srv.address, VNSTORE_TOKEN: token };
      const r = await runCli(['compact', '--min-age', '0', '--json'], { env });
      expect(r.code, r.stderr).toBe(0);
      const rep = JSON.parse(r.stdout.toString());
      expect(rep.plan.totals.packsChosen).toBeGreaterThan(0);
      expect(rep.packBytesAfter).toBeLessThan(rep.packBytesBefore);
      const [id, img] = [...images][0];
      const out = path.join(root, 'restored.img');
      const rest = await runCli(['restore', id, '-o', out], { env });
      expect(rest.code, rest.stderr).toBe(0);
      expect(readFileSync(out).equals(img)).toBe(true);
    } finally {
      expect((await srv.stop()).code).toBe(0);
    }
    const s = await Store.open(dir, { workers: 0 });
    try {
      expect((await checkStore(s, { readData: true })).problems).toEqual([]);
      await expectAllRestore(s, images, 'after compact in the server');
    } finally {
      await s.close();
    }
  });
});
