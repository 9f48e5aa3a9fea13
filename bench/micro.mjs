#!/usr/bin/env node
// Microbenchmarks of the ingest/restore hot-path primitives, single thread (plus one worker-thread
// comparison for lz4-napi). Prints a markdown table; bench/RESULTS.md records a run.
//
//   npx tsc -p tsconfig.build.json   # emits dist/ (the codec layer is measured through dist/chunk/codec.js)
//   node bench/micro.mjs [--pages=8192] [--level-keys=200000]
//
// Page contents are synthetic but shaped like guest memory: half "text" pages (log-like lines, LZ4
// ~2.7x) and half "binary" pages (struct-like records with random fields, LZ4 ~2x); the table notes
// the measured ratios. Zero pages, and "tail" pages (zero but for their last 64 bytes), are measured
// separately for the zero check because they take its slow, full-scan path.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';
import { Level } from 'level';
import { compressSync, uncompressSync } from 'lz4-napi';

const PAGE = 4096;
const arg = (name, dflt) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a ? Number(a.split('=')[1]) : dflt;
};
const NPAGES = arg('pages', 8192);
const LEVEL_KEYS = arg('level-keys', 200_000);
const BATCH = 256;

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const codecJs = path.join(root, 'dist', 'chunk', 'codec.js');
if (!existsSync(codecJs)) {
  console.error('bench/micro.mjs: dist/chunk/codec.js missing; run `npx tsc -p tsconfig.build.json` first');
  process.exit(1);
}
const { getCodec, nativeCodecStatus } = await import(pathToFileURL(codecJs).href);
const status = nativeCodecStatus();
if (!status.loaded) console.error(`note: native codec unavailable (${status.error}); native rows skipped`);
const jsCodec = getCodec('js');
const nativeCodec = status.loaded ? getCodec('native') : undefined;

// ---------------------------------------------------------------------------------------------
// Workload: deterministic PRNG so runs are comparable.

let seed = 0x2545f491;
const rnd = () => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return seed >>> 0;
};
const WORDS =
  'the a of to and in is for on with kernel page task struct mm sched irq net tcp socket buffer inode file ext4 ' +
  'dentry cache alloc free lock mutex spin wait queue timer jiffies cpu node zone vma pgd pte pid uid gid GET POST ' +
  'HTTP/1.1 200 404 Content-Length: Host: localhost user session token error warning info debug'.split(' ');

function textPage(p) {
  // Log-like lines: shared timestamp prefix, a level, a subsystem, a few words and a random id.
  let pos = 0;
  let ts = rnd() % 86400;
  while (pos < PAGE) {
    ts += rnd() % 3;
    const hh = String(Math.floor(ts / 3600) % 24).padStart(2, '0');
    const mm = String(Math.floor(ts / 60) % 60).padStart(2, '0');
    const ss = String(ts % 60).padStart(2, '0');
    let line = `2025-11-24T${hh}:${mm}:${ss}.${String(rnd() % 1000).padStart(3, '0')}Z ${LEVELS[rnd() % LEVELS.length]} [${WORDS[rnd() % 24]}] `;
    line += TEMPLATES[rnd() % TEMPLATES.length].replace('#', String(rnd() % 65536)).replace('@', WORDS[rnd() % WORDS.length]);
    line += rnd() % 4 === 0 ? ` id=${(rnd() % 0xffffff).toString(16)}\n` : '\n';
    for (let i = 0; i < line.length && pos < PAGE; i++) p[pos++] = line.charCodeAt(i);
  }
}
const LEVELS = ['INFO ', 'INFO ', 'INFO ', 'DEBUG', 'WARN '];
const TEMPLATES = [
  'accepted connection from 10.0.0.# on port 443',
  'GET /api/v1/items/# HTTP/1.1 200 OK',
  'session @ refreshed token for user #',
  'cache miss for key @:# (evicting lru entry)',
  'worker # finished job @ in 12 ms',
  'tcp retransmit on socket # (@)',
];

