/**
 * Helpers for the maintenance tests: images built from a page vocabulary (so tests know exactly
 * which chunks each snapshot uses), library puts, and brute-force accounting computed from the raw
 * images and the files on disk rather than from the store's own counters.
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { expect } from 'vitest';
import { getCodec } from '../../src/chunk/codec.js';
import { checkStore } from '../../src/maintenance/check.js';
import { Store } from '../../src/store/store.js';
import type { SnapshotRecord } from '../../src/store/db.js';
import { openDb, prefixRange, KEY_CHUNK, decodeChunkValue } from '../../src/store/db.js';
import { CLI, PAGE, REPO_ROOT, compressiblePage, makeTempDir, prng, randomPage, restoreToBuffer } from './engine.js';

export const TOC_ENTRY = 11;
export const PACK_OVERHEAD = 16 + 32;

/** A page by name: 'z' = zero, 'r<n>' = random (stored raw, 4096 B), 'c<n>' = compressible. */
export function page(name: string): Buffer {
  if (name === 'z') return Buffer.alloc(PAGE);
  const n = Number(name.slice(1));
  if (name[0] === 'r') return randomPage(100_000 + n);
  if (name[0] === 'c') return compressiblePage(200_000 + n);
  throw new Error(`bad page name ${name}`);
}

const WORDS = 'the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were'.split(
  ' ',
);

/** A page of text-like bytes (words drawn at random): LZ4 halves it, zstd over 16 such pages does better. */
export function textPage(seed: number): Buffer {
  const next = prng(seed * 31 + 5);
  const parts: string[] = [];
  let n = 0;
  while (n < 4096) {
    const w = WORDS[next() % WORDS.length] + (next() % 7 === 0 ? `${next() % 1000} ` : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('').slice(0, 4096), 'latin1');
}

export function imageOf(names: string[], tail = 0): Buffer {
  const img = Buffer.concat(names.map(page));
  return tail > 0 ? img.subarray(0, img.length - PAGE + tail) : img;
}

/** Digest (hex) of every non-zero page of an image (the short last page zero-padded). */
export function digestsOf(image: Buffer): { digests: string[]; zeroPages: number; pages: number } {
  const pages = Math.ceil(image.length / PAGE);
  const digests: string[] = [];
  let zeroPages = 0;
  const zero = Buffer.alloc(PAGE);
  for (let i = 0; i < pages; i++) {
    const p = Buffer.alloc(PAGE);
    image.copy(p, 0, i * PAGE, Math.min(image.length, (i + 1) * PAGE));
    if (p.equals(zero)) zeroPages++;
    else digests.push(blake3(p).toString('hex'));
  }
  return { digests, zeroPages, pages };
}

/** Stored (compressed) length of each distinct non-zero page, by the same codec rules as ingest. */
export function storedLengths(images: Buffer[]): Map<string, number> {
  const out = new Map<string, number>();
  const zero = Buffer.alloc(PAGE);
  for (const image of images) {
    for (let i = 0; i * PAGE < image.length; i++) {
      const p = Buffer.alloc(PAGE);
      image.copy(p, 0, i * PAGE, Math.min(image.length, (i + 1) * PAGE));
      if (p.equals(zero)) continue;
      const d = blake3(p).toString('hex');
      if (out.has(d)) continue;
      out.set(d, getCodec().compressPages(p, [0]).lengths[0]);
    }
  }
  return out;
}

/** A new store, open; `format` 1 or 2 for tests of the legacy layouts (default: what init creates, 3). */
export async function newStore(
  prefix: string,
  packTargetBytes = 16 * 1024,
  format?: number,
): Promise<{ root: string; dir: string; store: Store }> {
  const root = makeTempDir(prefix);
  const dir = path.join(root, 'store');
  await Store.init(dir, { format });
  return { root, dir, store: await Store.open(dir, { workers: 0, packTargetBytes }) };
}

export async function putImage(
  store: Store,
  vm: string,
  image: Buffer,
  opts: { group?: string; parent?: string } = {},
): Promise<SnapshotRecord> {
  const s = await store.beginSession({ vm, group: opts.group, parent: opts.parent ?? 'auto' });
  await s.writePages(0, image);
  return s.commit({ byteLength: image.length, unwritten: 'zero' });
}

/** Commits several VMs' images as one group snapshot. */
export async function putGroup(store: Store, group: string, images: { vm: string; image: Buffer }[]): Promise<SnapshotRecord[]> {
  const prepared = [];
  for (const { vm, image } of images) {
    const s = await store.beginSession({ vm, group });
    await s.writePages(0, image);
    prepared.push(await s.prepare({ byteLength: image.length, unwritten: 'zero' }));
  }
  return store.commitPrepared(prepared, { id: group });
}

/** Restores every listed snapshot and compares with the expected images (by id). */
export async function expectAllRestore(store: Store, expected: Map<string, Buffer>, context = ''): Promise<void> {
  const listed = await store.listSnapshots();
  expect(listed.map((r) => r.id).sort(), `${context}: listed snapshots`).toEqual([...expected.keys()].sort());
  for (const rec of listed) {
    const out = await restoreToBuffer(store, rec);
    const want = expected.get(rec.id)!;
    expect(out.length, `${context}: ${rec.id} length`).toBe(want.length);
    expect(out.equals(want), `${context}: ${rec.id} restores bit-exact`).toBe(true);
  }
}

/** Index entries read straight from LevelDB (store closed). */
export async function readIndex(dir: string): Promise<Map<string, { pack: number; offset: number; storedLength: number; codec: number }>> {
  const db = openDb(path.join(dir, 'db'));
  await db.open();
  try {
    const out = new Map<string, { pack: number; offset: number; storedLength: number; codec: number }>();
    for await (const [k, v] of db.iterator(prefixRange(Buffer.of(KEY_CHUNK)))) out.set(k.subarray(1).toString('hex'), decodeChunkValue(v));
    return out;
  } finally {
    await db.close();
  }
}

export function dirFileBytes(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const n of readdirSync(dir)) {
    const st = statSync(path.join(dir, n));
    if (st.isFile()) {
      files++;
      bytes += st.size;
    }
  }
  return { files, bytes };
}

