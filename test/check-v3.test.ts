/**
 * check on a store of format 3 finds each kind of damage and names the snapshots it affects: a TOC
 * byte flipped (the pack is unreadable, its numbers vanish), a payload byte flipped (found by
 * --read-data only), a pack a manifest needs deleted, a pack repeating another's numbers (a killed
 * gc's copy) and a pack holding some numbers of another (a conflict). A clean store is clean,
 * counters included.
 */
import { closeSync, cpSync, existsSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkStore, type CheckOptions } from '../src/maintenance/check.js';
import { forget } from '../src/maintenance/forget.js';
import type { Store } from '../src/store/store.js';
import { packFileName } from '../src/format/pack.js';
import { PACK_VERSION_NUMBERED } from '../src/format/pack-v3.js';
import { BatchPool, PackFile } from '../src/store/pack-file.js';
import { loadNumberedManifest } from '../src/store/read-v3.js';
import { PageKind } from '../src/format/pages.js';
import { makeTempDir, removeDir } from './helpers/engine.js';
import { expectAllReadV3, numberedStoreAfterForget, openNumbered, type NumberedFixture } from './helpers/numbered.js';
import { restoreToBuffer } from './helpers/engine.js';
import { tocItems } from '../src/maintenance/pack-copy-v3.js';

const roots: string[] = [];
let fx: NumberedFixture;
beforeAll(async () => {
  fx = await numberedStoreAfterForget('check-v3');
  roots.push(fx.root);
});
afterAll(() => roots.forEach(removeDir));

function copyOfStore(): string {
  const root = makeTempDir('check-v3-copy');
  roots.push(root);
  const dir = path.join(root, 'store');
  cpSync(fx.dir, dir, { recursive: true });
  return dir;
}

function flipByte(file: string, at: number): void {
  const fd = openSync(file, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] ^= 0x40;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
}

/** The snapshots whose manifests name any number of `pack` (read from the intact store). */
async function snapshotsUsing(files: Store, pack: number): Promise<string[]> {
  const out: string[] = [];
  for (const id of fx.expected.keys()) {
    const { pages } = await loadNumberedManifest(path.join(files.dir, 'manifests'), id);
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] === PageKind.Digest && files.numbered!.index.locate(pages.numbers[i])?.pack === pack) {
        out.push(id);
        break;
      }
    }
  }
  return out.sort();
}

/** A pack holding pack 1's first chunk again (same number) and a number no pack holds. */
async function writeConflictingPack(f: Store, id: number): Promise<void> {
  const { toc } = await f.packs.readTocV3(1);
  const first = tocItems(toc).find((i) => i.pages === 1)!;
  const payload = await f.packs.read(1, first.offset, first.storedLength);
  const pack = new PackFile(id, path.join(f.dir, 'tmp'), new BatchPool(1), PACK_VERSION_NUMBERED);
  const digest = toc.digests.subarray(first.entry * 32, first.entry * 32 + 32);
  pack.append(digest, payload, first.codec, f.numbered!.index.numberOf(1, first.entry));
  pack.append(digest, payload, first.codec, f.numbered!.index.nextNumber + 10);
  await pack.seal(path.join(f.dir, 'packs'), () => undefined);
}

async function withFiles<T>(dir: string, fn: (files: Store) => Promise<T>): Promise<T> {
  const files = await openNumbered(dir);
  try {
    return await fn(files);
  } finally {
    await files.close();
  }
}