function binaryPage(p) {
  // 64-byte records: a pointer-like field sharing high bytes, counters, flags, 16 random bytes.
  const base = rnd();
  for (let r = 0; r < PAGE / 64; r++) {
    const o = r * 64;
    for (let i = 0; i < 16; i++) p[o + i] = rnd() & 0xff;
    p[o + 16] = rnd() & 0xff;
    p[o + 17] = (rnd() & 0x0f) | 0x80;
    p[o + 18] = base & 0xff;
    p[o + 19] = (base >>> 8) & 0xff;
    p[o + 20] = 0x88;
    p[o + 21] = 0xff;
    p[o + 22] = 0xff;
    p[o + 23] = 0xff;
    p[o + 32] = r & 0xff;
    p[o + 40] = 1;
    for (let i = 48; i < 52; i++) p[o + i] = rnd() & 0x03;
  }
}

const pages = Buffer.alloc(NPAGES * PAGE);
for (let i = 0; i < NPAGES; i++) {
  const p = pages.subarray(i * PAGE, (i + 1) * PAGE);
  if (i % 2 === 0) textPage(p);
  else binaryPage(p);
}
// Written, not just calloc'ed: untouched calloc memory maps the kernel's shared zero page, which
// would sit in cache and flatter the zero-page rows.
const zeros = Buffer.alloc(NPAGES * PAGE)
  .fill(1)
  .fill(0);
const pageViews = Array.from({ length: NPAGES }, (_, i) => pages.subarray(i * PAGE, (i + 1) * PAGE));

// ---------------------------------------------------------------------------------------------
// Harness: warm up, then 5 trials over all pages; report the median.

const rows = [];
function record(name, nsPerOp, bytesPerOp, note = '') {
  const mbs = bytesPerOp > 0 ? (bytesPerOp / nsPerOp) * 1e3 : NaN;
  rows.push({ name, nsPerOp, mbs, note });
  console.error(`${name.padEnd(58)} ${nsPerOp.toFixed(0).padStart(7)} ns  ${Number.isNaN(mbs) ? '' : mbs.toFixed(0) + ' MB/s'}`);
}

function measure(name, ops, fn, { bytesPerOp = PAGE, note = '', trials = 5 } = {}) {
  fn();
  const t = [];
  for (let k = 0; k < trials; k++) {
    const t0 = process.hrtime.bigint();
    fn();
    t.push(Number(process.hrtime.bigint() - t0) / ops);
  }
  t.sort((a, b) => a - b);
  const ns = t[Math.floor(t.length / 2)];
  record(name, ns, bytesPerOp, note);
  return ns;
}

async function measureAsync(name, ops, fn, { bytesPerOp = 0, note = '', trials = 5 } = {}) {
  await fn();
  const t = [];
  for (let k = 0; k < trials; k++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / ops);
  }
  t.sort((a, b) => a - b);
  const ns = t[Math.floor(t.length / 2)];
  record(name, ns, bytesPerOp, note);
  return ns;
}

let sink = 0; // keeps results observable so nothing is optimised away

// ---------------------------------------------------------------------------------------------
// Hashing

measure('blake3(page) per page', NPAGES, () => {
  for (const p of pageViews) sink ^= blake3(p)[0];
});
const hasher = new Blake3Hasher();
measure('Blake3Hasher reuse (reset/update/digestBuffer) per page', NPAGES, () => {
  for (const p of pageViews) {
    hasher.reset();
    hasher.update(p);
    sink ^= hasher.digestBuffer()[0];
  }
});

const { hashPages, pageHasherStatus } = await import(pathToFileURL(path.join(root, 'dist', 'chunk', 'hash.js')).href);
const hashStatus = pageHasherStatus();
if (hashStatus.native) {
  const all = Uint32Array.from({ length: NPAGES }, (_, i) => i);
  const digestsOut = new Uint8Array(NPAGES * 32);
  measure(`hashPages (native ${hashStatus.simd} kernel), one call for all pages`, NPAGES, () => {
    hashPages(pages, all, digestsOut);
    sink ^= digestsOut[0];
  });
} else {
  console.error(`note: native page hasher unavailable (${hashStatus.error}); its row skipped`);
}

