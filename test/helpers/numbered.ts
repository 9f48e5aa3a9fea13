/**
 * Stores of format 3 for the maintenance tests: built by the format-2 engine (put, compact, forget)
 * and turned into format 3 by the upgrade; read back through the format-3 files alone.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { forget } from '../../src/maintenance/forget.js';
import { runCompact } from '../../src/maintenance/compact.js';
import { listCommittedRecords } from '../../src/maintenance/live-v3.js';
import { gcSweeper } from '../../src/maintenance/sweeper.js';
import { Store } from '../../src/store/store.js';
import { upgradeStore } from '../../src/maintenance/upgrade.js';
import { loadNumberedManifest, readImageV3 } from '../../src/store/read-v3.js';
import { makePage } from './engine.js';
import { expectAllRestore, newStore, putImage } from './maintenance.js';

export const V3_PACK_TARGET = 64 * 1024;

export function mixedImage(seed: number, pages: number): Buffer {
  const parts: Buffer[] = [];
  for (let p = 0; p < pages; p++) {
    const kind = p % 7 === 3 ? 'zero' : p % 5 === 0 ? 'random' : p % 3 === 0 ? 'sparse' : 'compressible';
    parts.push(makePage(kind, seed * 10_000 + p));
  }
  return Buffer.concat(parts);
}

/** `base` with every `every`-th page from `from` replaced by a new one (alternately random and compressible). */
export function changedImage(base: Buffer, seed: number, every: number, from = 1): Buffer {
  const out = Buffer.from(base);
  for (let p = from; (p + 1) * 4096 <= out.length; p += every)
    makePage(p % 2 ? 'random' : 'compressible', seed * 10_000 + p).copy(out, p * 4096);
  return out;
}

export interface NumberedFixture {
  root: string;
  dir: string;
  /** Kept snapshots' exact images, by id. */
  expected: Map<string, Buffer>;
  forgotten: string[];
  /** The forgotten snapshots' images, by id. */
  forgottenImages: Map<string, Buffer>;
}

/**
 * Three VMs, three snapshots each (delta chains), some packs compacted into containers; then a third
 * of the snapshots forgotten (one of them a delta base, kept), no gc; then upgraded to format 3.
 */
export async function numberedStoreAfterForget(prefix: string, options: { compact?: boolean } = {}): Promise<NumberedFixture> {
  const { root, dir, store } = await newStore(prefix, V3_PACK_TARGET, 1); // the upgrade's input
  const expected = new Map<string, Buffer>();
  const forgotten: string[] = [];
  const forgottenImages = new Map<string, Buffer>();
  try {
    const byVm = new Map<string, string[]>();
    for (let round = 0; round < 3; round++) {
      for (const [v, vm] of ['a', 'b', 'c'].entries()) {
        const prev = byVm.get(vm);
        // b's second changes every 2nd page, its third every 4th of those again: half of the second's
        // new pages die when it is forgotten, interleaved with live ones (packs half dead: rewrites).
        const every = vm === 'b' ? (round === 1 ? 2 : 4) : 3 + v;
        const img = prev ? changedImage(expected.get(prev[prev.length - 1])!, 100 * round + v, every) : mixedImage(v + 1, 160);
        const rec = await putImage(store, vm, img);
        expected.set(rec.id, img);
        byVm.set(vm, [...(prev ?? []), rec.id]);
      }
      if (round === 0 && options.compact !== false) await runCompact(store, { minAgeMs: 0 });
    }
    // A third: a's first (a base of a's second: kept), b's second, c's last (its new pages die).
    forgotten.push(byVm.get('a')![0], byVm.get('b')![1], byVm.get('c')![2]);
    await forget(store, { ids: forgotten });
    for (const id of forgotten) {
      forgottenImages.set(id, expected.get(id)!);
      expected.delete(id);
    }
  } finally {
    await store.close();
  }
  await upgradeStore(dir, { packTargetBytes: V3_PACK_TARGET });
  return { root, dir, expected, forgotten, forgottenImages };
}

/** Opens a format-3 store as every command does (gc as its sweeper). */
export function openNumbered(dir: string): Promise<Store> {
  return Store.open(dir, { workers: 0, packTargetBytes: V3_PACK_TARGET, sweeper: gcSweeper });
}

/**
 * Every committed snapshot restores exactly through the engine, and reads back exactly from the
 * format-3 files alone (image digest and every page against the TOC digests).
 */
export async function expectAllReadV3(store: Store, expected: Map<string, Buffer>, context: string): Promise<void> {
  await expectAllRestore(store, expected, context);
  const load = { index: store.numbered!.index, digestColumns: store.numbered!.digestColumns, damaged: [], copies: [], conflicting: [] };
  for (const r of await listCommittedRecords(store.db)) {
    const { header, pages } = await loadNumberedManifest(path.join(store.dir, 'manifests'), r.id);
    const got = await readImageV3(store.packs, load, header, pages);
    expect(got.equals(expected.get(r.id)!), `${context}: ${r.vm} ${r.id} reads back exactly from the files`).toBe(true);
  }
}

/** The bytes of every manifest file, by snapshot id. */
export function manifestBytes(dir: string, ids: Iterable<string>): Map<string, Buffer> {
  return new Map([...ids].map((id) => [id, readFileSync(path.join(dir, 'manifests', `${id}.vnm`))]));
}
