#!/usr/bin/env node
// Engine speed and space targets of issue 2, measured in one run (run `npm run build` first):
//   node bench/engine.mjs [--scale F] [--repeat R] [--work-dir DIR] [--keep] [--json]
//
// Data set: src/sim/workload.ts ENGINE_WORKLOAD: 4 VMs of unequal size (128/192/256/448 MiB, 1 GiB per
// epoch; --scale multiplies the sizes), sharing OS pages at different offsets, 3 consecutive snapshots,
// 35% zero pages, 10% of pages changed between snapshots, contents per-page LZ4 shrinks ~1.7x.
// Baseline: single-thread BLAKE3, one blake3() call per 4 KiB page, in this process, over the same bytes.
// vnstore: whole `vnstore put` / `vnstore restore` commands (start-up included), one per image.
// Targets: first snapshots >= 0.5x, consecutive >= 1.5x, restore >= 0.8x the baseline's MB/s;
// store bytes on disk / ideal bound (b) <= 1.05.
// --repeat R: the baseline and the whole command sequence R times (a fresh store each time) on the
// same images; each figure is the median of the R runs, each ratio the ratio of the medians, and
// the per-run figures are listed too (the project machine is noisy: one run can move 20%).
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { hashBaseline, warm, warmDir } from './baseline.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(join(root, 'dist', p));
const { ENGINE_WORKLOAD, Workload, writeWorkload } = await dist('sim/workload.js');
const { computeIdeal } = await dist('sim/ideal.js');
const { runChecked, rssMethod } = await dist('bench/proc.js');
const { dirSize, sameBytes } = await dist('bench/files.js');

const { values: args } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    'work-dir': { type: 'string' },
    keep: { type: 'boolean', default: false },
    repeat: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});
const scale = Number(args.scale);
if (!(scale > 0)) throw new Error('--scale must be a positive number');
const repeat = Number(args.repeat);
if (!Number.isInteger(repeat) || repeat < 1) throw new Error('--repeat must be a positive integer');
const params = { ...ENGINE_WORKLOAD, memMiB: ENGINE_WORKLOAD.memMiB.map((m) => m * scale) };
const cli = join(root, 'dist', 'cli', 'bin.cjs');
const log = (s) => process.stderr.write(`engine: ${s}\n`);
const MB = 1e6;