// ---------------------------------------------------------------------------------------------
// Compression

const offsets = Uint32Array.from({ length: NPAGES }, (_, i) => i * PAGE);
const batches = [];
for (let i = 0; i < NPAGES; i += BATCH) batches.push(offsets.subarray(i, Math.min(NPAGES, i + BATCH)));

const ratioOf = (codec, which) => {
  const c = codec.compressPages(pages, offsets);
  let stored = 0;
  for (let i = which; i < NPAGES; i += 2) stored += c.lengths[i];
  return ((NPAGES / 2) * PAGE) / stored;
};
const ratioNote = (codec) => `ratio text ${ratioOf(codec, 0).toFixed(2)}x, binary ${ratioOf(codec, 1).toFixed(2)}x`;

measure('lz4-napi compressSync per page (+ strip prefix)', NPAGES, () => {
  for (const p of pageViews) sink ^= compressSync(p).subarray(4).length;
});
const jsCompress = measure(
  `js codec compressPages, batches of ${BATCH}`,
  NPAGES,
  () => {
    for (const b of batches) sink ^= jsCodec.compressPages(pages, b).payload.length;
  },
  { note: ratioNote(jsCodec) },
);
let nativeCompress = NaN;
if (nativeCodec) {
  nativeCompress = measure(
    `native compressPages, batches of ${BATCH}`,
    NPAGES,
    () => {
      for (const b of batches) sink ^= nativeCodec.compressPages(pages, b).payload.length;
    },
    { note: ratioNote(nativeCodec) },
  );
  const one = new Uint32Array(1);
  measure('native compressPages, batch of 1 (per-call overhead)', NPAGES, () => {
    for (let i = 0; i < NPAGES; i++) {
      one[0] = i * PAGE;
      sink ^= nativeCodec.compressPages(pages, one).payload.length;
    }
  });
}

