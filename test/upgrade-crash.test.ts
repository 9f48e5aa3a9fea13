/**
 * `upgrade` (store format 1/2 → 3) killed at random points and after each of its steps: the store is
 * then either the old store, complete (every snapshot restores exactly through the format-1/2
 * engine, and a new upgrade runs to the end), or committed to format 3, where finishing the swap
 * leaves a store whose every snapshot reads back exactly from the format-3 files alone, with no chunk
 * entries left in its catalog.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parsePackFileName } from '../src/format/pack.js';
import { runCompact } from '../src/maintenance/compact.js';
import { forget } from '../src/maintenance/forget.js';
import { finishUpgradeSwap, upgradeCopyBytes, upgradeStore } from '../src/maintenance/upgrade.js';
import { readNextNumber } from '../src/store/number-allocator.js';
import { KEY_CHUNK, KEY_SNAPSHOT, openDb, parseSnapshotRecord, prefixRange } from '../src/store/db.js';
import { loadNumberIndex } from '../src/store/number-load.js';
import { PackReader } from '../src/store/pack-reader.js';
import { loadNumberedManifest, readImageV3 } from '../src/store/read-v3.js';
import { Store } from '../src/store/store.js';
import { makePage, REPO_ROOT, restoreToBuffer } from './helpers/engine.js';
import { expectAllRestore, newStore, putImage } from './helpers/maintenance.js';

const CHILD = path.join(REPO_ROOT, 'test/helpers/upgrade-child.mjs');
const PACK_TARGET = 64 * 1024;

function image(seed: number, pages: number): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < pages; p++) {
    const kind = p % 7 === 3 ? 'zero' : p % 5 === 0 ? 'random' : p % 3 === 0 ? 'sparse' : 'compressible';
    parts.push(makePage(kind, seed * 10_000 + p));
  }
  return Buffer.concat(parts);
}

/** Runs the upgrade child on `dir`, SIGKILLed `delayMs` after spawn or when it traces `phase`. */
function upgradeAndKill(
  dir: string,
  kill: { delayMs: number } | { phase: string },
): Promise<{ signal: NodeJS.Signals | null; traced: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir, String(PACK_TARGET)], {
      cwd: REPO_ROOT,
      env: { ...process.env, VNSTORE_TRACE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    const timer = 'delayMs' in kill ? setTimeout(() => child.kill('SIGKILL'), kill.delayMs) : undefined;
    child.stdout.resume();
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if ('phase' in kill && err.includes(`] ${kill.phase} `)) child.kill('SIGKILL');
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0 && signal === null) reject(new Error(`upgrade child failed: ${err}`));
      resolve({ signal, traced: [...err.matchAll(/\] (upgrade: [a-z ]+)/g)].map((m) => m[1].trim()) });
    });
  });
}

function storeVersion(dir: string): number {
  return (JSON.parse(readFileSync(path.join(dir, 'vnstore.json'), 'utf8')) as { version: number }).version;
}

/** A format-3 store: no upgrade leftovers, a catalog without chunk entries, every snapshot exact from the v3 files. */
async function expectFormat3(dir: string, expected: Map<string, Buffer>, context: string): Promise<void> {
  expect(storeVersion(dir), context).toBe(3);
  expect(existsSync(path.join(dir, 'upgrade')), `${context}: upgrade/ removed`).toBe(false);
  expect(existsSync(path.join(dir, 'chunk-table.bin')), `${context}: chunk-table.bin removed`).toBe(false);
  const db = openDb(path.join(dir, 'db'));
  await db.open();
  const ids: string[] = [];
  let chunkKeys = 0;
  let next = -1;
  try {
    for await (const [k, v] of db.iterator(prefixRange(Buffer.of(KEY_SNAPSHOT))))
      ids.push(parseSnapshotRecord(v, k.subarray(1).toString('utf8')).id);
    for await (const k of db.keys(prefixRange(Buffer.of(KEY_CHUNK)))) if (k) chunkKeys++;
    next = await readNextNumber(db);
  } finally {
    await db.close();
  }
  expect(chunkKeys, `${context}: no chunk entries`).toBe(0);
  expect(ids.sort(), `${context}: snapshots`).toEqual([...expected.keys()].sort());
  const reader = new PackReader(path.join(dir, 'packs'));
  try {
    const packIds = readdirSync(path.join(dir, 'packs')).map((f) => parsePackFileName(f)!);
    const load = await loadNumberIndex(reader, packIds);
    expect(load.damaged.length + load.copies.length + load.conflicting.length, `${context}: packs load clean`).toBe(0);
    expect(next, `${context}: next number`).toBe(load.index.nextNumber);
    for (const id of ids) {
      const { header, pages } = await loadNumberedManifest(path.join(dir, 'manifests'), id);
      expect((await readImageV3(reader, load, header, pages)).equals(expected.get(id)!), `${context}: ${id} exact`).toBe(true);
    }
  } finally {
    await reader.close();
  }
}

