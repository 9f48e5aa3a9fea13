/**
 * Superseded pre-copy chunks are reclaimed after a commit (issue 11): a session that stored a page's
 * chunk in one round and replaced it in a later one leaves dead chunks in its packs, which the store
 * reclaims by a gc limited to those packs in the background once the commit is durable
 * (src/store/reclaim.ts). At the default pack size (32 MiB), as users run it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DIGEST_BYTES } from '../src/format/pages.js';
import { checkStore } from '../src/maintenance/check.js';
import { gcSweeper } from '../src/maintenance/sweeper.js';
import { DEFAULT_RECLAIM_POLICY, Reclaimer, reclaimFromEnv, worthReclaiming, type PackSweeper } from '../src/store/reclaim.js';
import { Store } from '../src/store/store.js';
import { SupersededTracker } from '../src/store/superseded.js';
import { makeTempDir, PAGE, randomPage, REPO_ROOT, removeDir, restoreToBuffer } from './helpers/engine.js';
import { restoreRemote, startServer } from './helpers/server.js';

const MIB = 1024 * 1024;
const BENCH = path.join(REPO_ROOT, 'bench/superseded.mjs');
const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));
function packFileBytes(dir: string): number {
  return readdirSync(path.join(dir, 'packs')).reduce((sum, f) => sum + statSync(path.join(dir, 'packs', f)).size, 0);
}

function tempDir(): string {
  const d = makeTempDir('vnstore-reclaim-');
  roots.push(d);
  return d;
}

interface BenchOut {
  packBytes: number;
  referencedBytes: number;
  ratio: number;
  reclaimRuns: number;
  reclaimSeconds: number;
}

/** The 5 rounds x 20% workload of bench/superseded.mjs on the built dist/, into `store` (kept). */
function runWorkload(store: string, mib: number, extra: string[] = []): { committed: string; sha256: string; out: BenchOut } {
  const r = spawnSync(process.execPath, [BENCH, '--mib', String(mib), '--json', '--store', store, ...extra], {
    encoding: 'utf8',
    env: { ...process.env, VNSTORE_PACK_TARGET_BYTES: '', VNSTORE_RECLAIM: '' },
  });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const [first, second] = r.stdout.trim().split('\n');
  const c = JSON.parse(first) as { committed: string; sha256: string };
  return { ...c, out: JSON.parse(second) as BenchOut };
}

/** Opens `dir`, checks it with --read-data, and restores `id` to bytes whose SHA-256 must be `sha256`. */
async function expectIntact(dir: string, id: string, sha256: string): Promise<void> {
  const store = await Store.open(dir, { workers: 0, sweeper: gcSweeper });
  try {
    const report = await checkStore(store, { readData: true });
    expect(report.problems).toEqual([]);
    const image = await restoreToBuffer(store, await store.resolveSnapshot(id));
    expect(createHash('sha256').update(image).digest('hex')).toBe(sha256);
  } finally {
    await store.close();
  }
}

/** A new store at `dir` with one snapshot (1 MiB of random pages), closed cleanly. */
async function putPrior(dir: string): Promise<{ id: string; sha256: string }> {
  await Store.init(dir);
  const store = await Store.open(dir, { workers: 0, sweeper: gcSweeper });
  try {
    const image = Buffer.concat(Array.from({ length: 256 }, (_, p) => randomPage(2_000_000 + p)));
    const s = await store.beginSession({ vm: 'prior', parent: 'none', memoryBytes: image.length });
    await s.writePages(0, image);
    const rec = await s.commit();
    return { id: rec.id, sha256: createHash('sha256').update(image).digest('hex') };
  } finally {
    await store.close();
  }
}

