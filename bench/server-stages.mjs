#!/usr/bin/env node
// Each stage of a snapshot through `vnstore serve`, timed alone over the same bytes on this machine
// (the image bench/server.mjs uses), to show what the ratios of issue 12 can reach on 2 cores:
// single-thread BLAKE3 (the baseline), the batched native page hasher (agent hashing, server check,
// restoring client's check), the zero scan, LZ4 compress and decode of the non-zero pages, a memcpy,
// loopback TCP of 1 MiB frames to a child process that drops them, and writing the compressed bytes
// to a file with fdatasync (the pack write). Run `npm run build` first.
//   node bench/server-stages.mjs [--mib N] [--json]
import { spawn } from 'node:child_process';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { blake3 } from '@napi-rs/blake-hash';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { hashPages } = await import(join(root, 'dist', 'chunk', 'hash.js'));
const { getCodec } = await import(join(root, 'dist', 'chunk', 'codec.js'));
const { makeImage } = await import(join(root, 'bench', 'server-image.mjs'));
const { values: args } = parseArgs({ options: { mib: { type: 'string', default: '128' }, json: { type: 'boolean', default: false } } });
const PAGE = 4096;
const MB = 1e6;
const image = makeImage(Number(args.mib), 1);
const pages = image.length / PAGE;
const rate = (bytes, t0) => bytes / MB / ((performance.now() - t0) / 1000);
const out = { date: new Date().toISOString(), imageMiB: Number(args.mib), loadavg: (await import('node:os')).loadavg().map((x) => +x.toFixed(2)) };

let t = performance.now();
for (let o = 0; o < image.length; o += PAGE) blake3(image.subarray(o, o + PAGE));
out.blake3PerPageMBps = rate(image.length, t);

const codec = getCodec();
t = performance.now();
const zero = codec.zeroMask(image, pages);
out.zeroScanMBps = rate(image.length, t);
const nonZero = [];
for (let p = 0; p < pages; p++) if (!zero[p]) nonZero.push(p);
const nzBytes = nonZero.length * PAGE;
out.nonZeroFraction = nonZero.length / pages;

const digests = new Uint8Array(pages * 32);
const BATCH = 1024;
t = performance.now();
for (let p = 0; p < pages; p += BATCH) hashPages(image.subarray(p * PAGE, (p + BATCH) * PAGE), Uint32Array.from({ length: Math.min(BATCH, pages - p) }, (_, k) => k), digests.subarray(p * 32));
out.nativeHashMBps = rate(image.length, t);

const offsets = Uint32Array.from(nonZero, (p) => p * PAGE);
const dst = new Uint8Array(nzBytes);
codec.compressPages(image, offsets.subarray(0, 16), dst); // warm
t = performance.now();
const c = codec.compressPages(image, offsets, dst);
out.lz4CompressMBps = rate(nzBytes, t);
const stored = c.payload.length;
out.storedFraction = stored / nzBytes;

const po = new Uint32Array(nonZero.length);
for (let i = 1; i < po.length; i++) po[i] = po[i - 1] + c.lengths[i - 1];
const outBuf = new Uint8Array(nzBytes);
const slots = Uint32Array.from(nonZero, (_, i) => i);
const failed = new Uint8Array(nonZero.length);
codec.decodeChunks(c.payload, po, c.lengths, c.codecs, slots, outBuf, failed); // fault the output in
t = performance.now();
codec.decodeChunks(c.payload, po, c.lengths, c.codecs, slots, outBuf, failed);
out.lz4DecodeMBps = rate(nzBytes, t);

const copy = Buffer.alloc(image.length);
copy.set(image);
t = performance.now();
copy.set(image);
out.memcpyMBps = rate(image.length, t);

const dir = mkdtempSync(join(tmpdir(), 'vnstore-stages-'));
try {
  const fd = openSync(join(dir, 'pack'), 'w', 0o600);
  t = performance.now();
  for (let o = 0; o < stored; o += 4 << 20) writeSync(fd, c.payload, o, Math.min(4 << 20, stored - o));
  fdatasyncSync(fd);
  closeSync(fd);
  out.packWriteMBps = rate(stored, t);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// Loopback TCP: 1 MiB frames of the image to a child that drops them, until it has read them all.
const sink = spawn(process.execPath, ['-e', `const s=require('net').createServer(c=>{let n=0;c.on('data',d=>{n+=d.length;if(n>=${image.length})c.end('k')})}).listen(0,'127.0.0.1',()=>console.log(s.address().port))`], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise((res) => sink.stdout.once('data', (d) => res(Number(String(d).trim()))));
const sock = net.connect(port, '127.0.0.1');
await new Promise((res) => sock.once('connect', res));
t = performance.now();
await new Promise((res) => {
  sock.once('data', res);
  let o = 0;
  const pump = () => {
    while (o < image.length) {
      const ok = sock.write(image.subarray(o, o + (1 << 20)));
      o += 1 << 20;
      if (!ok) return void sock.once('drain', pump);
    }
  };
  pump();
});
out.loopbackTcpMBps = rate(image.length, t);
sock.destroy();
sink.kill();
out.loadavgAfter = (await import('node:os')).loadavg().map((x) => +x.toFixed(2));
if (args.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
else for (const [k, v] of Object.entries(out)) process.stdout.write(`${k.padEnd(20)} ${typeof v === 'number' ? v.toFixed(2) : JSON.stringify(v)}\n`);
