#!/usr/bin/env node
// Copying received page batches into the store's shared slabs, as Session.lendCopy does for each
// PAGES frame on the server: 1 MiB of pages at the offset they have in a PAGES frame (odd), into
// twelve 4 MiB SharedArrayBuffer slabs in turn, with TypedArray.set, with the same copy made
// equally aligned, and with copyBytes (src/util/shared-bytes.ts). Prints CPU ms per MIB MiB copied.
// Run `npm run build` first.  node bench/copy-bytes.mjs [MIB=256]
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { copyBytes } = await import(join(root, 'dist', 'util', 'copy-bytes.js'));
const MIB = Number(process.argv[2] ?? 256);
const N = 1 << 20;
const AT = 1 + 12 + 36 * 256; // a full PAGES frame: type byte, req, sid, count, 256 entries, then the pages
const frames = [0, 1, 2].map((k) => Buffer.alloc(AT + N, k + 1));
const slabs = Array.from({ length: 12 }, () => new Uint8Array(new SharedArrayBuffer(4 << 20)).fill(9));
const source = (i) => frames[i % 3].subarray(AT, AT + N);
const slab = (i) => slabs[(i >> 2) % 12];

function cpuMs(copy) {
  for (let i = 0; i < 48; i++) copy(i); // warm up
  const t = process.cpuUsage();
  for (let i = 0; i < MIB; i++) copy(i);
  const u = process.cpuUsage(t);
  return (u.user + u.system) / 1000;
}

const ways = {
  'TypedArray.set (unaligned, as before)': (i) => slab(i).set(source(i), (i & 3) * N),
  'TypedArray.set, equally aligned': (i) => {
    const s = source(i);
    new Uint8Array(slab(i).buffer, (i & 3) * (N - 8) + (s.byteOffset % 8), N).set(s);
  },
  copyBytes: (i) => copyBytes(slab(i), source(i), (i & 3) * N),
};
const out = {};
for (let round = 0; round < 3; round++) for (const [name, f] of Object.entries(ways)) (out[name] ??= []).push(+cpuMs(f).toFixed(1));
console.log(JSON.stringify({ mib: MIB, cpuMsPerRound: out }, null, 1));
