#!/usr/bin/env node
// How long a durable write takes on this disk: 4 KiB written and fsynced, then renamed and its
// directory fsynced (the write, fsync, publish of a manifest), 40 times; medians in ms.
//   node bench/fsync-latency.mjs DIR
import { openSync, writeSync, fsyncSync, closeSync, renameSync, mkdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
const dir = process.argv[2];
if (!dir) {
  console.error('usage: node bench/fsync-latency.mjs DIR');
  process.exit(2);
}
mkdirSync(dir, { recursive: true });
const buf = Buffer.alloc(4096, 7);
const t = [];
for (let i = 0; i < 40; i++) {
  const t0 = performance.now();
  const fd = openSync(`${dir}/f${i}.tmp`, 'w');
  writeSync(fd, buf);
  fsyncSync(fd);
  closeSync(fd);
  const t1 = performance.now();
  renameSync(`${dir}/f${i}.tmp`, `${dir}/f${i}`);
  const d = openSync(dir, 'r');
  fsyncSync(d);
  closeSync(d);
  const t2 = performance.now();
  t.push([t1 - t0, t2 - t1]);
}
const med = (a) => a.sort((x, y) => x - y)[a.length >> 1];
console.log(JSON.stringify({ fileFsyncMs: med(t.map((x) => x[0])).toFixed(2), dirFsyncMs: med(t.map((x) => x[1])).toFixed(2) }));