// lz4-napi in a worker thread (the design notes it runs ~2x faster there). Same loop, same pages.
{
  const lz4Path = createRequire(import.meta.url).resolve('lz4-napi');
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { compressSync } = require(workerData.lz4Path);
    const pages = Buffer.from(workerData.pages);
    const n = pages.length / 4096;
    const views = Array.from({ length: n }, (_, i) => pages.subarray(i * 4096, (i + 1) * 4096));
    let sink = 0; const t = [];
    for (let k = 0; k < 6; k++) {
      const t0 = process.hrtime.bigint();
      for (const p of views) sink ^= compressSync(p).subarray(4).length;
      if (k > 0) t.push(Number(process.hrtime.bigint() - t0) / n);
    }
    t.sort((a, b) => a - b);
    parentPort.postMessage({ ns: t[2], sink });
  `;
  const ns = await new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { lz4Path, pages } });
    w.once('message', (m) => resolve(m.ns));
    w.once('error', reject);
  });
  record('lz4-napi compressSync per page, inside a worker thread', ns, PAGE);
}

// ---------------------------------------------------------------------------------------------
// Decompression

const jsC = jsCodec.compressPages(pages, offsets);
const payloads = [];
{
  let pos = 0;
  for (let i = 0; i < NPAGES; i++) {
    payloads.push(jsC.payload.subarray(pos, pos + jsC.lengths[i]));
    pos += jsC.lengths[i];
  }
}
const framed = payloads.map((p, i) => (jsC.codecs[i] === 1 ? Buffer.concat([Buffer.from([0, 16, 0, 0]), p]) : null));
const dst = Buffer.alloc(NPAGES * PAGE);
measure(
  'lz4-napi uncompressSync per page (pre-framed input)',
  NPAGES,
  () => {
    for (const f of framed) if (f) sink ^= uncompressSync(f).length;
  },
  { note: 'Lz4 pages only; framing cost excluded' },
);
const jsDecode = measure('js codec decodePage per page', NPAGES, () => {
  for (let i = 0; i < NPAGES; i++) jsCodec.decodePage(payloads[i], jsC.codecs[i], dst, i * PAGE);
});
let nativeDecode = NaN;
let nativeDecodeBatch = NaN;
if (nativeCodec) {
  nativeDecode = measure('native decodePage per page', NPAGES, () => {
    for (let i = 0; i < NPAGES; i++) nativeCodec.decodePage(payloads[i], jsC.codecs[i], dst, i * PAGE);
  });
  // Batches of BATCH pages, payloads concatenated as a pack would hold them.
  const decBatches = [];
  let pos = 0;
  for (let i = 0; i < NPAGES; i += BATCH) {
    const lengths = jsC.lengths.subarray(i, i + BATCH);
    const len = lengths.reduce((a, b) => a + b, 0);
    decBatches.push({ payload: jsC.payload.subarray(pos, pos + len), lengths, codecs: jsC.codecs.subarray(i, i + BATCH), at: i * PAGE });
    pos += len;
  }
  nativeDecodeBatch = measure(`native decodePages, batches of ${BATCH}`, NPAGES, () => {
    for (const b of decBatches) nativeCodec.decodePages(b.payload, b.lengths, b.codecs, dst, b.at);
  });
}
if (!dst.equals(pages)) throw new Error('decode mismatch');

// ---------------------------------------------------------------------------------------------
// Zero-page check: non-zero pages (exit early) and zero pages (full scan).

const ZERO = Buffer.alloc(PAGE);
function zeroCompare(buf, count) {
  let z = 0;
  for (let i = 0; i < count; i++) if (buf.compare(ZERO, 0, PAGE, i * PAGE, (i + 1) * PAGE) === 0) z++;
  return z;
}
function zeroHybrid(buf, count) {
  // What the js codec does: probe the first 64 bytes as words (most non-zero pages differ there),
  // then memcmp the page against a zero page.
  const u = new Uint32Array(buf.buffer, buf.byteOffset, (count * PAGE) / 4);
  let z = 0;
  for (let i = 0; i < count; i++) {
    const w = i * 1024;
    let acc = 0;
    for (let j = w; j < w + 16; j++) acc |= u[j];
    if (acc === 0 && buf.compare(ZERO, 0, PAGE, i * PAGE, (i + 1) * PAGE) === 0) z++;
  }
  return z;
}
function zeroU32(buf, count) {
  const u = new Uint32Array(buf.buffer, buf.byteOffset, (count * PAGE) / 4);
  let z = 0;
  for (let i = 0; i < count; i++) {
    let acc = 0;
    const end = (i + 1) * 1024;
    for (let j = i * 1024; j < end; j += 4) {
      acc |= u[j] | u[j + 1] | u[j + 2] | u[j + 3];
      if (acc !== 0) break;
    }
    if (acc === 0) z++;
  }
  return z;
}
function zeroF64(buf, count) {
  // Float64 view: 8 bytes per compare; -0 compares equal to 0, so the high word is also checked.
  const f = new Float64Array(buf.buffer, buf.byteOffset, (count * PAGE) / 8);
  const u = new Uint32Array(buf.buffer, buf.byteOffset, (count * PAGE) / 4);
  let z = 0;
  for (let i = 0; i < count; i++) {
    let isZero = true;
    const end = (i + 1) * 512;
    for (let j = i * 512; j < end; j++) {
      if (f[j] !== 0 || u[2 * j + 1] !== 0) {
        isZero = false;
        break;
      }
    }
    if (isZero) z++;
  }
  return z;
}
const tails = Buffer.alloc(NPAGES * PAGE)
  .fill(1)
  .fill(0);
for (let i = 0; i < NPAGES; i++) tails.fill(0x5a, (i + 1) * PAGE - 64, (i + 1) * PAGE);
for (const [label, buf] of [
  ['non-zero pages', pages],
  ['zero pages', zeros],
  ['tail pages', tails],
]) {
  measure(`JS zero check, 64-byte word probe then Buffer#compare (${label})`, NPAGES, () => {
    sink ^= zeroHybrid(buf, NPAGES);
  });
  measure(`JS zero check, Buffer#compare vs zero page (${label})`, NPAGES, () => {
    sink ^= zeroCompare(buf, NPAGES);
  });
  measure(`JS zero check, Uint32Array OR loop (${label})`, NPAGES, () => {
    sink ^= zeroU32(buf, NPAGES);
  });
  measure(`JS zero check, Float64Array loop (${label})`, NPAGES, () => {
    sink ^= zeroF64(buf, NPAGES);
  });
  measure(`codec zeroMask (shared JS), batches of ${BATCH} (${label})`, NPAGES, () => {
    for (let i = 0; i < NPAGES; i += BATCH) sink ^= jsCodec.zeroMask(buf.subarray(i * PAGE), BATCH)[0];
  });
}

