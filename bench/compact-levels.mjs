#!/usr/bin/env node
/**
 * Which zstd level should `vnstore compact` use by default (issue 16: store bytes ≤ 1.03 × bound (d)
 * counting every file, restore after compact ≥ 80% of the LZ4 store's)? For each level, on one LZ4
 * store of real images:
 *
 *   node bench/compact-levels.mjs --images DIR [--snaps 0,1] [--levels 3,4,5,6,7,8,9] [--rounds 1] [--format 3] [--work DIR] [--json FILE]
 *
 * DIR holds one folder per VM, one raw image per snapshot. The images of the chosen snapshots are put
 * into one LZ4 store (`init --format F`, snapshot-major, as `vnstore bench` does); then per level a
 * copy of it (`cp -a`, so every level starts from the same bytes) is compacted (`compact --min-age 0
 * --level N`, under GNU time), sized (all files, and `stats --json`), and every image is restored from
 * it and from the LZ4 store, alternating which goes first, and compared byte for byte, `--rounds`
 * times. Restore figures are the median over rounds per image, summed over the images; each level's
 * ratio is against the LZ4 restores of the same level's turn, so a load change moves both sides. On
 * format 3 each compacted copy's TOCs are read too (bench/toc-floor.mjs: chunks, digest bytes,
 * stored bytes per chunk). The copy is deleted before the next level.
 */
import { cpSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { timedCli } from './dist-workload.mjs';
import { CLI, imageBenchArgs, imageFiles, loadavg, log, median, workDir } from './image-bench.mjs';
import { tocFloor } from './toc-floor.mjs';

const levelList = (v) => v.levels.split(',').map(Number);
const { values, rounds } = imageBenchArgs(
  'compact-levels.mjs',
  '[--snaps 0,1] [--levels 3,...] [--rounds 1] [--format 3] [--work DIR] [--json FILE]',
  {
    options: {
      snaps: { type: 'string' },
      levels: { type: 'string', default: '3,4,5,6,7,8,9' },
      format: { type: 'string', default: '3' },
    },
    valid: (v) => levelList(v).every((l) => Number.isInteger(l) && l >= 1 && l <= 19),
  },
);
const levels = levelList(values);
const { readImageDir, sameBytes, dirSize } = await imageFiles();
const { work, timeFile } = workDir(values.work, 'compact-levels-');
const vn = (...args) => timedCli(CLI, timeFile, args);

const wanted = values.snaps === undefined ? undefined : new Set(values.snaps.split(',').map(Number));
const images = (await readImageDir(values.images)).filter((i) => wanted === undefined || wanted.has(i.snap));
// Snapshot-major: every VM's first snapshot, then every VM's second, as `vnstore bench` stores them.
images.sort((a, b) => a.snap - b.snap || a.vm.localeCompare(b.vm));
const sizes = async (dir) => ({
  dirBytes: (await dirSize(dir)).bytes,
  ...JSON.parse(vn('stats', '--store', dir, '--json').stdout).summary,
});

const result = {
  date: new Date().toISOString(),
  cpus: cpus().length,
  images: values.images,
  rounds,
  load: { start: loadavg() },
  levels: [],
};
const lz4 = path.join(work, 'lz4');
const out = path.join(work, 'out.img');
try {
  log(`putting ${images.length} images into an LZ4 store of format ${values.format}`);
  vn('init', '--store', lz4, '--format', values.format);
  const ids = new Map();
  let putCpu = 0;
  for (const img of images) {
    const run = vn('put', '--store', lz4, '--vm', img.vm, '--json', img.path);
    ids.set(img, JSON.parse(run.stdout).id);
    putCpu += run.cpu;
  }
  result.lz4 = { putCpuSeconds: putCpu, ...(await sizes(lz4)) };
  for (const [k, level] of levels.entries()) {
    const dir = path.join(work, `level-${level}`);
    cpSync(lz4, dir, { recursive: true, preserveTimestamps: true });
    log(`level ${level}: compacting (load ${loadavg()})`);
    const c = vn('compact', '--store', dir, '--min-age', '0', '--level', String(level), '--json');
    // Per image and store, the median over rounds; the sum over images is the figure.
    const runs = { lz4: images.map(() => []), compacted: images.map(() => []) };
    for (let round = 0; round < rounds; round++) {
      for (const [i, img] of images.entries()) {
        const order = (i + k + round) % 2 === 0 ? ['lz4', 'compacted'] : ['compacted', 'lz4'];
        for (const which of order) {
          const run = vn('restore', '--store', which === 'lz4' ? lz4 : dir, ids.get(img), '-o', out);
          if (!(await sameBytes(img.path, out))) throw new Error(`level ${level}, ${which}: ${img.vm}/${img.snap} restored differently`);
          rmSync(out);
          runs[which][i].push(run);
        }
      }
    }
    const summed = (perImage) => ({
      wall: perImage.reduce((s, xs) => s + median(xs.map((x) => x.wall)), 0),
      cpu: perImage.reduce((s, xs) => s + median(xs.map((x) => x.cpu)), 0),
    });
    const restore = { lz4: summed(runs.lz4), compacted: summed(runs.compacted) };
    const r = {
      level,
      compact: { wall: c.wall, cpu: c.cpu, peakRssBytes: c.peakRssBytes },
      restore,
      load: loadavg(),
      ...(await sizes(dir)),
    };
    if (values.format === '3') r.toc = await tocFloor(dir);
    result.levels.push(r);
    log(
      `level ${level}: ${r.dirBytes} B all files, payload ${r.storedBytes}, compact ${c.wall.toFixed(1)} s (${c.cpu.toFixed(1)} CPU s), ` +
        `restore CPU ${restore.compacted.cpu.toFixed(2)} s against LZ4 ${restore.lz4.cpu.toFixed(2)} s`,
    );
    rmSync(dir, { recursive: true, force: true });
  }
  result.load.end = loadavg();
} finally {
  rmSync(work, { recursive: true, force: true });
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const lines = [
  `${result.cpus} cores; load average ${result.load.start} → ${result.load.end}; ${images.length} images; LZ4 store ${result.lz4.dirBytes} B (all files)`,
  '',
  '| level | all files | payload | not payload | compact wall (CPU) s | restore all, compacted ÷ LZ4 speed, wall / CPU | restore CPU s, compacted / LZ4 | load |',
  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ...result.levels.map(
    (r) =>
      `| ${r.level} | ${r.dirBytes} | ${r.storedBytes} | ${r.dirBytes - r.storedBytes} | ${r.compact.wall.toFixed(1)} (${r.compact.cpu.toFixed(1)}) | ` +
      `${pct(r.restore.lz4.wall / r.restore.compacted.wall)} / ${pct(r.restore.lz4.cpu / r.restore.compacted.cpu)} | ` +
      `${r.restore.compacted.cpu.toFixed(2)} / ${r.restore.lz4.cpu.toFixed(2)} | ${r.load} |`,
  ),
];
process.stdout.write(lines.join('\n') + '\n');
if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2) + '\n');