/** A catalog record for the pure policy tests (one 4 KiB page, nothing stored): id from a number. */
export function catalogRecord(id: number, vm: string, timeMs: number, group?: string): SnapshotRecord {
  return {
    id: id.toString(16).padStart(16, '0'),
    vm,
    group,
    time: new Date(timeMs).toISOString(),
    baseDepth: 0,
    byteLength: 4096,
    pageCount: 1,
    zeroPages: 0,
    imageDigest: '',
    newChunks: 0,
    newChunkBytes: 0,
    manifestBytes: 0,
    addedBytes: 0,
  };
}

/**
 * The end of one round of the concurrent-maintenance tests: commits the session that wrote `want`
 * while maintenance ran, checks every snapshot restores, reopens the store and checks it (data too).
 * Returns the reopened store.
 */
export async function commitRestoreReopen(
  store: Store,
  session: { commit(): Promise<SnapshotRecord> },
  want: Buffer[],
  images: Map<string, Buffer>,
  context: string,
): Promise<Store> {
  const rec = await session.commit();
  images.set(rec.id, Buffer.concat(want));
  await expectAllRestore(store, images, context);
  const dir = store.dir;
  const packTargetBytes = store.writer.targetBytes;
  await store.close();
  const reopened = await Store.open(dir, { workers: 0, packTargetBytes });
  expect((await checkStore(reopened, { readData: true })).problems, context).toEqual([]);
  return reopened;
}

export interface Killed {
  signal: NodeJS.Signals | null;
  code: number | null;
  /** The last trace phase ("gc: ..." or "compact: ...") the command reported before it ended. */
  phase: string;
  stderr: string;
}

export type KillFrom = 'spawn' | 'planned' | { phase: string; nth: number };

/**
 * Runs `vnstore ...args` (gc or compact, traced) and SIGKILLs it `delayMs` after spawn, or after it
 * has planned, or the moment it reports the nth occurrence of a phase (the trace line arrives while
 * the next step is under way: e.g. right after a new pack was renamed into place, before or while
 * its index batch is written).
 */
export function runAndKill(args: string[], env: Record<string, string>, delayMs: number, from: KillFrom): Promise<Killed> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env, VNSTORE_TRACE: '1', VNSTORE_DEBUG: undefined },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    let timer: NodeJS.Timeout | undefined;
    const arm = () => (timer ??= setTimeout(() => child.kill('SIGKILL'), delayMs));
    if (from === 'spawn') arm();
    child.stdout.resume();
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (from === 'planned' && /(gc|compact): planned/.test(err)) arm();
      if (typeof from === 'object' && err.split(from.phase).length - 1 >= from.nth) child.kill('SIGKILL');
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const phases = [...err.matchAll(/\] ((?:gc|compact): [a-z ]+)/g)].map((m) => m[1].trim());
      resolve({ code, signal, phase: phases.pop() ?? 'start-up', stderr: err });
    });
  });
}
