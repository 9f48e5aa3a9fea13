#!/usr/bin/env node
/**
 * What checking the index's LevelDB tables at open costs (src/store/index-check.ts): builds a
 * LevelDB of N chunk-index-like entries ('c' + 32 random bytes → 7 bytes), compacted, then times
 * the check reading every table, the check with the verified list (what an open pays after the
 * first), a forced re-read (`vnstore check`), and LevelDB's own open + close for scale.
 *
 *   node bench/index-check.mjs [--entries 300000] [--runs 5]
 *
 * Uses the built dist/ (npm run build).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Level } from 'level';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '300000' }, runs: { type: 'string', default: '5' } } });
const entries = Number(values.entries);
const runs = Number(values.runs);
const { checkIndexFiles } = await import(new URL('../dist/store/index-check.js', import.meta.url).href);

const root = mkdtempSync(path.join(tmpdir(), 'vnstore-index-check-'));
const dir = path.join(root, 'db');
try {
  let db = new Level(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  for (let i = 0; i < entries; i += 10000) {
    const batch = db.batch();
    for (let j = 0; j < Math.min(10000, entries - i); j++) batch.put(Buffer.concat([Buffer.of(0x63), randomBytes(32)]), randomBytes(7));
    await batch.write();
  }
  await db.compactRange(Buffer.of(0), Buffer.of(0xff));
  await db.close();
  const tables = readdirSync(dir).filter((f) => f.endsWith('.ldb'));
  const bytes = tables.reduce((s, f) => s + statSync(path.join(dir, f)).size, 0);

  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  async function time(fn) {
    const ms = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await fn();
      ms.push(performance.now() - t0);
    }
    return median(ms);
  }
  const first = performance.now();
  await checkIndexFiles(dir); // the first open after the tables were written: reads them all
  const firstMs = performance.now() - first;
  const listed = await time(() => checkIndexFiles(dir));
  const reread = await time(() => checkIndexFiles(dir, { recheck: true }));
  const levelOpen = await time(async () => {
    db = new Level(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    await db.close();
  });
  const mb = bytes / 1e6;
  console.log(`${entries} entries, ${tables.length} tables, ${mb.toFixed(1)} MB (median of ${runs} runs)`);
  console.log(`check, first (reads all, cold JIT): ${firstMs.toFixed(1)} ms`);
  console.log(`check, re-read (vnstore check):     ${reread.toFixed(1)} ms (${(mb / (reread / 1000)).toFixed(0)} MB/s)`);
  console.log(`check, with the verified list:      ${listed.toFixed(1)} ms`);
  console.log(`LevelDB open + close:               ${levelOpen.toFixed(1)} ms`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
