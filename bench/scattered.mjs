#!/usr/bin/env node
// Dirty-page writes through the library, as a snapshot daemon makes them: a parent of 20,000 pages,
// then a session that rewrites every third page (new content) with one writePage per page, or with
// one writeScattered call; modes alternate. Run `npm run build` first.
//   node bench/scattered.mjs [--workers N] [--rounds R]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { Store } = await import(join(root, 'dist', 'store', 'store.js'));
const { values: args } = parseArgs({ options: { workers: { type: 'string', default: '0' }, rounds: { type: 'string', default: '2' } } });
const PAGE = 4096;
const PAGES = 20000;

const dir = mkdtempSync(join(tmpdir(), 'vnstore-scattered-'));
try {
  await Store.init(dir);
  const store = await Store.open(dir, { workers: Number(args.workers) });
  try {
    let s = await store.beginSession({ vm: 'x' });
    const image = Buffer.alloc(PAGES * PAGE);
    for (let i = 0; i < PAGES; i++) {
      image.writeUInt32LE(i, i * PAGE);
      image.writeUInt32LE(i * 7 + 1, i * PAGE + 2000);
    }
    await s.writePages(0, image);
    await s.commit();
    let salt = 1;
    for (let r = 0; r < Number(args.rounds); r++) {
      for (const mode of ['writePage', 'writeScattered']) {
        s = await store.beginSession({ vm: 'x' });
        const indices = [];
        for (let i = 0; i < PAGES; i += 3) indices.push(i);
        const pages = Buffer.alloc(indices.length * PAGE);
        indices.forEach((page, k) => {
          pages.writeUInt32LE(page, k * PAGE);
          pages.writeUInt32LE(salt++, k * PAGE + 3000); // new content every time
        });
        const t = performance.now();
        if (mode === 'writePage')
          for (let k = 0; k < indices.length; k++) await s.writePage(indices[k], pages.subarray(k * PAGE, (k + 1) * PAGE));
        else await s.writeScattered(indices, pages);
        const writes = performance.now() - t;
        await s.commit();
        console.log(
          `${mode.padEnd(14)} ${indices.length} dirty pages: writes ${writes.toFixed(0)} ms, with commit ${(performance.now() - t).toFixed(0)} ms`,
        );
      }
    }
  } finally {
    await store.close();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
