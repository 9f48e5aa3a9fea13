#!/usr/bin/env node
// The measurement behind issue 16's codec choice: on the distinct non-zero pages of a generated
// environment (src/sim/workload.ts) or of raw memory images, how many bytes and how much time do
// LZ4 per page, zstd per page (levels 1/3/9, with and without a trained dictionary) and zstd over
// containers of 64 KiB / 256 KiB / 1 MiB of distinct pages take, and what does restoring one page
// cost per container size. One thread, library call overhead included (batched native calls, as the
// store would make them). Every variant is decoded and compared with the pages before it counts.
//
//   npm run build
//   node bench/zstd-choice.mjs [--mem-mib=128,192,256] [--snapshots=2] [--max-pages=65536] [--min-seconds=0.6] [--images=a.img,b.img]
//
// Prints a markdown table; bench/RESULTS.md records a run and docs/DESIGN.md the choice.
import os from 'node:os';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { blake3 } from '@napi-rs/blake-hash';

const PAGE = 4096;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(pathToFileURL(path.join(root, 'dist', p)).href);
const { getCodec } = await dist('chunk/codec.js');
const { getZstd, zstdStatus } = await dist('chunk/zstd.js');
const { Workload } = await dist('sim/workload.js');

const arg = (name, dflt) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const memMiB = arg('mem-mib', '128,192,256').split(',').map(Number);
const snapshots = Number(arg('snapshots', '2'));
const maxPages = Number(arg('max-pages', '65536'));
const imageFiles = arg('images', '');
// Each timing is the best of repeats over at least this long: the machine is shared, best-of filters
// other engineers' load out of the figure.
const minSeconds = Number(arg('min-seconds', '0.6'));

const lz4 = getCodec('native');
const z = getZstd('native');

// ---- the distinct non-zero pages, in first-seen order ----
const seen = new Set();
const chunks = [];
let logical = 0;
let nonZero = 0;
const ZERO = Buffer.alloc(PAGE);
function take(buf) {
  for (let o = 0; o + PAGE <= buf.length && seen.size < maxPages; o += PAGE) {
    const p = buf.subarray(o, o + PAGE);
    logical += PAGE;
    if (p.equals(ZERO)) continue;
    nonZero++;
    const k = blake3(p).toString('latin1');
    if (seen.has(k)) continue;
    seen.add(k);
    chunks.push(Buffer.from(p));
  }
}
let source;
if (imageFiles) {
  source = `images ${imageFiles}`;
  for (const f of imageFiles.split(',')) take(readFileSync(f));
} else {
  const w = new Workload({ vms: memMiB.length, memMiB, snapshots });
  source = `generated: ${memMiB.length} VMs (${memMiB.join(', ')} MiB), ${snapshots} snapshots, default fractions, seed ${w.params.seed}`;
  for (const { vm, snap } of w.images()) for (const b of w.blocks(vm.index, snap)) take(b);
}
const pages = Buffer.concat(chunks);
chunks.length = 0;
const n = pages.length / PAGE;
const MB = pages.length / 1e6;

// ---- helpers ----
function timeIt(fn, atLeast = minSeconds) {
  // Repeats fn until minSeconds have passed; returns seconds per run (best of the repeats).
  let best = Infinity;
  const t0 = process.hrtime.bigint();
  let r;
  do {
    const s = process.hrtime.bigint();
    r = fn();
    best = Math.min(best, Number(process.hrtime.bigint() - s) / 1e9);
  } while (Number(process.hrtime.bigint() - t0) / 1e9 < atLeast);
  return { seconds: best, result: r };
}
const BATCH = 256; // pages per native call for per-page codecs, as the store batches them

function blobs(blobPages) {
  const count = Math.ceil(n / blobPages);
  const starts = new Uint32Array(count);
  const sizes = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    starts[i] = i * blobPages * PAGE;
    sizes[i] = Math.min(blobPages, n - i * blobPages) * PAGE;
  }
  return { starts, sizes };
}
const offsetsOf = (lengths) => {
  const o = new Uint32Array(lengths.length);
  for (let i = 1; i < lengths.length; i++) o[i] = o[i - 1] + lengths[i - 1];
  return o;
};