describe('superseded chunk accounting', () => {
  it('counts a stored chunk replaced by other content once, and not one rewritten with the same', () => {
    const t = new SupersededTracker();
    const a = Buffer.alloc(DIGEST_BYTES, 1);
    const b = Buffer.alloc(DIGEST_BYTES, 2);
    t.replace(7, a, 0, b, 0); // page 7 never stored by this session
    expect(t.chunks).toBe(0);
    t.stored(7);
    t.replace(7, a, 0, a, 0); // the same content again
    expect(t.chunks).toBe(0);
    t.replace(7, a, 0, b, 0);
    expect(t.chunks).toBe(1);
    t.replace(7, b, 0, a, 0); // page 7 now names a chunk the session did not store first
    expect(t.chunks).toBe(1);
    t.stored(100_000); // grows
    t.replace(100_000, a, 0, b, 0);
    expect(t.chunks).toBe(2);
  });

  it('reclaims at 5% of the new bytes and at least 4 MiB; VNSTORE_RECLAIM=0 turns it off', () => {
    expect(DEFAULT_RECLAIM_POLICY).toEqual({ minShare: 0.05, minBytes: 4 * MIB });
    const hint = (supersededBytes: number, newBytes = 100 * MIB) => ({ packs: [1], newBytes, supersededBytes });
    expect(worthReclaiming(hint(5 * MIB))).toBe(true);
    expect(worthReclaiming(hint(5 * MIB - 1))).toBe(false);
    expect(worthReclaiming(hint(4 * MIB, 10 * MIB))).toBe(true);
    expect(worthReclaiming(hint(4 * MIB - 1, 10 * MIB))).toBe(false);
    expect(worthReclaiming({ ...hint(50 * MIB), packs: [] })).toBe(false);
    expect(reclaimFromEnv({ VNSTORE_RECLAIM: '0' })).toBe(false);
    expect(reclaimFromEnv({ VNSTORE_RECLAIM: 'off' })).toBe(false);
    expect(reclaimFromEnv({})).toBe(true);
  });
});

describe('Reclaimer', () => {
  /** A sweeper whose reclaims finish when the test says, recording the packs of each. */
  function fakeSweeper() {
    const calls: number[][] = [];
    let active = 0;
    let most = 0;
    const releases: (() => void)[] = [];
    const sweeper: PackSweeper = {
      dropDead: () => Promise.resolve(),
      reclaim: async (_store, packs) => {
        calls.push([...packs]);
        most = Math.max(most, ++active);
        await new Promise<void>((r) => releases.push(r));
        active--;
        if (packs.includes(13)) throw new Error('a failed reclaim');
      },
    };
    const settle = async () => {
      while (releases.length === 0) await new Promise((r) => setImmediate(r));
      releases.shift()!();
    };
    return { sweeper, calls, settle, most: () => most };
  }
  const worth = (packs: number[]) => ({ packs, newBytes: 100 * MIB, supersededBytes: 50 * MIB });
  const store = {} as Store;

  it('runs one reclaim at a time, merges requests made meanwhile, and close() waits for them', async () => {
    const f = fakeSweeper();
    const r = new Reclaimer(store, f.sweeper, true);
    r.afterCommit(worth([1, 2]));
    await f.settle();
    expect(f.calls).toEqual([[1, 2]]);
    r.afterCommit(worth([3]));
    r.afterCommit(worth([4, 3]));
    r.afterCommit({ ...worth([9]), supersededBytes: 0 }); // not worth it: not asked
    let closed = false;
    const closing = r.close().then(() => (closed = true));
    r.afterCommit(worth([5])); // after close: ignored
    await new Promise((resolve) => setImmediate(resolve));
    expect(closed).toBe(false); // the run of 3 and 4 has not finished
    await f.settle();
    await closing;
    expect(f.calls).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(f.most()).toBe(1);
    expect(r.runs).toBe(2);
  });

  it('does nothing when turned off or without a sweeper, and survives a failed reclaim', async () => {
    const f = fakeSweeper();
    new Reclaimer(store, f.sweeper, false).afterCommit(worth([1]));
    new Reclaimer(store, undefined, true).afterCommit(worth([1]));
    await new Promise((r) => setImmediate(r));
    expect(f.calls).toEqual([]);
    const r = new Reclaimer(store, f.sweeper, true);
    r.afterCommit(worth([13]));
    await f.settle();
    await r.idle();
    expect(r.lastError).toBeInstanceOf(Error);
    r.afterCommit(worth([14]));
    await f.settle();
    await r.idle();
    expect(f.calls).toEqual([[13], [14]]);
  });
});

