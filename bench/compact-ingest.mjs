#!/usr/bin/env node
/**
 * Ingest and restore before and after `vnstore compact`, in one run (issue 16: "ingest speed
 * unchanged (same run, before and after); restore ≥ 80% of the LZ4 store's", per VM).
 *
 *   node bench/compact-ingest.mjs --images DIR [--work DIR] [--keep] [--json FILE] [--cli-b PATH]
 *
 * DIR holds one folder per VM, one raw image per snapshot (bench/qemu-guest-memory.sh --epochs 3).
 * Every snapshot but each VM's last is stored (snapshot-major, as `vnstore bench` does) into an LZ4
 * store; the store is copied and the copy compacted (`compact --min-age 0`). Then, alternating
 * which store goes first:
 *   - restore: each VM's stored snapshots from both stores (`restore -o`), compared byte for byte;
 *   - ingest: each VM's last image (its next snapshot) into both stores (`put`, parent auto);
 *   - a clone: the first VM's first image as the first snapshot of a new VM, into both stores
 *     (every page already stored: the dedup path where compacted pages sit in containers).
 * With --cli-b, a second copy of the compacted store takes the same puts through another build
 * (another commit's dist/cli/bin.cjs): the same data, before and after a code change.
 * Times are wall times of whole commands (Node start-up included), as `vnstore bench` reports.
 */
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter } from './dist-workload.mjs';

const { values } = parseArgs({
  options: {
    images: { type: 'string' },
    work: { type: 'string', default: tmpdir() },
    keep: { type: 'boolean', default: false },
    json: { type: 'string' },
    'cli-b': { type: 'string' },
  },
});
if (!values.images) {
  process.stderr.write('usage: node bench/compact-ingest.mjs --images DIR [--work DIR] [--keep] [--json FILE] [--cli-b PATH]\n');
  process.exit(2);
}
const load = distImporter(DEFAULT_DIST);
const { runChecked } = await load('bench/proc.js');
const { readImageDir, sameBytes, dirSize } = await load('bench/files.js');
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli', 'bin.cjs');
const CLI_B = values['cli-b'] ? path.resolve(values['cli-b']) : undefined;

const log = (s) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const vn = (cli, ...args) => runChecked(process.execPath, [cli, ...args], { scratchDir: work });
const mbps = (bytes, s) => bytes / 1e6 / s;

const work = mkdtempSync(path.join(values.work, 'compact-ingest-'));
const images = await readImageDir(values.images);
const vms = [...new Set(images.map((i) => i.vm))];
const lastSnap = new Map(vms.map((vm) => [vm, Math.max(...images.filter((i) => i.vm === vm).map((i) => i.snap))]));
const stored = images.filter((i) => i.snap < lastSnap.get(i.vm));
const next = images.filter((i) => i.snap === lastSnap.get(i.vm));
if (stored.length === 0) throw new Error('each VM needs at least two images (stored snapshots and a next one)');

