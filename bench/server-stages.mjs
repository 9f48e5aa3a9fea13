#!/usr/bin/env node
// Each stage of a snapshot through `vnstore serve`, timed alone over the same bytes on this machine
// (the image bench/server.mjs uses), to show what the ratios of issue 12 can reach on 2 cores:
// single-thread BLAKE3 (the baseline), the batched native page hasher (agent hashing, server check,
// restoring client's check), the zero scan, LZ4 compress and decode of the non-zero pages, a memcpy,
// loopback TCP of 1 MiB writes to a child process that drops them (reused or fresh read buffers), and writing the compressed bytes
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
const out = {
  date: new Date().toISOString(),
  imageMiB: Number(args.mib),
  loadavg: (await import('node:os')).loadavg().map((x) => +x.toFixed(2)),
};

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
for (let p = 0; p < pages; p += BATCH)
  hashPages(
    image.subarray(p * PAGE, (p + BATCH) * PAGE),
    Uint32Array.from({ length: Math.min(BATCH, pages - p) }, (_, k) => k),
    digests.subarray(p * 32),
  );
out.nativeHashMBps = rate(image.length, t);

const offsets = Uint32Array.from(nonZero, (p) => p * PAGE);
// Touched first, as the store's reused slabs are: untouched output memory made LZ4 look 7x slower
// than it is (page faults, not compression).
const dst = new Uint8Array(nzBytes).fill(1);
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

// Loopback TCP: 1 MiB writes of the image to a child that counts and drops what it reads, until it
// has read it all; the child reads into one reused buffer (net's onread, as the server and agent
// do since issue 12) or with Node's default reads (a fresh buffer per read).
async function loopback(reused) {
  const listener = net.createServer();
  await new Promise((res) => listener.listen(0, '127.0.0.1', res));
  const accepted = new Promise((res) => listener.once('connection', res));
  const reader = reused
    ? `let n=0;const c=require('net').connect({port:${listener.address().port},host:'127.0.0.1',onread:{buffer:Buffer.alloc(1<<20),callback:(k)=>{n+=k;if(n>=${image.length})c.end('k');return true}}})`
    : `let n=0;const c=require('net').connect(${listener.address().port},'127.0.0.1');c.on('data',(d)=>{n+=d.length;if(n>=${image.length})c.end('k')})`;
  const child = spawn(process.execPath, ['-e', reader], { stdio: 'inherit' });
  const sock = await accepted;
  listener.close();
  const t0 = performance.now();
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
  const r = rate(image.length, t0);
  sock.destroy();
  child.kill();
  return r;
}
out.loopbackTcpMBps = await loopback(true);
out.loopbackTcpDefaultReadsMBps = await loopback(false);
out.loadavgAfter = (await import('node:os')).loadavg().map((x) => +x.toFixed(2));
if (args.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
else
  for (const [k, v] of Object.entries(out))
    process.stdout.write(`${k.padEnd(20)} ${typeof v === 'number' ? v.toFixed(2) : JSON.stringify(v)}\n`);
