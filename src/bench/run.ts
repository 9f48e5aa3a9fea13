/**
 * The benchmark run: images (generated or given) → exact ideal bounds → each tool stores every image in
 * a fresh repository (one command per image, in snapshot-major order), restores and verifies → figures.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { computeIdeal, type IdealReport } from '../sim/ideal.js';
import { Workload, writeWorkload, type ImageFile, type WorkloadParams } from '../sim/workload.js';
import { dirSize, readImageDir, sameBytes } from './files.js';
import { rssMethod, type RunResult } from './proc.js';
import { makeTool, type StoreBreakdown, type Tool, type ToolId } from './tools.js';
import { bytesH } from './report.js';

export interface BenchOptions {
  /** Generate this workload... */
  params?: WorkloadParams;
  /** ...or use the images in this directory (one folder per VM, one file per snapshot). */
  imagesDir?: string;
  /** Peer tools to run besides vnstore (absent ones are skipped with a note). */
  compare: ToolId[];
  /** Parent of the temporary work directory (default: OS temp dir). */
  workDir?: string;
  /** Keep the work directory (images, repositories) instead of removing it. */
  keep?: boolean;
  /** Peers restore every image too (default: one sample image; vnstore always restores all). */
  restoreAll?: boolean;
  /** Path of vnstore's built executable (dist/cli/bin.cjs). */
  vnstoreCli: string;
  /** Progress lines (stderr). */
  log?: (line: string) => void;
}

export interface ImageRow {
  vm: string;
  snap: number;
  bytes: number;
  /** Growth of the repository's bytes on disk from storing this image. */
  addedBytes: number;
  /** What the tool reported it added (vnstore only). */
  reportedAddedBytes?: number;
  seconds: number;
  peakRssBytes: number | null;
}

export interface Phase {
  images: number;
  bytes: number;
  /** Sum of the wall times of the commands (start-up included). */
  seconds: number;
  /** Logical bytes per second, in MB/s (10^6). */
  mbPerSec: number;
  /** Highest peak RSS of any one command. */
  peakRssBytes: number | null;
}

export interface ToolResult {
  tool: ToolId;
  version: string;
  settings: string;
  /** Set when the tool failed part-way; figures are then missing or partial. */
  error?: string;
  repoBytes: number;
  repoAllocatedBytes: number;
  repoFiles: number;
  /** Local caches kept outside the repository (borg): reported, not counted. */
  cacheBytes?: number;
  /** logical ÷ repoBytes */
  reduction: number;
  /** repoBytes ÷ bound (a), page dedup */
  vsDedup: number;
  /** repoBytes ÷ bound (b), page dedup + per-page LZ4 */
  vsDedupLz4: number;
  /** repoBytes ÷ bound (c), page dedup + per-page zstd; null when the bound is not computed */
  vsDedupZstdPage: number | null;
  /** repoBytes ÷ bound (d), page dedup + zstd over 64 KiB containers; null when not computed */
  vsDedupZstdContainer: number | null;
  ingest: Phase;
  perImage: ImageRow[];
  /** Restore of every image the tool restored (vnstore: all; peers: the sample, or all with restoreAll). */
  restore: Phase & { verified: number; failed: string[] };
  /** Restore of the common sample image, the same for every tool. */
  restoreSample: Phase & { verified: boolean };
  /** vnstore: the same store after `vnstore compact --min-age 0`, restored again (same images). */
  afterCompact?: AfterCompact;
  /** vnstore: what the repository's bytes are made of (packs, metadata, reserve). */
  breakdown?: StoreBreakdown;
}

export interface AfterCompact {
  /** Wall time of the compact command (start-up included). */
  compactSeconds: number;
  compactPeakRssBytes: number | null;
  repoBytes: number;
  reduction: number;
  vsDedup: number;
  vsDedupLz4: number;
  vsDedupZstdPage: number | null;
  vsDedupZstdContainer: number | null;
  restore: Phase & { verified: number; failed: string[] };
  restoreSample: Phase & { verified: boolean };
  breakdown?: StoreBreakdown;
}