describe('reclaim after commit, 32 MiB packs', () => {
  it('5 rounds of 20% rewritten: packs within 1.05x of the referenced bytes, every byte restores', async () => {
    const dir = path.join(tempDir(), 'store');
    const { committed, sha256, out } = runWorkload(dir, 64);
    expect(out.reclaimRuns).toBe(1);
    expect(out.ratio).toBeLessThanOrEqual(1.05);
    await expectIntact(dir, committed, sha256);
    // The same workload without the reclaim leaves the superseded chunks (the bound is not trivial).
    const off = runWorkload(path.join(tempDir(), 'store'), 64, ['--no-reclaim']);
    expect(off.out.reclaimRuns).toBe(0);
    expect(off.out.ratio).toBeGreaterThan(1.5);
    expect(off.sha256).toBe(sha256);
  }, 240_000);

  it('keeps a superseded chunk that a concurrent session deduplicated against', async () => {
    const dir = path.join(tempDir(), 'store');
    await Store.init(dir);
    const store = await Store.open(dir, { workers: 0, sweeper: gcSweeper });
    try {
      const pages = 4096; // 16 MiB of incompressible pages
      const a = await store.beginSession({ vm: 'a', parent: 'none', memoryBytes: pages * PAGE });
      const first = Buffer.concat(Array.from({ length: pages }, (_, p) => randomPage(p)));
      await a.writePages(0, first);
      await a.drain();
      // b takes page 10 of a's first round: a chunk a stored, found by lookup, not stored again.
      const shared = first.subarray(10 * PAGE, 11 * PAGE);
      const imageB = Buffer.concat([shared, randomPage(900_001)]);
      const b = await store.beginSession({ vm: 'b', parent: 'none', memoryBytes: imageB.length });
      await b.writePages(0, imageB);
      await b.drain();
      expect(b.stats.newChunks).toBe(1);
      // a's second round rewrites every even page, page 10 among them: half its chunks superseded.
      const indices = Array.from({ length: pages / 2 }, (_, k) => 2 * k);
      const second = Buffer.concat(indices.map((p) => randomPage(1_000_000 + p)));
      await a.writeScattered(indices, second);
      const recA = await a.commit();
      expect(a.stats.supersededChunks).toBe(pages / 2);
      // Pack files, not pack records: format 3 (the default) keeps no `p` records.
      const packsBefore = packFileBytes(dir);
      expect((await store.reclaimIdle()).runs).toBe(1);
      const packsAfter = packFileBytes(dir);
      expect(packsBefore - packsAfter).toBeGreaterThan(7 * MIB); // a's 2048 superseded pages, less b's
      const recB = await b.commit();
      const finalA = Buffer.from(first);
      indices.forEach((p, k) => second.copy(finalA, p * PAGE, k * PAGE, (k + 1) * PAGE));
      expect((await restoreToBuffer(store, recA)).equals(finalA)).toBe(true);
      expect((await restoreToBuffer(store, recB)).equals(imageB)).toBe(true);
      expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    } finally {
      await store.close();
    }
  }, 120_000);

  it('close() waits for a reclaim the commit started', async () => {
    const dir = path.join(tempDir(), 'store');
    await Store.init(dir);
    const store = await Store.open(dir, { workers: 0, sweeper: gcSweeper });
    const pages = 2048; // 8 MiB, every page rewritten once: 8 MiB superseded
    const s = await store.beginSession({ vm: 'a', parent: 'none', memoryBytes: pages * PAGE });
    await s.writePages(0, Buffer.concat(Array.from({ length: pages }, (_, p) => randomPage(p))));
    const image = Buffer.concat(Array.from({ length: pages }, (_, p) => randomPage(500_000 + p)));
    await s.writePages(0, image);
    const rec = await s.commit();
    await store.close(); // no reclaimIdle(): close must wait for it
    const bytes = packFileBytes(dir);
    expect(bytes).toBeLessThan(pages * PAGE * 1.01);
    await expectIntact(dir, rec.id, createHash('sha256').update(image).digest('hex'));
  }, 120_000);

  it('the server reclaims in its own process after an agent commits', async () => {
    const running = await startServer(tempDir(), {}, undefined, { sweeper: gcSweeper });
    try {
      const client = await running.connect();
      const pages = 2048;
      const s = await client.beginSession({ vm: 'remote', parent: 'none', memoryBytes: pages * PAGE });
      // Two rounds, each sent whole (single pages the agent gathers would replace each other unsent).
      const all = Array.from({ length: pages }, (_, p) => p);
      await s.writeScattered(all, Buffer.concat(all.map((p) => randomPage(p))));
      const image = Buffer.concat(all.map((p) => randomPage(700_000 + p)));
      await s.writeScattered(all, image);
      const rec = await s.commit();
      expect((await running.store.reclaimIdle()).runs).toBe(1);
      const packs = (await running.store.listPacks()).reduce((sum, r) => sum + r.bytes, 0);
      expect(packs).toBeLessThan(pages * PAGE * 1.01);
      expect((await restoreRemote(client, rec.id)).equals(image)).toBe(true);
    } finally {
      await running.stop();
    }
  }, 120_000);

  it('a SIGKILL during the background reclaim leaves a store that checks clean and restores exactly', async () => {
    // How long the reclaim of this workload takes here, uninterrupted (and that it leaves all intact).
    const whole = runWorkload(path.join(tempDir(), 'store'), 40);
    expect(whole.out.reclaimRuns).toBe(1);
    const reclaimMs = whole.out.reclaimSeconds * 1000;
    // Each window of gc's write order, then random instants within the reclaim's first 60%.
    const kills: ({ failpoint: string } | { delayMs: number })[] = [
      { failpoint: 'pack-renamed:1' },
      { failpoint: 'index-written:1' },
      { failpoint: 'files-removed:1' },
      { delayMs: Math.floor(Math.random() * 0.3 * reclaimMs) },
      { delayMs: Math.floor((0.3 + Math.random() * 0.3) * reclaimMs) },
    ];
    for (const kill of kills) {
      // A store that holds a snapshot already and was closed cleanly: its reopen after the kill also
      // sweeps what the killed process sealed (the unclean-close path) on top of gc's recovery.
      const dir = path.join(tempDir(), 'store');
      const prior = await putPrior(dir);
      const child = spawn(process.execPath, [BENCH, '--mib', '40', '--json', '--store', dir], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          VNSTORE_PACK_TARGET_BYTES: '',
          VNSTORE_RECLAIM: '',
          VNSTORE_GC_FAILPOINT: 'failpoint' in kill ? kill.failpoint : '',
        },
      });
      let stdout = '';
      const committed = new Promise<{ committed: string; sha256: string }>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          const line = stdout.split('\n')[0];
          if (stdout.includes('\n')) resolve(JSON.parse(line) as { committed: string; sha256: string });
        });
        child.on('exit', () => reject(new Error(`exited before its commit: ${stdout}`)));
      });
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
      const c = await committed;
      if ('delayMs' in kill) {
        await new Promise((r) => setTimeout(r, kill.delayMs));
        child.kill('SIGKILL');
      }
      const signal = await exited;
      // Killed while the reclaim ran (a failpoint: the reclaim reached that point in gc's write order).
      expect(signal, `${JSON.stringify(kill)} of a ${reclaimMs.toFixed(0)} ms reclaim`).toBe('SIGKILL');
      await expectIntact(dir, c.committed, c.sha256);
      await expectIntact(dir, prior.id, prior.sha256);
    }
  }, 300_000);
});
