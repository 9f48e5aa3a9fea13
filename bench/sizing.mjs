#!/usr/bin/env node
// Sizing (docs/OPERATIONS.md): disk and RAM per stored chunk, measured. For each chunk count N it
// makes a store holding one snapshot of N distinct random (incompressible) pages, then measures each
// part of the store on disk and the memory a process gains by opening it (the chunk table is the part
// that grows with the store). Two sizes give a slope that excludes fixed costs.
//   node bench/sizing.mjs [--chunks 32768,262144] [--work-dir DIR]
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, writeSync, readdirSync, statSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist/cli/bin.cjs');
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : def;
};
const counts = arg('--chunks', '32768,262144').split(',').map(Number);
const work = mkdtempSync(path.join(arg('--work-dir', os.tmpdir()), 'vnstore-sizing-'));
const PAGE = 4096;

const bytesIn = (p) => {
  const st = statSync(p, { throwIfNoEntry: false });
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  return readdirSync(p).reduce((s, n) => s + bytesIn(path.join(p, n)), 0);
};

function vnstore(args) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`vnstore ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

// Memory gained by opening the store (chunk table loaded, no workers), in a fresh process.
const openProbe = `
const { Store } = await import(${JSON.stringify(path.join(root, 'dist/store/store.js'))});
globalThis.gc?.();
const m0 = process.memoryUsage();
const s = await Store.open(process.argv[1], { workers: 0 });
globalThis.gc?.();
const m1 = process.memoryUsage();
console.log(JSON.stringify({ rss: m1.rss - m0.rss, buffers: (m1.arrayBuffers - m0.arrayBuffers), table: s.table.size }));
await s.close();`;

const rows = [];
try {
  for (const n of counts) {
    const store = path.join(work, `store-${n}`);
    const image = path.join(work, `image-${n}.img`);
    const fd = openSync(image, 'w');
    for (let left = n; left > 0; left -= 1024) writeSync(fd, randomBytes(Math.min(left, 1024) * PAGE));
    closeSync(fd);
    vnstore(['init', '--store', store]);
    const put = JSON.parse(vnstore(['put', '--store', store, '--vm', 'sizing', '--json', image]));
    rmSync(image);
    const stats = JSON.parse(vnstore(['stats', '--store', store, '--json'])).summary;
    const probe = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', openProbe, store], { encoding: 'utf8' });
    if (probe.status !== 0) throw new Error(probe.stderr);
    const mem = JSON.parse(probe.stdout);
    rows.push({
      chunks: stats.distinctChunks,
      seconds: put.seconds,
      packs: bytesIn(path.join(store, 'packs')),
      payload: stats.storedBytes,
      index: bytesIn(path.join(store, 'db')),
      table: bytesIn(path.join(store, 'chunk-table.bin')),
      manifests: bytesIn(path.join(store, 'manifests')),
      openRss: mem.rss,
      openBuffers: mem.buffers,
    });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const per = (v, c) => (v / c).toFixed(1);
console.log(
  '| chunks | put s | pack overhead B/chunk | LevelDB B/chunk | chunk-table.bin B/chunk | manifest B/page | RAM on open: buffers B/chunk | RSS B/chunk |',
);
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.chunks} | ${r.seconds.toFixed(2)} | ${per(r.packs - r.payload, r.chunks)} | ${per(r.index, r.chunks)} | ${per(r.table, r.chunks)} | ${per(r.manifests, r.chunks)} | ${per(r.openBuffers, r.chunks)} | ${per(r.openRss, r.chunks)} |`,
  );
}
if (rows.length >= 2) {
  const [a, b] = [rows[0], rows.at(-1)];
  const slope = (k) => ((b[k] - a[k]) / (b.chunks - a.chunks)).toFixed(1);
  console.log(
    `\nSlope from ${a.chunks} to ${b.chunks} chunks (fixed costs cancel), bytes per added chunk: LevelDB ${slope('index')}, chunk-table.bin ${slope('table')}, pack overhead ${((b.packs - b.payload - (a.packs - a.payload)) / (b.chunks - a.chunks)).toFixed(1)}, RAM buffers on open ${slope('openBuffers')}, RSS on open ${slope('openRss')}.`,
  );
}
