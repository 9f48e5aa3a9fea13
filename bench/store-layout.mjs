#!/usr/bin/env node
// Where a store's bytes go: pack payload (the chunks) against everything that is not payload (pack
// headers, tables of contents and trailers, manifests, db/, chunk-table.bin), for any store format.
// The payload of a pack is its trailer's tocOffset - 16 (the header); the 4 MiB reserve is left out.
//   node bench/store-layout.mjs STORE_DIR
import { openSync, readdirSync, readSync, statSync, closeSync } from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node bench/store-layout.mjs STORE_DIR\n');
  process.exit(2);
}
const filesIn = (d) => readdirSync(path.join(dir, d)).map((f) => path.join(dir, d, f));
let packFiles = 0;
let payload = 0;
let chunks = 0;
for (const p of filesIn('packs')) {
  const size = statSync(p).size;
  const fd = openSync(p, 'r');
  const t = Buffer.alloc(32);
  readSync(fd, t, 0, 32, size - 32);
  closeSync(fd);
  packFiles += size;
  chunks += t.readUInt32LE(0);
  payload += t.readUInt32LE(4) + t.readUInt32LE(8) * 2 ** 32 - 16;
}
const bytesOf = (files) => files.reduce((s, f) => s + statSync(f).size, 0);
const manifests = bytesOf(filesIn('manifests'));
const db = bytesOf(filesIn('db'));
let chunkTable = 0;
try {
  chunkTable = statSync(path.join(dir, 'chunk-table.bin')).size;
} catch {
  // format 3 keeps none
}
const store = packFiles + manifests + db + chunkTable;
const metadata = store - payload;
const out = {
  chunks,
  packFiles,
  payload,
  packMetadata: packFiles - payload,
  packMetadataPerChunk: +((packFiles - payload) / chunks).toFixed(2),
  manifests,
  db,
  chunkTable,
  storeWithoutReserve: store,
  metadata,
  metadataFraction: +(metadata / store).toFixed(4),
};
process.stdout.write(JSON.stringify(out, null, 2) + '\n');