describe('check on store format 3', () => {
  it('a clean store is clean, with --read-data and counters', async () => {
    const r = await withFiles(copyOfStore(), (f) => checkStore(f, { readData: true }));
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.counters!.drift).toEqual({});
    expect(r.checked.snapshots).toBe(fx.expected.size);
    expect(r.checked.packsRead).toBe(r.checked.packs);
    expect(r.checked.chunksRead).toBe(r.checked.chunks);
  });

  it('a flipped TOC byte: the pack is unreadable and the snapshots naming its numbers are affected', async () => {
    const dir = copyOfStore();
    const pack = 2;
    const affected = await withFiles(dir, (f) => snapshotsUsing(f, pack));
    expect(affected.length).toBeGreaterThan(0);
    const file = path.join(dir, 'packs', packFileName(pack));
    const { tocOffset } = await withFiles(dir, (f) => f.packs.readTocV3(pack));
    flipByte(file, tocOffset + 40); // inside the digest column: only the TOC CRC sees it
    const r = await withFiles(dir, (f) => checkStore(f));
    expect(r.ok).toBe(false);
    const unreadable = r.problems.filter((p) => p.kind === 'pack-unreadable');
    expect(unreadable.map((p) => p.pack)).toEqual([packFileName(pack)]);
    const missing = r.problems.filter((p) => p.kind === 'chunk-missing');
    expect(missing).toHaveLength(1);
    expect(missing[0].affects).toEqual(affected);
    expect(r.next[0]).toBe('vnstore check --repair-index');
  });

  it('a flipped payload byte: structure is clean, --read-data finds the chunk and its snapshots', async () => {
    const dir = copyOfStore();
    const pack = 3;
    const affected = await withFiles(dir, (f) => snapshotsUsing(f, pack));
    const file = path.join(dir, 'packs', packFileName(pack));
    const item = await withFiles(dir, async (f) => tocItems((await f.packs.readTocV3(pack)).toc)[0]);
    flipByte(file, item.offset + Math.floor(item.storedLength / 2));
    const plain = await withFiles(dir, (f) => checkStore(f));
    expect(plain.problems).toEqual([]);
    const r = await withFiles(dir, (f) => checkStore(f, { readData: true }));
    const corrupt = r.problems.filter((p) => p.kind === 'chunk-corrupt');
    expect(corrupt.length).toBe(item.pages);
    expect(corrupt.every((p) => p.pack === packFileName(pack))).toBe(true);
    const hit = [...new Set(corrupt.flatMap((p) => p.affects))].sort();
    expect(hit.length).toBeGreaterThan(0);
    for (const id of hit) expect(affected).toContain(id);
  });

  it('a deleted pack a manifest needs: pack missing, chunk numbers missing, snapshots named', async () => {
    const dir = copyOfStore();
    const pack = 1;
    const affected = await withFiles(dir, (f) => snapshotsUsing(f, pack));
    expect(affected.length).toBeGreaterThan(0);
    const r = await withFiles(dir, async (f) => {
      rmSync(path.join(dir, 'packs', packFileName(pack)));
      return checkStore(f);
    });
    expect(r.problems.map((p) => p.kind).sort()).toEqual(['chunk-missing', 'pack-missing']);
    expect(r.problems.find((p) => p.kind === 'chunk-missing')!.affects).toEqual(affected);
    expect(r.next).toEqual(['vnstore check --repair-index', expect.stringContaining(`vnstore forget ${affected.join(' ')}`)]);
  });

  it("numbers twice: a killed gc's copy and a conflicting pack are reported", async () => {
    const dir = copyOfStore();
    const src = path.join(dir, 'packs', packFileName(1));
    const r = await withFiles(dir, async (f) => {
      cpSync(src, path.join(dir, 'packs', packFileName(90))); // a copy: every number held by pack 1
      await writeConflictingPack(f, 91);
      return checkStore(f);
    });
    const conflicts = r.problems.filter((p) => p.kind === 'number-conflict');
    expect(conflicts.map((p) => p.pack).sort()).toEqual([packFileName(90), packFileName(91)]);
    expect(conflicts.find((p) => p.pack === packFileName(91))!.message).toContain(packFileName(1));
    // The next open deletes the copy (a killed gc's leftover) and leaves the conflicting pack to repair.
    await withFiles(dir, async () => undefined);
    expect(existsSync(path.join(dir, 'packs', packFileName(90)))).toBe(false);
    expect(existsSync(path.join(dir, 'packs', packFileName(91)))).toBe(true);
  });
});

describe('check --repair-index on store format 3', () => {
  const repair: CheckOptions = { repairIndex: true, readData: true };

  it('a chunk that does not verify: good chunks salvaged with their numbers, the pack quarantined, its snapshots named', async () => {
    const dir = copyOfStore();
    const pack = 3;
    const affected = await withFiles(dir, (f) => snapshotsUsing(f, pack));
    const item = await withFiles(dir, async (f) => tocItems((await f.packs.readTocV3(pack)).toc)[0]);
    flipByte(path.join(dir, 'packs', packFileName(pack)), item.offset + Math.floor(item.storedLength / 2));
    const r = await withFiles(dir, (f) => checkStore(f, repair));
    expect(r.repair!.packsQuarantined.map((q) => q.pack)).toEqual([packFileName(pack)]);
    expect(r.repair!.packsSalvaged).toHaveLength(1);
    expect(r.repair!.packsSalvaged[0].badChunks).toBe(item.pages);
    expect(existsSync(path.join(dir, 'quarantine', packFileName(pack)))).toBe(true);
    const lost = r.problems.filter((p) => p.kind === 'chunk-missing');
    expect(lost).toHaveLength(1);
    const named = lost[0].affects;
    expect(named.length).toBeGreaterThan(0);
    for (const id of named) expect(affected).toContain(id);
    expect(lost[0].next).toContain(`vnstore forget ${named.join(' ')}`);
    // Every other snapshot restores exactly; forgetting the named ones leaves a clean store.
    await withFiles(dir, async (f) => {
      for (const rec of await f.listSnapshots()) {
        if (named.includes(rec.id)) continue;
        expect((await restoreToBuffer(f, rec)).equals(fx.expected.get(rec.id)!), rec.id).toBe(true);
      }
      await forget(f, { ids: named });
      const after = await checkStore(f, { readData: true });
      expect(after.problems).toEqual([]);
    });
  });

  it('a conflicting pack: its own numbers salvaged, the pack quarantined, the store clean', async () => {
    const dir = copyOfStore();
    await withFiles(dir, (f) => writeConflictingPack(f, 91));
    const r = await withFiles(dir, (f) => checkStore(f, repair));
    expect(r.repair!.packsQuarantined.map((q) => q.pack)).toEqual([packFileName(91)]);
    expect(r.repair!.packsSalvaged.map((s) => [s.pack, s.goodChunks, s.badChunks])).toEqual([[packFileName(91), 1, 1]]);
    expect(r.problems).toEqual([]);
    await withFiles(dir, async (f) => {
      expect(f.recovery.conflictingPacks).toEqual([]);
      await expectAllReadV3(f, fx.expected, 'after repair');
    });
  });
});