export interface BenchResult {
  schema: 'vnstore-bench/1';
  date: string;
  machine: { cpus: number; cpuModel: string; memBytes: number; node: string; kernel: string; rss: string };
  workload: { source: 'generated'; params: WorkloadParams } | { source: 'images'; dir: string };
  images: { vm: string; snap: number; bytes: number }[];
  sample: { vm: string; snap: number; bytes: number };
  ideal: IdealReport;
  tools: ToolResult[];
  skipped: { tool: ToolId; reason: string }[];
  seconds: number;
}

/** Finds dist/cli/bin.cjs of this checkout ($VNSTORE_BENCH_CLI overrides). */
export function defaultVnstoreCli(): string {
  if (process.env.VNSTORE_BENCH_CLI) return resolve(process.env.VNSTORE_BENCH_CLI);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'dist', 'cli', 'bin.cjs');
    dir = dirname(dir);
  }
  return resolve('dist/cli/bin.cjs');
}

export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  const log = opts.log ?? (() => {});
  const started = process.hrtime.bigint();
  if (!existsSync(opts.vnstoreCli)) throw new Error(`${opts.vnstoreCli} not found: run \`npm run build\` first`);
  if (opts.workDir) await mkdir(opts.workDir, { recursive: true });
  const work = await mkdtemp(join(opts.workDir ?? tmpdir(), 'vnstore-bench-'));
  try {
    let images: ImageFile[];
    if (opts.imagesDir) {
      images = await readImageDir(opts.imagesDir);
      log(`using ${images.length} images from ${opts.imagesDir}`);
    } else {
      const w = new Workload(opts.params ?? {});
      const total = w.images().reduce((s, { vm }) => s + vm.bytes, 0);
      log(`generating ${w.images().length} images (${gib(total)}) in ${work}`);
      images = await writeWorkload(join(work, 'images'), w, (f, i, n) => log(`  generated ${f.vm}/${f.snap}.img (${i + 1}/${n})`));
    }
    log('computing the ideal bounds (BLAKE3, LZ4 and zstd of every distinct page, zstd of 64 KiB containers)');
    const ideal = await computeIdeal(images);
    // Flush dirty page cache (fresh images) so its writeback does not slow the first tool's fsyncs.
    spawnSync('sync');
    const sample = pickSample(images);

    const skipped: BenchResult['skipped'] = [];
    const tools: ToolResult[] = [];
    const scratch = join(work, 'scratch');
    await mkdir(scratch);
    for (const id of ['vnstore', ...opts.compare] as ToolId[]) {
      const dir = join(work, id);
      await mkdir(dir);
      const tool = makeTool(id, { dir, scratchDir: scratch, vnstoreCli: opts.vnstoreCli });
      if (!tool.executable()) {
        skipped.push({ tool: id, reason: `${id === 'borg-fixed4k' ? 'borg' : id} is not installed` });
        log(`skipping ${id}: not installed`);
        continue;
      }
      try {
        tools.push(await runTool(tool, images, ideal, sample, id === 'vnstore' || !!opts.restoreAll, work, log));
      } catch (err) {
        if (id === 'vnstore') throw err;
        const message = (err as Error).message;
        log(`${id} failed: ${message}`);
        tools.push(failedTool(tool, message));
      } finally {
        if (!opts.keep) await rm(dir, { recursive: true, force: true });
      }
    }
    return {
      schema: 'vnstore-bench/1',
      date: new Date().toISOString(),
      machine: machine(),
      workload: opts.imagesDir
        ? { source: 'images', dir: resolve(opts.imagesDir) }
        : { source: 'generated', params: new Workload(opts.params ?? {}).params },
      images: images.map(({ vm, snap, bytes }) => ({ vm, snap, bytes })),
      sample: { vm: sample.vm, snap: sample.snap, bytes: sample.bytes },
      ideal,
      tools,
      skipped,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    if (opts.keep) log(`kept work directory ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

/** The common restore sample: the last snapshot of the largest VM. */
function pickSample(images: ImageFile[]): ImageFile {
  let best = images[0];
  for (const im of images) if (im.bytes > best.bytes || (im.bytes === best.bytes && im.vm === best.vm && im.snap > best.snap)) best = im;
  return images.filter((im) => im.vm === best.vm).reduce((a, b) => (b.snap > a.snap ? b : a));
}

async function runTool(
  tool: Tool,
  images: ImageFile[],
  ideal: IdealReport,
  sample: ImageFile,
  restoreAll: boolean,
  work: string,
  log: (line: string) => void,
): Promise<ToolResult> {
  const version = await tool.version();
  log(`${tool.id} (${version}): storing ${images.length} images`);
  await tool.init();
  let size = (await dirSize(tool.repoDir)).bytes;
  const perImage: ImageRow[] = [];
  const refs = new Map<ImageFile, string>();
  for (const [i, img] of images.entries()) {
    const put = await tool.put(img);
    refs.set(img, put.ref);
    const after = (await dirSize(tool.repoDir)).bytes;
    perImage.push({
      vm: img.vm,
      snap: img.snap,
      bytes: img.bytes,
      addedBytes: after - size,
      reportedAddedBytes: put.reportedAddedBytes,
      seconds: put.run.seconds,
      peakRssBytes: put.run.peakRssBytes,
    });
    size = after;
    log(
      `  ${tool.id} put ${img.vm}/${img.snap} (${i + 1}/${images.length}): ${mbps(img.bytes, put.run.seconds)} MB/s, ${perImage[i].addedBytes < 0 ? '-' : '+'}${bytesH(Math.abs(perImage[i].addedBytes))}`,
    );
  }
  const repo = await dirSize(tool.repoDir);
  const cache = tool.cacheDir ? (await dirSize(tool.cacheDir)).bytes : undefined;
  const breakdown = await tool.breakdown?.(repo.bytes);

  const outDir = join(work, 'restored');
  const toRestore = restoreAll ? images : [sample];
  const restoreRuns = await restoreImages(tool, toRestore, refs, outDir, log);
  const logical = ideal.logicalBytes;
  const against = (bytes: number) => ({
    reduction: logical / bytes,
    vsDedup: bytes / ideal.dedupBytes,
    vsDedupLz4: bytes / ideal.dedupLz4Bytes,
    vsDedupZstdPage: ideal.dedupZstdPageBytes === null ? null : bytes / ideal.dedupZstdPageBytes,
    vsDedupZstdContainer: ideal.dedupZstdContainerBytes === null ? null : bytes / ideal.dedupZstdContainerBytes,
  });
  let afterCompact: AfterCompact | undefined;
  if (tool.compact) {
    log(`${tool.id}: compacting`);
    const run = await tool.compact();
    const compacted = await dirSize(tool.repoDir);
    const compactedBreakdown = await tool.breakdown?.(compacted.bytes);
    log(`${tool.id}: restoring ${toRestore.length} image${toRestore.length > 1 ? 's' : ''} from the compacted store`);
    const again = await restoreImages(tool, toRestore, refs, outDir, log);
    afterCompact = {
      compactSeconds: run.seconds,
      compactPeakRssBytes: run.peakRssBytes,
      repoBytes: compacted.bytes,
      ...against(compacted.bytes),
      ...restorePhases(again, sample),
      ...(compactedBreakdown ? { breakdown: compactedBreakdown } : {}),
    };
  }
  return {
    tool: tool.id,
    version,
    settings: tool.settings,
    repoBytes: repo.bytes,
    repoAllocatedBytes: repo.allocatedBytes,
    repoFiles: repo.files,
    cacheBytes: cache,
    ...against(repo.bytes),
    ingest: phase(perImage.map((r) => ({ bytes: r.bytes, seconds: r.seconds, peakRssBytes: r.peakRssBytes }))),
    perImage,
    ...restorePhases(restoreRuns, sample),
    ...(afterCompact ? { afterCompact } : {}),
    ...(breakdown ? { breakdown } : {}),
  };
}

type RestoreRun = { img: ImageFile; run: RunResult; ok: boolean };

/** Restores `images` one command each into `outDir`, comparing each with its original. */
async function restoreImages(
  tool: Tool,
  images: ImageFile[],
  refs: Map<ImageFile, string>,
  outDir: string,
  log: (line: string) => void,
): Promise<RestoreRun[]> {
  const runs: RestoreRun[] = [];
  for (const img of images) {
    await mkdir(outDir, { recursive: true });
    const { run, file } = await tool.restore(img, refs.get(img) as string, outDir);
    const ok = await sameBytes(img.path, file);
    runs.push({ img, run, ok });
    if (!ok) log(`  ${tool.id}: restored ${img.vm}/${img.snap} DIFFERS from the original`);
    await rm(outDir, { recursive: true, force: true });
  }
  return runs;
}

/** The restore phase of all runs, and of the sample's run. */
function restorePhases(runs: RestoreRun[], sample: ImageFile): Pick<ToolResult, 'restore' | 'restoreSample'> {
  const sampleRun = runs.find((r) => r.img === sample) as RestoreRun;
  return {
    restore: {
      ...phase(runs.map((r) => ({ bytes: r.img.bytes, seconds: r.run.seconds, peakRssBytes: r.run.peakRssBytes }))),
      verified: runs.filter((r) => r.ok).length,
      failed: runs.filter((r) => !r.ok).map((r) => `${r.img.vm}/${r.img.snap}`),
    },
    restoreSample: {
      ...phase([{ bytes: sample.bytes, seconds: sampleRun.run.seconds, peakRssBytes: sampleRun.run.peakRssBytes }]),
      verified: sampleRun.ok,
    },
  };
}

function phase(runs: { bytes: number; seconds: number; peakRssBytes: number | null }[]): Phase {
  const bytes = runs.reduce((s, r) => s + r.bytes, 0);
  const seconds = runs.reduce((s, r) => s + r.seconds, 0);
  const rss = runs.map((r) => r.peakRssBytes).filter((x): x is number => x !== null);
  return {
    images: runs.length,
    bytes,
    seconds,
    mbPerSec: seconds > 0 ? bytes / 1e6 / seconds : 0,
    peakRssBytes: rss.length ? Math.max(...rss) : null,
  };
}

function failedTool(tool: Tool, error: string): ToolResult {
  const empty = phase([]);
  return {
    tool: tool.id,
    version: '',
    settings: tool.settings,
    error,
    repoBytes: 0,
    repoAllocatedBytes: 0,
    repoFiles: 0,
    reduction: 0,
    vsDedup: 0,
    vsDedupLz4: 0,
    vsDedupZstdPage: null,
    vsDedupZstdContainer: null,
    ingest: empty,
    perImage: [],
    restore: { ...empty, verified: 0, failed: [] },
    restoreSample: { ...empty, verified: false },
  };
}

function machine(): BenchResult['machine'] {
  const c = cpus();
  return {
    cpus: c.length,
    cpuModel: c[0]?.model ?? 'unknown',
    memBytes: totalmem(),
    node: process.version,
    kernel: release(),
    rss: rssMethod() === 'gnu-time' ? 'GNU time %M (ru_maxrss)' : '/proc VmHWM polled every 20 ms',
  };
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
const mbps = (bytes: number, s: number) => (s > 0 ? (bytes / 1e6 / s).toFixed(0) : '-');

/** Workload knobs `--sweep` can vary, and the parameter each sets. */
export const SWEEP_KNOBS = {
  zero: 'zeroFraction',
  shared: 'sharedFraction',
  random: 'randomFraction',
  dirty: 'dirtyFraction',
  vms: 'vms',
  snapshots: 'snapshots',
  seed: 'seed',
} as const satisfies Record<string, keyof WorkloadParams>;
export type SweepKnob = keyof typeof SWEEP_KNOBS;

export interface SweepResult {
  schema: 'vnstore-bench-sweep/1';
  knob: SweepKnob;
  values: number[];
  runs: BenchResult[];
}

/** One full bench run per value of one workload knob, everything else fixed. */
export async function runSweep(opts: BenchOptions & { params: WorkloadParams }, knob: SweepKnob, values: number[]): Promise<SweepResult> {
  const runs: BenchResult[] = [];
  for (const [i, v] of values.entries()) {
    opts.log?.(`sweep ${knob}=${v} (${i + 1}/${values.length})`);
    runs.push(await runBench({ ...opts, params: { ...opts.params, [SWEEP_KNOBS[knob]]: v } }));
  }
  return { schema: 'vnstore-bench-sweep/1', knob, values, runs };
}
