/**
 * The stores under test, each driven as whole commands (start-up included) on the same image files.
 *
 * Settings (documented in docs/BENCH.md; the same in every run):
 * - vnstore: `init`, `put --vm VM --json FILE` (parent auto), `restore ID -o FILE` (verifies digests).
 * - restic: repository format 2, `--compression auto` (zstd), default content-defined chunker
 *   (512 KiB-8 MiB, ~1 MiB average), `--no-cache`, password from RESTIC_PASSWORD (fixed bench value).
 * - borg: `--encryption none`, `--compression lz4` (borg's default), default buzhash chunker
 *   (2^19-2^23, ~2 MiB average); cache and security dirs in a private BORG_BASE_DIR (not counted).
 * - borg-fixed4k: as borg, with `--chunker-params fixed,4096` (one chunk per page, like vnstore).
 * - casync: `make --compression=zstd` into a local chunk store, default chunk sizes (16/64/256 KiB).
 */
import { mkdir, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import type { ImageFile } from '../sim/workload.js';
import { runChecked, runMeasured, which, type RunResult } from './proc.js';

export const PEER_TOOLS = ['restic', 'borg', 'borg-fixed4k', 'casync'] as const;
export type ToolId = 'vnstore' | (typeof PEER_TOOLS)[number];

/** `--compare` words and the tool runs they stand for. */
export const COMPARE_WORDS: Record<string, ToolId[]> = {
  all: ['restic', 'borg', 'borg-fixed4k', 'casync'],
  restic: ['restic'],
  borg: ['borg', 'borg-fixed4k'],
  'borg-default': ['borg'],
  'borg-fixed4k': ['borg-fixed4k'],
  casync: ['casync'],
};

export interface ToolContext {
  /** Directory owned by this tool run (repository and any private state go below it). */
  dir: string;
  /** Where GNU time reports go. */
  scratchDir: string;
  /** Path of vnstore's dist/cli/bin.cjs. */
  vnstoreCli: string;
}

export interface PutOutcome {
  run: RunResult;
  /** What the tool needs to restore this image (snapshot id, archive name, index file). */
  ref: string;
  /** Bytes the tool says it added (vnstore's own `addedBytes`), when it reports one. */
  reportedAddedBytes?: number;
}

export interface Tool {
  id: ToolId;
  /** One line: the settings used. */
  settings: string;
  /** The directory whose size is the repository size. */
  repoDir: string;
  /** Local state outside the repository (caches): reported, not counted in the repository size. */
  cacheDir?: string;
  /** The executable it needs; null when it is missing. */
  executable(): string | null;
  version(): Promise<string>;
  init(): Promise<RunResult | null>;
  put(img: ImageFile): Promise<PutOutcome>;
  /** Restores one image into outDir; returns the run and the path of the restored file. */
  restore(img: ImageFile, ref: string, outDir: string): Promise<{ run: RunResult; file: string }>;
  /** Recompresses the stored data in place (vnstore compact), when the tool has such a step. */
  compact?(): Promise<RunResult>;
  /** What the repository's bytes are made of, as the tool itself reports it (vnstore stats). */
  breakdown?(repoBytes: number): Promise<StoreBreakdown>;
}

/**
 * vnstore's repository bytes by kind: `vnstore stats --json` for the store proper, and the files it
 * does not count (the space reserve, the config, the lock).
 */
export interface StoreBreakdown {
  /** The store as `vnstore stats` counts it: packs, manifests, index, chunk table. */
  storeBytes: number;
  packBytes: number;
  /** Chunk payload inside the packs. */
  packPayloadBytes: number;
  /** storeBytes - packPayloadBytes: pack headers and tables, manifests, index, chunk table. */
  metadataBytes: number;
  metadataFraction: number;
  /** The space reserve file (DIR/reserve), kept for maintenance on a full disk. */
  reserveBytes: number;
  /** Repository bytes that are neither: config, lock, quarantine, temp files. */
  otherBytes: number;
}

const imgName = (img: ImageFile) => `${img.vm}-${img.snap}`;

export function makeTool(id: ToolId, ctx: ToolContext): Tool {
  switch (id) {
    case 'vnstore':
      return vnstoreTool(ctx);
    case 'restic':
      return resticTool(ctx);
    case 'borg':
      return borgTool(ctx, id, null);
    case 'borg-fixed4k':
      return borgTool(ctx, id, 'fixed,4096');
    case 'casync':
      return casyncTool(ctx);
  }
}

function vnstoreTool(ctx: ToolContext): Tool {
  const repoDir = join(ctx.dir, 'store');
  const node = process.execPath;
  const cli = (...args: string[]) => [ctx.vnstoreCli, ...args];
  const opts = { scratchDir: ctx.scratchDir };
  return {
    id: 'vnstore',
    settings: 'page dedup (BLAKE3), zero pages skipped, per-page LZ4, parent auto',
    repoDir,
    executable: () => node,
    version: async () => (await runChecked(node, cli('--version'), opts)).stdout.trim(),
    init: () => runChecked(node, cli('init', '--store', repoDir), opts),
    async put(img) {
      const run = await runChecked(node, cli('put', '--store', repoDir, '--vm', img.vm, '--json', resolve(img.path)), opts);
      const out = JSON.parse(run.stdout) as { id: string; addedBytes?: number };
      return { run, ref: out.id, reportedAddedBytes: out.addedBytes };
    },
    async restore(img, ref, outDir) {
      const file = join(outDir, `${imgName(img)}.img`);
      return { run: await runChecked(node, cli('restore', '--store', repoDir, ref, '-o', file), opts), file };
    },
    // Everything, now: the bench measures the compacted store against bound (d).
    compact: () => runChecked(node, cli('compact', '--store', repoDir, '--min-age', '0', '--json'), opts),
    async breakdown(repoBytes) {
      const s = JSON.parse((await runChecked(node, cli('stats', '--store', repoDir, '--json'), opts)).stdout).summary as {
        onDiskBytes: number;
        packBytes: number;
        packPayloadBytes: number;
        metadataBytes: number;
        metadataFraction: number | null;
      };
      const reserveBytes = await stat(join(repoDir, 'reserve')).then(
        (st) => st.size,
        () => 0,
      );
      return {
        storeBytes: s.onDiskBytes,
        packBytes: s.packBytes,
        packPayloadBytes: s.packPayloadBytes,
        metadataBytes: s.metadataBytes,
        metadataFraction: s.metadataFraction ?? 0,
        reserveBytes,
        otherBytes: repoBytes - s.onDiskBytes - reserveBytes,
      };
    },
  };
}

/** Fixed password for the throw-away bench repositories (restic 0.14 has no --insecure-no-password). */
const RESTIC_PASSWORD = 'vnstore-bench';

function resticTool(ctx: ToolContext): Tool {
  const repoDir = join(ctx.dir, 'repo');
  const opts = { scratchDir: ctx.scratchDir, env: { RESTIC_PASSWORD, RESTIC_PASSWORD_FILE: undefined, RESTIC_REPOSITORY: undefined } };
  const restic = (...args: string[]) => runChecked('restic', ['-r', repoDir, '--no-cache', ...args], opts);
  return {
    id: 'restic',
    settings: 'repo v2, --compression auto (zstd), default CDC (~1 MiB chunks), --no-cache',
    repoDir,
    executable: () => which('restic'),
    version: async () => firstLine((await runChecked('restic', ['version'], opts)).stdout),
    init: () => restic('init', '--repository-version', '2'),
    async put(img) {
      const run = await restic('backup', '--json', '--host', img.vm, '--compression', 'auto', resolve(img.path));
      const summary = run.stdout
        .trim()
        .split('\n')
        .map((l) => safeJson(l))
        .find((o) => o?.message_type === 'summary');
      if (!summary || typeof summary.snapshot_id !== 'string') throw new Error('restic backup printed no snapshot id');
      return { run, ref: summary.snapshot_id };
    },
    async restore(img, ref, outDir) {
      const target = join(outDir, `restic-${imgName(img)}`);
      const run = await restic('restore', ref, '--target', target);
      // restic recreates the absolute path below the target.
      return { run, file: join(target, resolve(img.path)) };
    },
  };
}

function borgTool(ctx: ToolContext, id: ToolId, chunker: string | null): Tool {
  const repoDir = join(ctx.dir, 'repo');
  const cacheDir = join(ctx.dir, 'borg-home');
  const opts = {
    scratchDir: ctx.scratchDir,
    env: {
      BORG_BASE_DIR: cacheDir,
      BORG_PASSPHRASE: '',
      BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
      BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
      BORG_REPO: undefined,
    },
  };
  const chunkArgs = chunker ? ['--chunker-params', chunker] : [];
  return {
    id,
    settings: `--encryption none, --compression lz4, ${chunker ? `--chunker-params ${chunker}` : 'default chunker (buzhash, ~2 MiB chunks)'}`,
    repoDir,
    cacheDir,
    executable: () => which('borg'),
    version: async () => firstLine((await runChecked('borg', ['--version'], opts)).stdout),
    init: () => runChecked('borg', ['init', '--encryption', 'none', repoDir], opts),
    async put(img) {
      const archive = imgName(img);
      const run = await runChecked(
        'borg',
        ['create', '--compression', 'lz4', ...chunkArgs, `${repoDir}::${archive}`, resolve(img.path)],
        opts,
      );
      return { run, ref: archive };
    },
    async restore(img, ref, outDir) {
      const target = join(outDir, `${id}-${imgName(img)}`);
      await mkdir(target, { recursive: true });
      const run = await runChecked('borg', ['extract', `${repoDir}::${ref}`], { ...opts, cwd: target });
      // borg extracts the stored path without its leading slash.
      return { run, file: join(target, relative('/', resolve(img.path))) };
    },
  };
}

function casyncTool(ctx: ToolContext): Tool {
  const repoDir = join(ctx.dir, 'repo');
  const store = join(repoDir, 'default.castr');
  const opts = { scratchDir: ctx.scratchDir };
  return {
    id: 'casync',
    settings: '--compression=zstd, default chunk sizes (16/64/256 KiB), blob index per image',
    repoDir,
    executable: () => which('casync'),
    version: async () => firstLine((await runMeasured('casync', ['--version'], opts)).stdout) || 'casync',
    async init() {
      await mkdir(join(repoDir, 'index'), { recursive: true });
      return null;
    },
    async put(img) {
      const index = join(repoDir, 'index', `${imgName(img)}.caibx`);
      const run = await runChecked('casync', ['make', `--store=${store}`, '--compression=zstd', index, resolve(img.path)], opts);
      return { run, ref: index };
    },
    async restore(img, ref, outDir) {
      const file = join(outDir, `casync-${imgName(img)}.img`);
      return { run: await runChecked('casync', ['extract', `--store=${store}`, ref, file], opts), file };
    },
  };
}

function firstLine(s: string): string {
  return s.trim().split('\n')[0] ?? '';
}

function safeJson(line: string): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(line);
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