/** zstd over blobs of blobPages pages; per-page variants are batched BATCH blobs per call. */
function measureZstd(label, blobPages, level, dict) {
  const { starts, sizes } = blobs(blobPages);
  const per = blobPages === 1 ? BATCH : 1;
  const compressAll = () => {
    const parts = [];
    const lens = [];
    for (let i = 0; i < starts.length; i += per) {
      const f = z.compress(pages, starts.subarray(i, i + per), sizes.subarray(i, i + per), level, dict);
      parts.push(f.payload);
      lens.push(f.lengths);
    }
    const lengths = new Uint32Array(starts.length);
    let k = 0;
    for (const l of lens) for (const x of l) lengths[k++] = x;
    return { payload: Buffer.concat(parts), lengths };
  };
  const c = timeIt(compressAll);
  const { payload, lengths } = c.result;
  const offs = offsetsOf(lengths);
  // A per-page store keeps a page raw when zstd does not shrink it; so does a container store.
  let stored = 0;
  for (let i = 0; i < lengths.length; i++) stored += Math.min(lengths[i], sizes[i]);
  const out = Buffer.alloc(pages.length);
  const d = timeIt(() => {
    for (let i = 0; i < starts.length; i += per) {
      z.decompress(
        payload,
        offs.subarray(i, i + per),
        lengths.subarray(i, i + per),
        out,
        starts.subarray(i, i + per),
        sizes.subarray(i, i + per),
        dict,
      );
    }
  });
  if (!out.equals(pages)) throw new Error(`${label}: round trip differs`);
  // One page restored at random: decode its whole blob (one frame), median of 2000 draws.
  const one = [];
  const scratch = Buffer.alloc(blobPages * PAGE);
  for (let t = 0; t < 2000; t++) {
    const b = (t * 2654435761) % starts.length;
    const s = process.hrtime.bigint();
    z.decompress(
      payload,
      offs.subarray(b, b + 1),
      lengths.subarray(b, b + 1),
      scratch,
      new Uint32Array([0]),
      sizes.subarray(b, b + 1),
      dict,
    );
    one.push(Number(process.hrtime.bigint() - s) / 1e3);
  }
  one.sort((a, b) => a - b);
  return { label, stored, compress: MB / c.seconds, decompress: MB / d.seconds, onePageUs: one[one.length >> 1] };
}

function measureLz4() {
  const offsets = Float64Array.from({ length: n }, (_, i) => i * PAGE);
  const c = timeIt(() => {
    const parts = [];
    const lens = [];
    const cods = [];
    for (let i = 0; i < n; i += BATCH) {
      const r = lz4.compressPages(pages, offsets.subarray(i, i + BATCH));
      parts.push(r.payload);
      lens.push(r.lengths);
      cods.push(r.codecs);
    }
    return { parts, lens, cods };
  });
  const { parts, lens, cods } = c.result;
  const stored = parts.reduce((s, p) => s + p.length, 0);
  const out = Buffer.alloc(pages.length);
  const d = timeIt(() => {
    for (let k = 0; k < parts.length; k++) lz4.decodePages(parts[k], lens[k], cods[k], out, k * BATCH * PAGE);
  });
  if (!out.equals(pages)) throw new Error('lz4: round trip differs');
  const one = [];
  for (let t = 0; t < 2000; t++) {
    const k = t % parts.length;
    const s = process.hrtime.bigint();
    lz4.decodePage(parts[k].subarray(0, lens[k][0]), cods[k][0], out, 0);
    one.push(Number(process.hrtime.bigint() - s) / 1e3);
  }
  one.sort((a, b) => a - b);
  return { label: 'LZ4 per page (today)', stored, compress: MB / c.seconds, decompress: MB / d.seconds, onePageUs: one[one.length >> 1] };
}

function trainDict(capacity) {
  // Train on 5% of the distinct pages, evenly spread (as issue 16's measurement did).
  const every = 20;
  const picks = [];
  for (let i = 0; i < n; i += every) picks.push(pages.subarray(i * PAGE, (i + 1) * PAGE));
  const t = timeIt(() => z.train(Buffer.concat(picks), new Uint32Array(picks.length).fill(PAGE), capacity), 0);
  return { dict: t.result, seconds: t.seconds };
}

const rows = [measureLz4()];
for (const level of [1, 3, 9]) rows.push(measureZstd(`zstd-${level} per page`, 1, level));
const notes = [];
for (const cap of [112 * 1024, 512 * 1024]) {
  const { dict, seconds } = trainDict(cap);
  notes.push(`dictionary of ${(dict.length / 1024).toFixed(0)} KiB trained in ${seconds.toFixed(1)} s`);
  for (const level of [3, 9]) {
    const r = measureZstd(
      `zstd-${level} per page, ${(dict.length / 1024).toFixed(0)} KiB dictionary (of ≤ ${cap / 1024} KiB)`,
      1,
      level,
      dict,
    );
    r.stored += dict.length; // the dictionary is stored once
    rows.push(r);
  }
}
for (const kib of [64, 256, 1024])
  rows.push(measureZstd(`zstd-3 over ${kib >= 1024 ? `${kib / 1024} MiB` : `${kib} KiB`} containers`, kib / 4, 3));
rows.push(measureZstd('zstd-9 over 64 KiB containers', 16, 9));
rows.push(measureZstd('zstd-9 over 1 MiB containers', 256, 9));

const lz = rows[0].stored;
const fmt = (x, d = 0) => x.toFixed(d);
console.log(
  `Source: ${source}. ${(logical / 2 ** 20).toFixed(0)} MiB logical (${nonZero} non-zero pages), ${n} distinct non-zero pages (${fmt(MB, 1)} MB).`,
);
console.log(
  `Machine: ${os.cpus().length} × ${os.cpus()[0].model}, Node ${process.version}, libzstd ${zstdStatus().libzstd}, ${new Date().toISOString().slice(0, 16)}Z.`,
);
console.log(`Notes: ${notes.join('; ')}; timings best of repeats over ≥ ${minSeconds} s each.`);
console.log('');
console.log('| codec | stored MB | vs LZ4 per page | compress MB/s | decompress MB/s | restore one page: µs (median) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.label} | ${fmt(r.stored / 1e6, 1)} | ${fmt((100 * r.stored) / lz - 100, 1)}% | ${fmt(r.compress)} | ${fmt(r.decompress)} | ${fmt(r.onePageUs, 1)} |`,
  );
}
