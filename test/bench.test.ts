/**
 * `vnstore bench` end to end on a tiny workload: the real store through its built CLI (needs
 * `npm run build`), peers only where installed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dirSize, readImageDir, sameBytes } from '../src/bench/files.js';
import { renderMarkdown } from '../src/bench/report.js';
import { defaultVnstoreCli, runBench, type BenchResult } from '../src/bench/run.js';
import { PEER_TOOLS } from '../src/bench/tools.js';
import { which } from '../src/bench/proc.js';
import { runCliInProcess } from './helpers/cli.js';
import { computeIdeal } from '../src/sim/ideal.js';
import { writeWorkload, type WorkloadParams } from '../src/sim/workload.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = defaultVnstoreCli();
const TINY: WorkloadParams = {
  vms: 2,
  memMiB: [0.5, 0.75],
  snapshots: 2,
  zeroFraction: 0.4,
  sharedFraction: 0.4,
  randomFraction: 0.15,
  dirtyFraction: 0.05,
  seed: 3,
  trailingBytes: 333,
};
const installed = (t: string) => which(t === 'borg-fixed4k' ? 'borg' : t) !== null;

let work: string;
beforeAll(async () => {
  // The store is never skipped: without a build this suite fails and says why.
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run \`npm run build\` before this test`);
  work = await mkdtemp(join(tmpdir(), 'vnstore-bench-test-'));
});
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('bench helpers', () => {
  it('sums file sizes recursively and compares files byte for byte', async () => {
    const d = join(work, 'sizes');
    await mkdir(join(d, 'a', 'b'), { recursive: true });
    await writeFile(join(d, 'x'), Buffer.alloc(10));
    await writeFile(join(d, 'a', 'b', 'y'), Buffer.alloc(4097, 1));
    expect(await dirSize(d)).toMatchObject({ bytes: 4107, files: 2 });
    expect((await dirSize(join(d, 'missing'))).bytes).toBe(0);
    await writeFile(join(d, 'z'), Buffer.alloc(4097, 1));
    expect(await sameBytes(join(d, 'a', 'b', 'y'), join(d, 'z'))).toBe(true);
    await writeFile(join(d, 'z'), Buffer.concat([Buffer.alloc(4096, 1), Buffer.from([2])]));
    expect(await sameBytes(join(d, 'a', 'b', 'y'), join(d, 'z'))).toBe(false);
  });

  it('reads the --images layout in snapshot-major order, numbers sorted as numbers', async () => {
    const d = join(work, 'layout');
    for (const vm of ['web', 'db']) {
      await mkdir(join(d, vm), { recursive: true });
      for (const s of ['1', '2', '10']) await writeFile(join(d, vm, `${s}.img`), Buffer.alloc(4096));
    }
    const files = await readImageDir(d);
    expect(files.map((f) => `${f.vm}/${f.snap}:${f.path.split('/').pop()}`)).toEqual([
      'db/0:1.img',
      'web/0:1.img',
      'db/1:2.img',
      'web/1:2.img',
      'db/2:10.img',
      'web/2:10.img',
    ]);
    await expect(readImageDir(join(work, 'nope'))).rejects.toThrow(/no such directory/);
  });
});

describe('vnstore bench end to end', () => {
  let result: BenchResult;

  it('stores, restores and verifies a tiny workload with vnstore and every installed peer', async () => {
    result = await runBench({ params: TINY, compare: [...PEER_TOOLS], vnstoreCli: CLI, workDir: work });
    const images = TINY.vms * TINY.snapshots;
    expect(result.images).toHaveLength(images);
    expect(result.images.every((im) => im.bytes % 4096 === 333)).toBe(true);

    const v = result.tools.find((t) => t.tool === 'vnstore');
    expect(v, 'vnstore must run').toBeDefined();
    expect(v!.error).toBeUndefined();
    expect(v!.restore.images).toBe(images);
    expect(v!.restore.verified).toBe(images);
    expect(v!.restore.failed).toEqual([]);
    expect(v!.restoreSample.verified).toBe(true);
    expect(v!.perImage).toHaveLength(images);
    expect(v!.perImage.every((p) => p.reportedAddedBytes !== undefined && p.seconds > 0)).toBe(true);
    expect(v!.repoBytes).toBeGreaterThan(0);
    expect(v!.reduction).toBeCloseTo(result.ideal.logicalBytes / v!.repoBytes, 9);
    expect(v!.vsDedupLz4).toBeCloseTo(v!.repoBytes / result.ideal.dedupLz4Bytes, 9);
    // The zstd bounds are computed wherever native zstd runs (CI requires it) and the store is set against them.
    if (result.ideal.dedupZstdPageBytes !== null) {
      expect(v!.vsDedupZstdPage).toBeCloseTo(v!.repoBytes / result.ideal.dedupZstdPageBytes, 9);
      expect(v!.vsDedupZstdContainer).toBeCloseTo(v!.repoBytes / result.ideal.dedupZstdContainerBytes!, 9);
    } else {
      expect(v!.vsDedupZstdPage).toBeNull();
    }
    // The same store after `vnstore compact`: restored again, every image verified, set against bound (d).
    const c = v!.afterCompact!;
    expect(c.restore.verified).toBe(images);
    expect(c.restoreSample.verified).toBe(true);
    expect(c.repoBytes).toBeGreaterThan(0);
    expect(c.compactSeconds).toBeGreaterThan(0);
    if (result.ideal.dedupZstdContainerBytes !== null)
      expect(c.vsDedupZstdContainer).toBeCloseTo(c.repoBytes / result.ideal.dedupZstdContainerBytes, 9);
    // What the bytes are made of, by `vnstore stats --json`: the store it counts and the files beside
    // it (the space reserve; config and lock, a few bytes) add up to the repository's bytes.
    for (const b of [v!.breakdown!, c.breakdown!]) {
      expect(b.reserveBytes).toBeGreaterThan(0);
      expect(b.otherBytes).toBeGreaterThanOrEqual(0);
      expect(b.otherBytes).toBeLessThan(64 * 1024);
      expect(b.packPayloadBytes).toBeGreaterThan(0);
      expect(b.packPayloadBytes).toBeLessThan(b.packBytes);
      expect(b.metadataBytes).toBe(b.storeBytes - b.packPayloadBytes);
      expect(b.metadataFraction).toBeCloseTo(b.metadataBytes / b.storeBytes, 12);
    }
    const md = renderMarkdown(result);
    expect(md).toMatch(/\| \*\*vnstore after compact\*\* \|/);
    expect(md).toMatch(
      /vnstore after compact: packs [\d.]+ \w+ = [\d.]+ × bound \(d\); metadata .* = [\d.]+% of the store's [\d.]+ \w+ = [\d.]+ × bound \(d\); beside it the space reserve/,
    );
    expect(md).toMatch(/vnstore compact took [\d.]+ s .*× bound \(d\); restore of the compacted store at [\d.]+% \(sample\)/);
    expect(md).toMatch(/\| ideal \(c\): page dedup \+ per-page zstd-3 \|/);
    expect(md).toMatch(/\| ideal \(d\): page dedup \+ zstd-3 over 64 KiB containers \|/);
    expect(v!.ingest.mbPerSec).toBeGreaterThan(0);

    for (const id of PEER_TOOLS) {
      const t = result.tools.find((x) => x.tool === id);
      if (!installed(id)) {
        expect(result.skipped.map((s) => s.tool)).toContain(id);
        continue;
      }
      expect(t, `${id} ran`).toBeDefined();
      expect(t!.error).toBeUndefined();
      expect(t!.restoreSample.verified).toBe(true);
      expect(t!.perImage).toHaveLength(images);
      expect(t!.repoBytes).toBeGreaterThan(0);
    }
    // The work directory is cleaned up.
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(work)).filter((n) => n.startsWith('vnstore-bench-'))).toEqual([]);
  }, 180_000);

  it('reports ideal bounds identical to a direct computation on the same images', async () => {
    const dir = join(work, 'imgs');
    const files = await writeWorkload(dir, TINY);
    const direct = await computeIdeal(files);
    expect(result.ideal.distinctPages).toBe(direct.distinctPages);
    expect(result.ideal.dedupLz4Bytes).toBe(direct.dedupLz4Bytes);
    expect(result.ideal.dedupZstdPageBytes).toBe(direct.dedupZstdPageBytes);
    expect(result.ideal.dedupZstdContainerBytes).toBe(direct.dedupZstdContainerBytes);
    expect(result.ideal.zeroPages).toBe(direct.zeroPages);
  });
});

/** The `bench` command as registered by registerBench, run as a child process (start-up included). */
function benchCli(args: string[]) {
  const harness = `
    import { Command, CommanderError } from 'commander';
    import { registerBench } from ${JSON.stringify(join(ROOT, 'dist', 'cli', 'bench.js'))};
    const p = new Command().name('vnstore').exitOverride();
    registerBench(p);
    try { await p.parseAsync(process.argv.slice(1), { from: 'user' }); }
    catch (e) { if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2); throw e; }`;
  return spawnSync(process.execPath, ['--input-type=module', '-e', harness, '--', 'bench', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
}

describe('vnstore bench command', () => {
  it('prints Markdown, or JSON, and writes report files and an SVG chart', () => {
    const out = join(work, 'out');
    const md = benchCli(['--mem-mib', '0.25,0.5', '--snapshots', '2', '--quiet', '--out', out]);
    expect(md.status, md.stderr).toBe(0);
    expect(md.stdout).toContain('| store | bytes on disk | reduction |');
    expect(md.stdout).toContain('**vnstore**');
    expect(md.stdout).toContain('### Cross-VM sharing');
    const js = benchCli(['--quiet', '--json', '--images', join(work, 'imgs')]);
    expect(js.status, js.stderr).toBe(0);
    const r = JSON.parse(js.stdout) as BenchResult;
    expect(r.schema).toBe('vnstore-bench/1');
    expect(r.workload.source).toBe('images');
    expect(r.tools[0].restore.failed).toEqual([]);
  }, 120_000);

  it('writes well-formed SVG', async () => {
    const svg = await readFile(join(work, 'out', 'bench.svg'), 'utf8');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    const report = JSON.parse(await readFile(join(work, 'out', 'report.json'), 'utf8')) as BenchResult;
    expect(report.schema).toBe('vnstore-bench/1');
    // The zstd bounds get bars wherever they were computed, and only then.
    expect(svg.includes('ideal (d): dedup + zstd-3 64 KiB')).toBe(report.ideal.dedupZstdContainerBytes !== null);
    expect(svg.includes('ideal (c): dedup + page zstd-3')).toBe(report.ideal.dedupZstdPageBytes !== null);
    if (which('rsvg-convert')) {
      const png = spawnSync('rsvg-convert', [join(work, 'out', 'bench.svg'), '-o', join(work, 'out', 'bench.png')]);
      expect(png.status, String(png.stderr)).toBe(0);
    }
  });

  it('rejects bad flags with one clear line and exit code 2', async () => {
    // The child process once; the other flags through the same command line in-process.
    const child = benchCli(['--zero', '2']);
    expect(child.status).toBe(2);
    expect(child.stderr.trim().split('\n')[0]).toMatch(/error: .*fraction/);
    expect(child.stdout).toBe('');
    for (const args of [
      ['--zero', '2'],
      ['--compare', 'zfs'],
      ['--sweep', 'colour=1,2'],
      ['--images', '/tmp', '--vms', '2'],
    ]) {
      const r = await runCliInProcess(['bench', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^vnstore: error: .*(fraction|unknown tool|KNOB|cannot be combined)/);
      expect(r.stdout.toString()).toBe('');
    }
  }, 60_000);
});