const result = { date: new Date().toISOString(), cpus: cpus().length, images: values.images, load: { start: loadavg() } };
const L = path.join(work, 'lz4');
const C = path.join(work, 'compact');
const B = path.join(work, 'compact-b');
try {
  log(`storing ${stored.length} images into the LZ4 store`);
  await vn(CLI, 'init', '--store', L);
  const ids = new Map();
  let ingestSeconds = 0;
  for (const img of stored) {
    const run = await vn(CLI, 'put', '--store', L, '--vm', img.vm, '--json', img.path);
    ids.set(img, JSON.parse(run.stdout).id);
    ingestSeconds += run.seconds;
  }
  const storedBytes = stored.reduce((s, i) => s + i.bytes, 0);
  result.initialIngest = { images: stored.length, bytes: storedBytes, seconds: ingestSeconds, mbPerSec: mbps(storedBytes, ingestSeconds) };
  cpSync(L, C, { recursive: true });
  log('compacting the copy');
  const compact = await vn(CLI, 'compact', '--store', C, '--min-age', '0', '--json');
  result.compact = { seconds: compact.seconds, peakRssBytes: compact.peakRssBytes };
  if (CLI_B) cpSync(C, B, { recursive: true });
  const stats = async (dir) => {
    const s = JSON.parse((await vn(CLI, 'stats', '--store', dir, '--json')).stdout).summary;
    return { dirBytes: (await dirSize(dir)).bytes, ...s };
  };
  result.stats = { lz4: await stats(L), compact: await stats(C) };

  log('restoring every stored snapshot from both stores');
  result.restore = [];
  const out = path.join(work, 'out.img');
  for (const [k, img] of stored.entries()) {
    const row = { vm: img.vm, snap: img.snap, bytes: img.bytes };
    for (const [name, dir] of k % 2 === 0
      ? [
          ['lz4', L],
          ['compact', C],
        ]
      : [
          ['compact', C],
          ['lz4', L],
        ]) {
      const run = await vn(CLI, 'restore', '--store', dir, ids.get(img), '-o', out);
      if (!(await sameBytes(img.path, out))) throw new Error(`${name}: restored ${img.vm}/${img.snap} differs from the original`);
      rmSync(out);
      row[name] = { seconds: run.seconds, mbPerSec: mbps(img.bytes, run.seconds) };
    }
    row.ratio = row.compact.mbPerSec / row.lz4.mbPerSec;
    log(
      `  ${img.vm}/${img.snap}: LZ4 ${row.lz4.mbPerSec.toFixed(0)} MB/s, compacted ${row.compact.mbPerSec.toFixed(0)} MB/s (${(100 * row.ratio).toFixed(1)}%)`,
    );
    result.restore.push(row);
  }

  log('ingesting each VM’s next snapshot, and a clone, into both stores');
  const puts = [
    ...next.map((img) => ({ img, vm: img.vm, what: 'next snapshot' })),
    { img: stored[0], vm: 'clone', what: `clone of ${stored[0].vm}/${stored[0].snap}` },
  ];
  const targets = [['lz4', L, CLI], ['compact', C, CLI], ...(CLI_B ? [['compact-b', B, CLI_B]] : [])];
  result.ingest = [];
  for (const [k, p] of puts.entries()) {
    const row = { vm: p.vm, what: p.what, bytes: p.img.bytes };
    const order = k % 2 === 0 ? targets : [...targets].reverse();
    for (const [name, dir, cli] of order) {
      const run = await vn(cli, 'put', '--store', dir, '--vm', p.vm, '--json', p.img.path);
      const j = JSON.parse(run.stdout);
      row[name] = {
        seconds: run.seconds,
        inProcessSeconds: j.seconds,
        mbPerSec: mbps(p.img.bytes, run.seconds),
        newChunks: j.newChunks,
        addedBytes: j.addedBytes,
      };
    }
    row.ratio = row.compact.mbPerSec / row.lz4.mbPerSec;
    log(
      `  ${p.vm} (${p.what}): LZ4 store ${row.lz4.mbPerSec.toFixed(0)} MB/s, compacted ${row.compact.mbPerSec.toFixed(0)} MB/s` +
        (row['compact-b'] ? `, compacted with --cli-b ${row['compact-b'].mbPerSec.toFixed(0)} MB/s` : '') +
        ` (${row.lz4.newChunks}/${row.compact.newChunks} new chunks)`,
    );
    result.ingest.push(row);
  }
  result.load.end = loadavg();
} finally {
  if (values.keep) log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}

const sum = (rows, key) => rows.reduce((s, r) => s + r[key].seconds, 0);
const bytes = (rows) => rows.reduce((s, r) => s + r.bytes, 0);
const lines = [];
const pct = (x) => `${(100 * x).toFixed(1)}%`;
lines.push(`load average: ${result.load.start} → ${result.load.end}; ${result.cpus} cores`);
lines.push('', '| restore | bytes | LZ4 store MB/s | compacted MB/s | compacted ÷ LZ4 |', '| --- | ---: | ---: | ---: | ---: |');
for (const r of result.restore)
  lines.push(`| ${r.vm}/${r.snap} | ${r.bytes} | ${r.lz4.mbPerSec.toFixed(0)} | ${r.compact.mbPerSec.toFixed(0)} | ${pct(r.ratio)} |`);
const rb = bytes(result.restore);
lines.push(
  `| all | ${rb} | ${mbps(rb, sum(result.restore, 'lz4')).toFixed(0)} | ${mbps(rb, sum(result.restore, 'compact')).toFixed(0)} | ${pct(sum(result.restore, 'lz4') / sum(result.restore, 'compact'))} |`,
);
const bCol = CLI_B ? ' compacted, --cli-b MB/s |' : '';
lines.push('', `| put | bytes | into LZ4 store MB/s | into compacted MB/s |${bCol} compacted ÷ LZ4 | new chunks (LZ4 / compacted) |`);
lines.push(`| --- | ---: | ---: | ---: |${CLI_B ? ' ---: |' : ''} ---: | ---: |`);
for (const r of result.ingest) {
  const b = CLI_B ? ` ${r['compact-b'].mbPerSec.toFixed(0)} |` : '';
  lines.push(
    `| ${r.vm} (${r.what}) | ${r.bytes} | ${r.lz4.mbPerSec.toFixed(0)} | ${r.compact.mbPerSec.toFixed(0)} |${b} ${pct(r.ratio)} | ${r.lz4.newChunks} / ${r.compact.newChunks} |`,
  );
}
process.stdout.write(lines.join('\n') + '\n');
if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2) + '\n');
