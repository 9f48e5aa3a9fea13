#!/usr/bin/env node
/**
 * The floor of a format-3 store's not-payload bytes (issue 16: "not payload ≤ 2%"): reads every
 * pack's trailer and table of contents (docs/FORMAT.md, "Pack file (.vpk, versions 4 and 3)") and
 * reports the chunk count, the bytes of each TOC column (number runs, items, digests: 24 B a chunk in
 * pack 4, 32 in pack 3), pack headers and trailers, the distribution of stored bytes per chunk (a
 * container's frame shared among its pages), and what the not-payload share would be with a 32-,
 * 24- or 16-byte digest column instead.
 *
 *   node bench/toc-floor.mjs --store DIR [--json]
 *
 * Read only. `storeBytes` is every file under DIR (as `du` counts them: sizes, not blocks).
 */
import { openSync, readSync, closeSync, fstatSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter } from './dist-workload.mjs';

const load = distImporter(DEFAULT_DIST);
const { parsePackTrailerV3, parsePackTocV3, metaStoredLength, metaPages, metaCodec, NUMBERED_PACK_VERSIONS } =
  await load('format/pack-v3.js');
const { dirSize } = await load('bench/files.js');

const HEADER_BYTES = 16;
const TRAILER_BYTES = 32;
/** Upper bounds of the stored-bytes-per-chunk classes. */
const CLASSES = [128, 256, 512, 1024, 2048, 4096, Infinity];

/** Everything the store's packs say about their not-payload bytes. */
export async function tocFloor(store) {
  const packsDir = path.join(store, 'packs');
  const r = {
    packs: 0,
    packVersions: {},
    chunks: 0,
    items: 0,
    payloadBytes: 0,
    headerTrailerBytes: 0,
    runBytes: 0,
    itemBytes: 0,
    digestBytes: 0,
  };
  const perChunk = new Map(CLASSES.map((c) => [c, { chunks: 0, bytes: 0 }]));
  let containerChunks = 0;
  for (const name of readdirSync(packsDir).filter((n) => n.endsWith('.vpk'))) {
    const fd = openSync(path.join(packsDir, name), 'r');
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(HEADER_BYTES);
      readSync(fd, head, 0, HEADER_BYTES, 0);
      const version = head.readUInt16LE(8);
      if (!NUMBERED_PACK_VERSIONS.includes(version)) throw new Error(`${name}: not a version-3/4 pack (format 3 stores only)`);
      const tail = Buffer.alloc(TRAILER_BYTES);
      readSync(fd, tail, 0, TRAILER_BYTES, size - TRAILER_BYTES);
      const t = parsePackTrailerV3(tail, size, name, version);
      const tocBuf = Buffer.alloc(t.tocBytes);
      readSync(fd, tocBuf, 0, t.tocBytes, t.tocOffset);
      const toc = parsePackTocV3(tocBuf, t, name, version);
      r.packs++;
      r.packVersions[version] = (r.packVersions[version] ?? 0) + 1;
      r.chunks += toc.count;
      r.payloadBytes += t.tocOffset - HEADER_BYTES;
      r.headerTrailerBytes += HEADER_BYTES + TRAILER_BYTES;
      r.digestBytes += toc.count * toc.digestStride;
      let items = 0;
      for (let k = 0; k < toc.count; k += metaPages(toc.metas[k])) items++;
      r.items += items;
      r.itemBytes += items * 3;
      r.runBytes += toc.digestsAt - items * 3;
      for (let k = 0; k < toc.count; k++) {
        const pages = metaPages(toc.metas[k]);
        if (metaCodec(toc.metas[k]) === 2) containerChunks++;
        const stored = metaStoredLength(toc.metas[k]) / pages;
        const c = CLASSES.find((x) => stored < x);
        perChunk.get(c).chunks++;
        perChunk.get(c).bytes += stored;
      }
    } finally {
      closeSync(fd);
    }
  }
  const storeBytes = (await dirSize(store)).bytes;
  const notPayload = storeBytes - r.payloadBytes;
  // The same store with a digest column of `bytes` a chunk instead of the one it has.
  const withDigest = (bytes) => (notPayload - (r.digestBytes - r.chunks * bytes)) / (storeBytes - (r.digestBytes - r.chunks * bytes));
  return {
    ...r,
    containerChunks,
    storeBytes,
    notPayloadBytes: notPayload,
    notPayloadFraction: notPayload / storeBytes,
    tocBytesPerChunk: (r.runBytes + r.itemBytes + r.digestBytes) / r.chunks,
    payloadBytesPerChunk: r.payloadBytes / r.chunks,
    storedPerChunk: CLASSES.map((c) => ({ below: c === Infinity ? null : c, ...perChunk.get(c) })),
    notPayloadFractionWithDigest: { 32: withDigest(32), 24: withDigest(24), 16: withDigest(16) },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { store: { type: 'string' }, json: { type: 'boolean', default: false } } });
  if (!values.store) {
    process.stderr.write('usage: node bench/toc-floor.mjs --store DIR [--json]\n');
    process.exit(2);
  }
  const f = await tocFloor(values.store);
  if (values.json) process.stdout.write(JSON.stringify(f, null, 2) + '\n');
  else {
    const pct = (x) => `${(100 * x).toFixed(2)}%`;
    let cum = 0;
    const lines = [
      `${f.packs} packs (by version: ${JSON.stringify(f.packVersions)}), ${f.chunks} chunks (${f.containerChunks} in containers, ${f.items} stored items); store ${f.storeBytes} B, payload ${f.payloadBytes} B`,
      `not payload ${f.notPayloadBytes} B = ${pct(f.notPayloadFraction)}: digests ${f.digestBytes}, items ${f.itemBytes}, number runs ${f.runBytes}, ` +
        `headers+trailers ${f.headerTrailerBytes}, other files ${f.notPayloadBytes - f.digestBytes - f.itemBytes - f.runBytes - f.headerTrailerBytes}`,
      `TOC ${f.tocBytesPerChunk.toFixed(2)} B a chunk; payload ${f.payloadBytesPerChunk.toFixed(1)} B a chunk`,
      `not payload with a 32 / 24 / 16-byte digest column: ${pct(f.notPayloadFractionWithDigest[32])} / ${pct(f.notPayloadFractionWithDigest[24])} / ${pct(f.notPayloadFractionWithDigest[16])}`,
      '',
      '| stored bytes per chunk | chunks | cumulative | share of chunks (cumulative) | digest ÷ stored bytes of these chunks |',
      '| --- | ---: | ---: | ---: | ---: |',
      ...f.storedPerChunk.map((c) => {
        cum += c.chunks;
        return `| < ${c.below ?? '∞'} | ${c.chunks} | ${cum} | ${pct(cum / f.chunks)} | ${c.bytes ? pct((c.chunks * (f.digestBytes / f.chunks)) / c.bytes) : '–'} |`;
      }),
    ];
    process.stdout.write(lines.join('\n') + '\n');
  }
}
