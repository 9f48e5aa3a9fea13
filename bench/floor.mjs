#!/usr/bin/env node
// The floor under a whole `vnstore put` of a raw image on this machine: what reading the image and
// hashing its non-zero pages costs with nothing else (no store, no index, no compression), on one
// thread and on N worker threads splitting the 4 MiB blocks. Run `npm run build` first.
//   node bench/floor.mjs IMAGE [--threads N] [--repeat R]
// Prints, per repeat, the wall time of the read+hash work (start-up excluded) and its split.
import { openSync, fstatSync, readSync, closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { hashPages, pageHasherStatus } = await import(join(root, 'dist', 'chunk', 'hash.js'));
const { getCodec } = await import(join(root, 'dist', 'chunk', 'codec.js'));
const BLOCK_PAGES = 1024;
const PAGE = 4096;

/** Reads blocks part, part+parts, … of the file and hashes their non-zero pages; returns timings in ms. */
function readAndHash(file, part, parts) {
  const fd = openSync(file, 'r');
  const size = fstatSync(fd).size;
  const buf = new Uint8Array(BLOCK_PAGES * PAGE);
  const out = new Uint8Array(BLOCK_PAGES * 32);
  const idx = new Uint32Array(BLOCK_PAGES);
  const codec = getCodec();
  let read = 0;
  let hash = 0;
  const t0 = performance.now();
  for (let b = part; b * buf.length < size; b += parts) {
    let t = performance.now();
    const n = readSync(fd, buf, 0, buf.length, b * buf.length);
    buf.fill(0, n);
    read += performance.now() - t;
    t = performance.now();
    const zero = codec.zeroMask(buf, BLOCK_PAGES);
    let k = 0;
    for (let i = 0; i < BLOCK_PAGES; i++) if (!zero[i]) idx[k++] = i;
    hashPages(buf, idx.subarray(0, k), out);
    hash += performance.now() - t;
  }
  closeSync(fd);
  return { total: performance.now() - t0, read, hash };
}

if (isMainThread) {
  const { values: args, positionals } = parseArgs({
    allowPositionals: true,
    options: { threads: { type: 'string', default: '1' }, repeat: { type: 'string', default: '3' } },
  });
  const file = positionals[0];
  if (!file) throw new Error('usage: node bench/floor.mjs IMAGE [--threads N] [--repeat R]');
  const threads = Number(args.threads);
  console.log(`page hasher: ${JSON.stringify(pageHasherStatus())}`);
  for (let r = 0; r < Number(args.repeat); r++) {
    const t = performance.now();
    let parts;
    if (threads <= 1) parts = [readAndHash(file, 0, 1)];
    else {
      // Workers are started and loaded first: their start-up is not part of the floor.
      const workers = Array.from(
        { length: threads },
        (_, i) => new Worker(fileURLToPath(import.meta.url), { workerData: { file, part: i, parts: threads } }),
      );
      await Promise.all(workers.map((w) => new Promise((resolve) => w.once('message', resolve))));
      const t1 = performance.now();
      parts = await Promise.all(
        workers.map(
          (w) =>
            new Promise((resolve) => {
              w.once('message', resolve);
              w.postMessage('go');
            }),
        ),
      );
      await Promise.all(workers.map((w) => w.terminate()));
      console.log(`  ${threads} threads: ${(performance.now() - t1).toFixed(0)} ms wall`);
    }
    const f = (x) => x.toFixed(0);
    console.log(
      `run ${r + 1}: ${parts.map((p) => `${f(p.total)} ms (read ${f(p.read)}, zero check + BLAKE3 ${f(p.hash)})`).join('; ')}${threads <= 1 ? `, wall ${f(performance.now() - t)} ms` : ''}`,
    );
  }
} else {
  parentPort.postMessage('ready');
  parentPort.once('message', () => parentPort.postMessage(readAndHash(workerData.file, workerData.part, workerData.parts)));
}
