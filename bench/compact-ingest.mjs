#!/usr/bin/env node
/**
 * Ingest and restore before and after `vnstore compact`, in one run (issue 16: "ingest speed
 * unchanged (same run, before and after); restore ≥ 80% of the LZ4 store's", per VM).
 *
 *   node bench/compact-ingest.mjs --images DIR [--rounds 3] [--work DIR] [--keep] [--json FILE] [--cli-b PATH] [--formats 1,3]
 *
 * DIR holds one folder per VM, one raw image per snapshot (bench/qemu-guest-memory.sh --epochs 3).
 * Every snapshot but each VM's last is stored (snapshot-major, as `vnstore bench` does) into an LZ4
 * store; the store is copied and the copy compacted (`compact --min-age 0`). Then, for each round,
 * rotating which store goes first:
 *   - restore: each VM's stored snapshots from both stores (`restore -o`), compared byte for byte;
 *   - ingest: fresh copies of both stores take each VM's last image (its next snapshot; `put`,
 *     parent auto) and a clone (the first image as the first snapshot of a new VM: every page is
 *     already stored, the dedup path where compacted pages sit in containers).
 * With --cli-b, the compacted store is also restored and ingested into by another build (another
 * commit's dist/cli/bin.cjs): the same data, before and after a code change, in the same run.
 * Figures: the median over rounds of each command's wall time (Node start-up included, as `vnstore
 * bench` reports) and of its CPU time (user + system, GNU time): on a shared machine the CPU time
 * says what a command costs when wall times mostly say how busy the machine was.
 * The stores are of format 3 (what init creates) unless --formats says otherwise (--formats 1 with a
 * --cli-b build older than format 3). --formats 1,3 does all of this for each store format (`init --format`) in the same run: the
 * initial puts alternate between the formats image by image, and every table gains the format-3
 * store's speed against format 1's (format 1 becomes 2 when compact writes containers).
 */
import { cpSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { timedCli } from './dist-workload.mjs';
import { CLI, imageBenchArgs, imageFiles, loadavg, log, median, workDir } from './image-bench.mjs';

const formatList = (v) => v.formats.split(',').map(Number);
const { values, rounds } = imageBenchArgs(
  'compact-ingest.mjs',
  '[--rounds N] [--work DIR] [--keep] [--json FILE] [--cli-b PATH | --formats 1,3]',
  {
    rounds: '3',
    options: {
      keep: { type: 'boolean', default: false },
      'cli-b': { type: 'string' },
      formats: { type: 'string', default: '3' },
    },
    valid: (v) => formatList(v).every((f) => f === 1 || f === 3) && !(v['cli-b'] && formatList(v).length > 1),
  },
);
const formats = formatList(values);
const { readImageDir, sameBytes, dirSize } = await imageFiles();
const CLI_B = values['cli-b'] ? path.resolve(values['cli-b']) : undefined;

const mbps = (bytes, s) => bytes / 1e6 / s;
const { work, timeFile } = workDir(values.work, 'compact-ingest-');

/** Runs one vnstore command under GNU time: stdout, wall and CPU seconds. */
const vn = (cli, ...args) => timedCli(cli, timeFile, args);

const images = await readImageDir(values.images);
const vms = [...new Set(images.map((i) => i.vm))];
const lastSnap = new Map(vms.map((vm) => [vm, Math.max(...images.filter((i) => i.vm === vm).map((i) => i.snap))]));
const stored = images.filter((i) => i.snap < lastSnap.get(i.vm));
const next = images.filter((i) => i.snap === lastSnap.get(i.vm));
if (stored.length === 0 || next.length === 0) throw new Error('each VM needs at least two images (stored snapshots and a next one)');

const result = { date: new Date().toISOString(), cpus: cpus().length, images: values.images, rounds, load: { start: loadavg() } };
// Per format: the LZ4 store as ingested and its compacted copy. Names carry the format only when
// more than one is measured, so a one-format run reads as before.
const suffix = (f) => (formats.length > 1 ? `-f${f}` : '');
const stores = formats.map((f) => ({
  format: f,
  lz4: path.join(work, `lz4${suffix(f)}`),
  compact: path.join(work, `compact${suffix(f)}`),
}));
// Stores by name, and the build that drives each.
const variants = [
  ...stores.flatMap((s) => [
    { name: `lz4${suffix(s.format)}`, dir: s.lz4, cli: CLI, format: s.format },
    { name: `compact${suffix(s.format)}`, dir: s.compact, cli: CLI, format: s.format },
  ]),
  ...(CLI_B ? [{ name: 'compact-b', dir: stores[0].compact, cli: CLI_B, format: stores[0].format }] : []),
];
/** The variants in round-robin order: round r of item k starts at variant (r + k) mod n. */
const rotated = (r, k) => variants.map((_, i) => variants[(i + r + k) % variants.length]);

try {
  log(`storing ${stored.length} images into the LZ4 store(s) of format ${formats.join(', ')}`);
  for (const s of stores) vn(CLI, 'init', '--store', s.lz4, '--format', String(s.format));
  const ids = new Map(stores.map((s) => [s.format, new Map()]));
  const initial = new Map(stores.map((s) => [s.format, { seconds: 0, cpuSeconds: 0 }]));
  for (const [k, img] of stored.entries()) {
    for (const s of stores.map((_, i) => stores[(i + k) % stores.length])) {
      const run = vn(CLI, 'put', '--store', s.lz4, '--vm', img.vm, '--json', img.path);
      ids.get(s.format).set(img, JSON.parse(run.stdout).id);
      initial.get(s.format).seconds += run.wall;
      initial.get(s.format).cpuSeconds += run.cpu;
    }
  }
  const storedBytes = stored.reduce((s, i) => s + i.bytes, 0);
  result.initialIngest = Object.fromEntries(
    stores.map((s) => {
      const t = initial.get(s.format);
      return [`format${s.format}`, { images: stored.length, bytes: storedBytes, ...t, mbPerSec: mbps(storedBytes, t.seconds) }];
    }),
  );
  result.compact = {};
  result.stats = {};
  const stats = async (dir) => {
    const s = JSON.parse(vn(CLI, 'stats', '--store', dir, '--json').stdout).summary;
    return { dirBytes: (await dirSize(dir)).bytes, ...s };
  };
  for (const s of stores) {
    cpSync(s.lz4, s.compact, { recursive: true });
    log(`compacting the copy (format ${s.format})`);
    const compact = vn(CLI, 'compact', '--store', s.compact, '--min-age', '0', '--json');
    result.compact[`format${s.format}`] = { seconds: compact.wall, cpuSeconds: compact.cpu };
    result.stats[`lz4${suffix(s.format)}`] = await stats(s.lz4);
    result.stats[`compact${suffix(s.format)}`] = await stats(s.compact);
  }
  const idOf = (v, img) => ids.get(v.format).get(img);

  const out = path.join(work, 'out.img');
  const restoreRuns = new Map(stored.map((img) => [img, Object.fromEntries(variants.map((v) => [v.name, []]))]));
  const putRuns = [];
  const puts = [
    ...next.map((img) => ({ img, vm: img.vm, what: 'next snapshot' })),
    { img: stored[0], vm: 'clone', what: `clone of ${stored[0].vm}/${stored[0].snap}` },
  ];
  for (let r = 0; r < rounds; r++) {
    log(`round ${r + 1}/${rounds}: restoring every stored snapshot (load ${loadavg()})`);
    for (const [k, img] of stored.entries()) {
      for (const v of rotated(r, k)) {
        const run = vn(v.cli, 'restore', '--store', v.dir, idOf(v, img), '-o', out);
        if (!(await sameBytes(img.path, out))) throw new Error(`${v.name}: restored ${img.vm}/${img.snap} differs from the original`);
        rmSync(out);
        restoreRuns.get(img)[v.name].push(run);
      }
    }
    log(`round ${r + 1}/${rounds}: ingesting into fresh copies of the stores`);
    const copies = variants.map((v) => {
      const dir = path.join(work, `put-${v.name}`);
      rmSync(dir, { recursive: true, force: true });
      cpSync(v.dir, dir, { recursive: true });
      return { ...v, dir };
    });
    for (const [k, p] of puts.entries()) {
      for (const v of copies.map((_, i) => copies[(i + r + k) % copies.length])) {
        const run = vn(v.cli, 'put', '--store', v.dir, '--vm', p.vm, '--json', p.img.path);
        putRuns.push({ round: r, put: k, variant: v.name, ...run, out: JSON.parse(run.stdout) });
      }
    }
    for (const c of copies) rmSync(c.dir, { recursive: true, force: true });
  }
  result.load.end = loadavg();

  const summary = (runs, bytes) => ({
    wallSeconds: median(runs.map((x) => x.wall)),
    cpuSeconds: median(runs.map((x) => x.cpu)),
    mbPerSec: mbps(bytes, median(runs.map((x) => x.wall))),
    walls: runs.map((x) => x.wall),
  });
  result.restore = stored.map((img) => ({
    vm: img.vm,
    snap: img.snap,
    bytes: img.bytes,
    ...Object.fromEntries(variants.map((v) => [v.name, summary(restoreRuns.get(img)[v.name], img.bytes)])),
  }));
  result.ingest = puts.map((p, k) => ({
    vm: p.vm,
    what: p.what,
    bytes: p.img.bytes,
    ...Object.fromEntries(
      variants.map((v) => {
        const runs = putRuns.filter((x) => x.put === k && x.variant === v.name);
        return [v.name, { ...summary(runs, p.img.bytes), newChunks: runs[0].out.newChunks, addedBytes: runs[0].out.addedBytes }];
      }),
    ),
  }));
} finally {
  if (values.keep) log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const names = variants.map((v) => v.name);
// Ratio columns: speed of a over b (b's seconds over a's), by wall and by CPU time.
const ratios = [
  ...stores.map((s) => ({
    label: `compact${suffix(s.format)} ÷ lz4${suffix(s.format)}`,
    a: `compact${suffix(s.format)}`,
    b: `lz4${suffix(s.format)}`,
  })),
  ...(formats.length > 1 ? ['lz4', 'compact'].map((kind) => ({ label: `${kind}-f3 ÷ ${kind}-f1`, a: `${kind}-f3`, b: `${kind}-f1` })) : []),
];
const head = (what) => [
  `| ${what} | ${names.map((n) => `${n} MB/s (CPU s)`).join(' | ')} | ${ratios.map((q) => `${q.label}, wall | ${q.label}, CPU`).join(' | ')} |` +
    (CLI_B ? ' compact-b ÷ lz4, wall |' : ''),
  `| --- | ${names.map(() => '---:').join(' | ')} | ${ratios.map(() => '---: | ---:').join(' | ')} |${CLI_B ? ' ---: |' : ''}`,
];
const row = (label, r) =>
  `| ${label} | ${names.map((n) => `${r[n].mbPerSec.toFixed(0)} (${r[n].cpuSeconds.toFixed(2)})`).join(' | ')} | ` +
  `${ratios.map((q) => `${pct(r[q.b].wallSeconds / r[q.a].wallSeconds)} | ${pct(r[q.b].cpuSeconds / r[q.a].cpuSeconds)}`).join(' | ')} |` +
  (CLI_B ? ` ${pct(r.lz4.wallSeconds / r['compact-b'].wallSeconds)} |` : '');
const total = (rows) => {
  const t = { bytes: rows.reduce((s, r) => s + r.bytes, 0) };
  for (const n of names) {
    const wall = rows.reduce((s, r) => s + r[n].wallSeconds, 0);
    t[n] = { wallSeconds: wall, cpuSeconds: rows.reduce((s, r) => s + r[n].cpuSeconds, 0), mbPerSec: mbps(t.bytes, wall) };
  }
  return t;
};
const lines = [
  `${result.cpus} cores; load average ${result.load.start} → ${result.load.end}; median of ${rounds} round(s) per command` +
    (CLI_B ? `; compact-b = the compacted store driven by ${CLI_B}` : ''),
  '',
  ...head('restore'),
  ...result.restore.map((r) => row(`${r.vm}/${r.snap}`, r)),
  row('all', total(result.restore)),
  '',
  ...head('put into the store'),
  ...result.ingest.map((r) => row(`${r.vm} (${r.what}; ${r[names[0]].newChunks} new chunks)`, r)),
  row('all', total(result.ingest)),
];
process.stdout.write(lines.join('\n') + '\n');
if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2) + '\n');