describe('upgrade to store format 3, killed', () => {
  it('leaves the old store or a committed format-3 store at every kill point, and always finishes', async () => {
    const { root, dir, store } = await newStore('upgrade-crash', PACK_TARGET, 1);
    const expected = new Map<string, Buffer>();
    try {
      const a0 = image(1, 400);
      const a1 = Buffer.from(a0);
      for (let p = 2; p < 400; p += 11) makePage('compressible', 77_000 + p).copy(a1, p * 4096);
      const b0 = Buffer.concat([a0.subarray(0, 200 * 4096), image(2, 150)]);
      for (const [vm, img] of [
        ['a', a0],
        ['b', b0],
        ['a', a1],
      ] as const) {
        expected.set((await putImage(store, vm, img)).id, img);
      }
      await runCompact(store, { minAgeMs: 0 });
      const extra = await putImage(store, 'c', image(3, 60)); // LZ4 packs beside the containers
      expected.set(extra.id, image(3, 60));
      const gone = await putImage(store, 'c', image(4, 60));
      await forget(store, { ids: [gone.id] });
    } finally {
      await store.close();
    }
    const kills: ({ delayMs: number } | { phase: string })[] = [
      { phase: 'upgrade: packs written' },
      { phase: 'upgrade: manifests written' },
      { phase: 'upgrade: catalog written' },
      { phase: 'upgrade: flipped' },
      { phase: 'upgrade: swapped db' },
      { phase: 'upgrade: swapped packs' },
      { phase: 'upgrade: swapped manifests' },
    ];
    // Random points over the whole run (seeded: the same each time; start-up takes ~300 ms).
    let s = 12345;
    for (let i = 0; i < 4; i++) {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      kills.push({ delayMs: 250 + (s % 900) });
    }
    const outcomes: string[] = [];
    for (const [i, kill] of kills.entries()) {
      const trial = path.join(root, `trial-${i}`);
      cpSync(dir, trial, { recursive: true });
      const { signal, traced } = await upgradeAndKill(trial, kill);
      const context = `kill ${JSON.stringify(kill)} (${signal ?? 'finished'}, last step: ${traced.at(-1) ?? 'none'})`;
      const version = storeVersion(trial);
      outcomes.push(`${version}:${traced.at(-1) ?? 'none'}`);
      if (version !== 3) {
        const old = await Store.open(trial, { workers: 0 });
        try {
          await expectAllRestore(old, expected, context);
        } finally {
          await old.close();
        }
        const report = await upgradeStore(trial, { packTargetBytes: PACK_TARGET });
        if (!report.upgraded) throw new Error(`${context}: a store of version ${version} was not upgraded`);
        expect(report.manifestBytesAfter).toBeLessThan(report.manifestBytesBefore);
      } else {
        await finishUpgradeSwap(trial);
      }
      await expectFormat3(trial, expected, context);
    }
    console.log(`upgrade kills (store version: last step traced): ${outcomes.join(', ')}`);
    // Both sides of the commit point were reached.
    expect(outcomes.some((o) => o.startsWith('2:'))).toBe(true);
    expect(outcomes.some((o) => o.startsWith('3:'))).toBe(true);
  }, 240_000); // 11 upgrade processes and as many verifications: ~25-40 s alone on 2 cores, more in the full suite

  it('leaves the old store untouched, and no copy, when the upgrade fails before its commit point', async () => {
    const { dir, store } = await newStore('upgrade-fails', PACK_TARGET, 1);
    const img = image(6, 30);
    const rec = await putImage(store, 'a', img);
    const broken = await putImage(store, 'b', image(7, 30));
    await store.close();
    const manifest = path.join(dir, 'manifests', `${broken.id}.vnm`);
    const bytes = readFileSync(manifest);
    bytes[bytes.length - 10] ^= 0xff;
    writeFileSync(manifest, bytes);
    await expect(upgradeStore(dir)).rejects.toMatchObject({ code: 'E_CORRUPT' });
    expect(existsSync(path.join(dir, 'upgrade'))).toBe(false);
    expect(storeVersion(dir)).toBe(1);
    const old = await Store.open(dir, { workers: 0 });
    try {
      expect((await restoreToBuffer(old, rec)).equals(img)).toBe(true);
    } finally {
      await old.close();
    }
    // The space it asks for: packs, 24 B more a chunk, manifests, 16 MiB.
    expect(upgradeCopyBytes(100e6, 50_000, 2e6)).toBe(100e6 + 1.2e6 + 2e6 + 16 * 1024 * 1024);
  });

  it('starts over after a kill during the flip, does nothing the second time, and the engine opens the result', async () => {
    const { dir, store } = await newStore('upgrade-twice', PACK_TARGET, 1);
    const img = image(5, 50);
    const rec = await putImage(store, 'a', img);
    await store.close();
    // What a kill between the flip's temp file and its rename leaves (the random kills above found it:
    // with the temp file beside vnstore.json the next upgrade failed with EEXIST).
    mkdirSync(path.join(dir, 'upgrade/packs'), { recursive: true });
    writeFileSync(path.join(dir, 'upgrade/packs/00000001.vpk'), 'torn');
    writeFileSync(path.join(dir, 'upgrade/vnstore.json.tmp'), '{"format":"vnst');
    await upgradeStore(dir);
    expect(statSync(path.join(dir, 'db')).mode & 0o777).toBe(0o700);
    await expectFormat3(dir, new Map([[rec.id, img]]), 'upgraded');
    expect(await upgradeStore(dir)).toEqual({ upgraded: false, formatBefore: 3 });
    // The engine opens the format-3 store and restores what the upgrade wrote, exactly.
    const upgraded = await Store.open(dir, { workers: 0 });
    try {
      expect(upgraded.isNumbered).toBe(true);
      expect((await restoreToBuffer(upgraded, await upgraded.resolveSnapshot(rec.id))).equals(img)).toBe(true);
    } finally {
      await upgraded.close();
    }
  });
});
