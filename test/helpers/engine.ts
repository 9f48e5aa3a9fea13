/**
 * Shared helpers for the engine tests: deterministic image content, the expected whole-image digest
 * (computed independently of the store), restore into memory, CLI spawning and temp directories.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { blake3 } from '@napi-rs/blake-hash';
import { afterEach } from 'vitest';
import { restoreSnapshot } from '../../src/store/restore.js';
import { Store } from '../../src/store/store.js';
import { packFileName } from '../../src/format/pack.js';
import type { SnapshotRecord } from '../../src/store/db.js';

export const PAGE = 4096;
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(REPO_ROOT, 'dist/cli/bin.cjs');

// ------------------------------------------------------------------ deterministic content

/** xorshift32 stream: cheap, seedable, good enough to make pages LZ4 cannot shrink. */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** A page of incompressible bytes determined by `seed` (never all zero). */
export function randomPage(seed: number, length = PAGE): Buffer {
  const next = prng((Math.imul(seed | 0, 2654435761) ^ Math.imul((seed / 2 ** 32) | 0, 40503)) + 1);
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i + 4 <= length; i += 4) b.writeUInt32LE(next(), i);
  for (let i = length - (length % 4); i < length; i++) b[i] = next() & 0xff;
  if (length > 0) b[0] |= 1;
  return b;
}

/** A page LZ4 shrinks well: a short text-like pattern with a seed-dependent twist (never all zero). */
export function compressiblePage(seed: number, length = PAGE): Buffer {
  const text = Buffer.from(`kernel page ${seed} `.repeat(4) + 'the quick brown fox jumps over the lazy dog; ', 'latin1');
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = text[i % text.length];
  if (length > 8) b.writeUInt32LE(seed >>> 0, length >> 1);
  return b;
}

/** A mostly-zero page with a few non-zero bytes (sparse guest pages; still a distinct chunk). */
export function sparsePage(seed: number, length = PAGE): Buffer {
  const b = Buffer.alloc(length);
  const next = prng(seed + 77);
  for (let k = 0; k < 3; k++) b[next() % length] = (next() % 255) + 1;
  return b;
}

export type PageKindSpec = 'zero' | 'random' | 'compressible' | 'sparse';

export function makePage(kind: PageKindSpec, seed: number): Buffer {
  switch (kind) {
    case 'zero':
      return Buffer.alloc(PAGE);
    case 'random':
      return randomPage(seed);
    case 'compressible':
      return compressiblePage(seed);
    case 'sparse':
      return sparsePage(seed);
  }
}

// ------------------------------------------------------------------ expectations

const IMAGE_DIGEST_PREFIX = Buffer.from('vnstore-image-v1\0', 'latin1');

/**
 * The whole-image digest as src/chunk/hash.ts defines it, computed from the raw image here (not from a
 * page table): BLAKE3(prefix || u64le length || per page BLAKE3(page zero-padded) or 32 zero bytes).
 */
export function expectedImageDigest(image: Uint8Array): string {
  const pageCount = Math.ceil(image.length / PAGE);
  const parts: Buffer[] = [IMAGE_DIGEST_PREFIX];
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(image.length));
  parts.push(len);
  const zero = Buffer.alloc(PAGE);
  for (let i = 0; i < pageCount; i++) {
    const page = Buffer.alloc(PAGE);
    page.set(image.subarray(i * PAGE, Math.min(image.length, (i + 1) * PAGE)));
    parts.push(page.equals(zero) ? Buffer.alloc(32) : blake3(page));
  }
  return blake3(Buffer.concat(parts)).toString('hex');
}

/** Restores a snapshot into memory through the public restore path. */
export async function restoreToBuffer(store: Store, record: SnapshotRecord): Promise<Buffer> {
  const parts: Buffer[] = [];
  await restoreSnapshot(store, record, { write: (b) => void parts.push(Buffer.from(b)) });
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------ processes and directories

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  input?: Uint8Array;
  cwd?: string;
  /** Run as this user (needs root): permission tests as root use an unprivileged uid. */
  uid?: number;
  gid?: number;
}

/** Runs `node dist/cli/bin.cjs ...args` (the vnstore executable) to completion. */
export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: options.cwd ?? REPO_ROOT,
      env: { ...process.env, VNSTORE_DEBUG: undefined, VNSTORE_STORE: undefined, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(options.uid !== undefined ? { uid: options.uid, gid: options.gid ?? options.uid } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? undefined);
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }));
  });
}

export function makeTempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `vnstore-${prefix}-`));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Temp directories for the calling test file, each removed after the test that made it. Call once at
 * the file's top level; the returned function makes one (like makeTempDir).
 */
export function tempDirs(): (prefix: string) => string {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) removeDir(d);
  });
  return (prefix) => {
    const d = makeTempDir(prefix);
    dirs.push(d);
    return d;
  };
}

/** Initialises a new store at ROOT/store and returns its path (`format` 1 or 2: a legacy layout). */
export async function initStore(root: string, format?: number): Promise<string> {
  const dir = path.join(root, 'store');
  await Store.init(dir, { format });
  return dir;
}

/** Asserts nothing; returns the single stderr line of a failed command, or throws a descriptive error. */
export function singleErrorLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.length > 0);
  if (lines.length !== 1) throw new Error(`expected exactly one stderr line, got ${lines.length}:\n${stderr}`);
  return lines[0];
}

/**
 * Opens the store (nothing else may hold it) and checks that packs/ holds exactly the indexed packs,
 * each well-formed (trailer, table of contents, every chunk decodes to its recorded digest prefix) with
 * the chunk count its pack record says (format 3: the packs of the number index, and `check
 * --read-data` clean). Returns a list of problems (empty when consistent).
 */
export async function packProblems(dir: string): Promise<string[]> {
  const store = await Store.open(dir, { workers: 0 });
  try {
    const problems: string[] = [];
    if (store.numbered) {
      // Format 3: the packs' TOCs are the index; check --read-data re-reads each and hashes every chunk.
      const files = readdirSync(path.join(dir, 'packs')).sort();
      const indexed = store.numbered.index.packIds.map((id) => packFileName(id)).sort();
      if (files.join() !== indexed.join()) problems.push(`pack files ${files.join(',')} != indexed ${indexed.join(',')}`);
      const { checkStore } = await import('../../src/maintenance/check.js');
      problems.push(...(await checkStore(store, { readData: true })).problems.map((p) => p.message));
      return problems;
    }
    const records = await store.listPacks();
    const files = readdirSync(path.join(dir, 'packs')).sort();
    const expected = records.map((r) => packFileName(r.id)).sort();
    if (files.join() !== expected.join()) problems.push(`pack files ${files.join(',')} != indexed ${expected.join(',')}`);
    for (const rec of records) {
      const name = packFileName(rec.id);
      try {
        const chunks = await store.packs.readChunks(rec.id);
        if (chunks.length !== rec.chunks) problems.push(`${name}: ${chunks.length} chunks, record says ${rec.chunks}`);
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    return problems;
  } finally {
    await store.close();
  }
}