// ---------------------------------------------------------------------------------------------
// LevelDB index lookups: 32-byte digest -> 20-byte location, LEVEL_KEYS entries, reopened so the
// data sits in table files rather than only in the memtable.

const dir = mkdtempSync(path.join(os.tmpdir(), 'vnstore-micro-'));
try {
  const opts = { keyEncoding: 'buffer', valueEncoding: 'buffer' };
  let db = new Level(dir, opts);
  await db.open();
  const keys = [];
  for (let i = 0; i < LEVEL_KEYS; i += 10_000) {
    const ops = [];
    for (let k = i; k < Math.min(LEVEL_KEYS, i + 10_000); k++) {
      const key = randomBytes(32);
      keys.push(key);
      ops.push({ type: 'put', key, value: randomBytes(20) });
    }
    await db.batch(ops);
  }
  await db.close();
  db = new Level(dir, opts);
  await db.open();
  const N = 20_000;
  const present = Array.from({ length: N }, () => keys[rnd() % keys.length]);
  const absent = Array.from({ length: N }, () => randomBytes(32));
  const note = `${LEVEL_KEYS} keys`;
  await measureAsync(
    'LevelDB await get (present)',
    N,
    async () => {
      for (const k of present) sink ^= (await db.get(k))[0];
    },
    { note },
  );
  measure(
    'LevelDB getSync (present)',
    N,
    () => {
      for (const k of present) sink ^= db.getSync(k)[0];
    },
    { bytesPerOp: 0, note },
  );
  measure(
    'LevelDB getSync (absent)',
    N,
    () => {
      for (const k of absent) sink ^= db.getSync(k) === undefined ? 1 : 0;
    },
    { bytesPerOp: 0, note },
  );
  for (const [label, ks] of [
    ['present', present],
    ['absent', absent],
  ]) {
    await measureAsync(
      `LevelDB getMany, batches of ${BATCH} (${label}), per key`,
      N,
      async () => {
        for (let i = 0; i < N; i += BATCH) sink ^= (await db.getMany(ks.slice(i, i + BATCH))).length;
      },
      { note },
    );
  }
  await db.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------

console.log(
  `\npages: ${NPAGES} x 4 KiB (half text-like, half binary), batch ${BATCH}; median of 5 trials; MB/s = 10^6 B/s of raw page data\n`,
);
console.log('| primitive | ns/op | MB/s | note |');
console.log('| --- | ---: | ---: | --- |');
for (const r of rows) {
  console.log(`| ${r.name} | ${r.nsPerOp.toFixed(0)} | ${Number.isNaN(r.mbs) ? '' : r.mbs.toFixed(0)} | ${r.note} |`);
}
if (nativeCodec) {
  console.log(
    `\nspeed-up native vs js codec: compress ${(jsCompress / nativeCompress).toFixed(2)}x, ` +
      `decodePage ${(jsDecode / nativeDecode).toFixed(2)}x, decodePages batch ${(jsDecode / nativeDecodeBatch).toFixed(2)}x`,
  );
}
if (sink === 0.5) console.log(''); // never true; keeps sink live