if (args['work-dir']) await mkdir(args['work-dir'], { recursive: true });
const work = await mkdtemp(join(args['work-dir'] ?? tmpdir(), 'vnstore-engine-'));
try {
  const w = new Workload(params);
  log(`generating ${w.images().length} images in ${work}`);
  const images = await writeWorkload(join(work, 'images'), w);
  // Flush the freshly written images: otherwise their writeback competes with (and delays the
  // fsyncs of) the first timed commands, which measures the generator, not the store.
  spawnSync('sync');
  const first = images.filter((f) => f.snap === 0);
  const later = images.filter((f) => f.snap > 0);
  const bytesOf = (list) => list.reduce((s, f) => s + f.bytes, 0);

  log('ideal bounds');
  const ideal = await computeIdeal(images);

  const runs = [];
  for (let r = 0; r < repeat; r++) {
    if (repeat > 1) log(`run ${r + 1} of ${repeat}`);
    runs.push(await runOnce(join(work, `store${r}`)));
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const phase = (key) => {
    const seconds = median(runs.map((x) => x[key].seconds));
    const out = { bytes: runs[0][key].bytes, seconds, mbPerSec: runs[0][key].bytes / MB / seconds };
    if (key !== 'hash') out.peakRssBytes = Math.max(...runs.map((x) => x[key].peakRssBytes));
    if (key === 'restore') out.verified = Math.min(...runs.map((x) => x.restore.verified));
    return out;
  };
  const hash = phase('hash');
  const ingestFirst = phase('ingestFirst');
  const ingestLater = phase('ingestLater');
  const restore = phase('restore');
  const disk = { bytes: median(runs.map((x) => x.diskBytes)) };

  /** The baseline, then every put and restore as whole commands into a fresh store at `store`. */
  async function runOnce(store) {
    log('single-thread BLAKE3 baseline (one call per 4 KiB page)');
    const hash = await hashBaseline(images);
    const opts = { scratchDir: work };
    await runChecked(process.execPath, [cli, 'init', '--store', store], opts);
    const put = async (list, label) => {
      let seconds = 0;
      let rss = 0;
      for (const f of list) {
        // The baseline hashes bytes already in memory; give the put the same start (page cache), or
        // this machine's proactive reclaim makes it a disk-read benchmark.
        await warm(f.path);
        const r = await runChecked(process.execPath, [cli, 'put', '--store', store, '--vm', f.vm, f.path], opts);
        seconds += r.seconds;
        rss = Math.max(rss, r.peakRssBytes ?? 0);
        log(`  put ${f.vm}/${f.snap} ${label}: ${(f.bytes / MB / r.seconds).toFixed(0)} MB/s`);
        f.id = r.stdout.trim();
      }
      return { bytes: bytesOf(list), seconds, mbPerSec: bytesOf(list) / MB / seconds, peakRssBytes: rss };
    };
    log('vnstore put: first snapshots');
    const ingestFirst = await put(first, 'first');
    log('vnstore put: consecutive snapshots');
    const ingestLater = await put(later, 'consecutive');
    const disk = await dirSize(store);

    log('vnstore restore: every image, verified against the original');
    let rSeconds = 0;
    let rRss = 0;
    let verified = 0;
    for (const f of images) {
      const out = join(work, 'restored.img');
      await warmDir(store);
      const r = await runChecked(process.execPath, [cli, 'restore', '--store', store, f.id, '-o', out], opts);
      rSeconds += r.seconds;
      rRss = Math.max(rRss, r.peakRssBytes ?? 0);
      if (await sameBytes(f.path, out)) verified++;
      else log(`  restored ${f.vm}/${f.snap} DIFFERS from the original`);
      await rm(out, { force: true });
    }
    const restore = { bytes: bytesOf(images), seconds: rSeconds, mbPerSec: bytesOf(images) / MB / rSeconds, peakRssBytes: rRss, verified };
    for (const f of images) delete f.id;
    if (!args.keep) await rm(store, { recursive: true, force: true }); // the next run starts afresh
    return { hash, ingestFirst, ingestLater, restore, diskBytes: disk.bytes };
  }

  const peakRss = Math.max(ingestFirst.peakRssBytes, ingestLater.peakRssBytes);
  const result = {
    date: new Date().toISOString(),
    command: `node bench/engine.mjs${process.argv.slice(2).length ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memBytes: totalmem(), node: process.version, rss: rssMethod() },
    workload: w.params,
    logicalBytes: ideal.logicalBytes,
    distinctChunks: ideal.distinctPages,
    zeroShare: ideal.zeroPages / ideal.pages,
    lz4ShareOfDistinct: ideal.dedupLz4Bytes / ideal.dedupBytes,
    hash,
    ingestFirst,
    ingestConsecutive: ingestLater,
    restore,
    ratios: {
      firstVsHash: ingestFirst.mbPerSec / hash.mbPerSec,
      consecutiveVsHash: ingestLater.mbPerSec / hash.mbPerSec,
      restoreVsHash: restore.mbPerSec / hash.mbPerSec,
    },
    space: {
      storeBytes: disk.bytes,
      idealDedup: ideal.dedupBytes,
      idealDedupLz4: ideal.dedupLz4Bytes,
      vsDedupLz4: disk.bytes / ideal.dedupLz4Bytes,
    },
    peakRssBytes: peakRss,
    ramPerChunkBytes: peakRss / ideal.distinctPages,
    repeat,
    runs: runs.map((x) => ({
      hashMbPerSec: x.hash.mbPerSec,
      firstMbPerSec: x.ingestFirst.mbPerSec,
      consecutiveMbPerSec: x.ingestLater.mbPerSec,
      restoreMbPerSec: x.restore.mbPerSec,
      ratios: {
        first: x.ingestFirst.mbPerSec / x.hash.mbPerSec,
        consecutive: x.ingestLater.mbPerSec / x.hash.mbPerSec,
        restore: x.restore.mbPerSec / x.hash.mbPerSec,
      },
      storeBytes: x.diskBytes,
    })),
  };
  if (args.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else process.stdout.write(render(result));
} finally {
  if (args.keep) log(`kept ${work}`);
  else await rm(work, { recursive: true, force: true });
}

function render(r) {
  const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  const x = (v) => `${v.toFixed(2)}x`;
  const ok = (v, target, less = false) => ((less ? v <= target : v >= target) ? 'met' : 'NOT met');
  const rows = [
    ['single-thread BLAKE3 (baseline)', r.hash.mbPerSec.toFixed(0), '1.00x', '', ''],
    ['put, first snapshots', r.ingestFirst.mbPerSec.toFixed(0), x(r.ratios.firstVsHash), '>= 0.5x', ok(r.ratios.firstVsHash, 0.5)],
    [
      'put, consecutive snapshots',
      r.ingestConsecutive.mbPerSec.toFixed(0),
      x(r.ratios.consecutiveVsHash),
      '>= 1.5x',
      ok(r.ratios.consecutiveVsHash, 1.5),
    ],
    ['restore (verified)', r.restore.mbPerSec.toFixed(0), x(r.ratios.restoreVsHash), '>= 0.8x', ok(r.ratios.restoreVsHash, 0.8)],
  ];
  return [
    `## vnstore engine benchmark, ${r.date.slice(0, 10)}`,
    '',
    `Command: \`${r.command}\` on ${r.machine.cpus} x ${r.machine.cpuModel}, Node ${r.machine.node}.`,
    `Data: ${r.workload.vms} VMs (${r.workload.memMiB.join(', ')} MiB) x ${r.workload.snapshots} snapshots = ${mib(r.logicalBytes)}; ` +
      `${(100 * r.zeroShare).toFixed(1)}% zero pages, ${r.distinctChunks.toLocaleString('en-US')} distinct chunks, ` +
      `per-page LZ4 ${(100 * r.lz4ShareOfDistinct).toFixed(1)}% of raw (${(1 / r.lz4ShareOfDistinct).toFixed(2)}x).`,
    '',
    '| measure | MB/s | ÷ BLAKE3 | target | |',
    '| --- | ---: | ---: | ---: | --- |',
    ...rows.map((row) => `| ${row.join(' | ')} |`),
    '',
    `| space | bytes | |`,
    '| --- | ---: | --- |',
    `| ideal (b): page dedup + per-page LZ4 | ${mib(r.space.idealDedupLz4)} | |`,
    `| vnstore store on disk | ${mib(r.space.storeBytes)} | ${r.space.vsDedupLz4.toFixed(3)}x of (b), target <= 1.05: ${ok(r.space.vsDedupLz4, 1.05, true)} |`,
    '',
    `Peak RSS of any put: ${mib(r.peakRssBytes)} (${r.machine.rss}); RAM per stored chunk: ${r.ramPerChunkBytes.toFixed(0)} bytes. ` +
      `Restore peak RSS: ${mib(r.restore.peakRssBytes)}. Restored images verified: ${r.restore.verified}/${r.workload.vms * r.workload.snapshots}` +
      `${r.repeat > 1 ? ' in every run' : ''}.`,
    ...(r.repeat > 1
      ? [
          '',
          `MB/s and ratios above: medians of ${r.repeat} runs (a fresh store each). Each run:`,
          '',
          '| run | baseline MB/s | first | consecutive | restore |',
          '| ---: | ---: | ---: | ---: | ---: |',
          ...r.runs.map(
            (run, i) =>
              `| ${i + 1} | ${run.hashMbPerSec.toFixed(0)} | ${run.firstMbPerSec.toFixed(0)}, ${x(run.ratios.first)} | ${run.consecutiveMbPerSec.toFixed(0)}, ${x(run.ratios.consecutive)} | ${run.restoreMbPerSec.toFixed(0)}, ${x(run.ratios.restore)} |`,
          ),
        ]
      : []),
    '',
  ].join('\n');
}
