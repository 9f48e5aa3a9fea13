#!/usr/bin/env node
/**
 * Superseded pre-copy chunks (issue 11): one session receives a first round with every page of a
 * guest image, then `--rounds - 1` more rounds each rewriting `--dirty` of the pages (chosen at
 * random) with new content, as a pre-copy migration sends them, and commits. Reports the pack bytes
 * the store holds after the commit against the bytes the committed manifest references (the
 * distinct chunks' stored lengths from the index, their table entries and each pack's framing),
 * once the store's background reclaim of superseded chunks (if the build has one) is done; and the
 * times of the whole session, of its commit, and of that reclaim after the commit resolved.
 *
 *   node bench/superseded.mjs [--mib 64] [--rounds 5] [--dirty 0.2] [--dist DIR] [--json] [--no-reclaim]
 *                             [--store DIR]
 *
 * --store DIR: use (and keep) that store (created if it does not exist), and as soon as the commit resolves print one JSON line with
 * the snapshot id and the SHA-256 of the image it must restore to (test/superseded-reclaim.test.ts
 * kills the process during the reclaim that follows).
 *
 * Pages are two thirds random (incompressible), one third compressible text. Uses the built dist/.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter, MIB, PAGE, xorshift } from './dist-workload.mjs';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '5' },
    dirty: { type: 'string', default: '0.2' },
    dist: { type: 'string', default: DEFAULT_DIST },
    json: { type: 'boolean', default: false },
    'no-reclaim': { type: 'boolean', default: false },
    store: { type: 'string' },
  },
});
const dist = path.resolve(values.dist);
const load = distImporter(dist);

/** Page `version` of page `index`: random bytes, or (one in three) a compressible text page. */
function fillPage(out, index, version) {
  const next = xorshift(index * 7919 + version * 104729 + 1);
  if (index % 3 === 0) {
    out.fill(0);
    out.write(`page ${index} version ${version} `.repeat(64), 'latin1');
    return;
  }
  for (let i = 0; i < PAGE; i += 4) out.writeUInt32LE(next(), i);
}

const { Store } = await load('store/store.js');
// Builds with a reclaim take their sweeper at open (older ones import gc themselves).
const sweeper = await load('maintenance/sweeper.js').then(
  (m) => m.gcSweeper,
  () => undefined,
);
const { DIGEST_BYTES, PageKind } = await load('format/pages.js');
const pages = (Number(values.mib) * MIB) / PAGE;
const rounds = Number(values.rounds);
const dirty = Number(values.dirty);
const root = values.store ? undefined : mkdtempSync(path.join(tmpdir(), 'vnstore-superseded-'));
try {
  const dir = values.store ? path.resolve(values.store) : path.join(root, 'store');
  if (!existsSync(dir)) await Store.init(dir); // --store may name a store that holds snapshots already
  const store = await Store.open(dir, { sweeper, reclaim: !values['no-reclaim'] });
  const pick = xorshift(42);
  const began = performance.now();
  const s = await store.beginSession({ vm: 'vm', parent: 'none', memoryBytes: pages * PAGE });
  const version = new Uint32Array(pages);
  const block = Buffer.allocUnsafe(1024 * PAGE);
  let sent = 0;
  for (let round = 0; round < rounds; round++) {
    let list;
    if (round === 0) list = Array.from({ length: pages }, (_, i) => i);
    else {
      const chosen = new Set();
      while (chosen.size < Math.round(pages * dirty)) chosen.add(pick() % pages);
      list = [...chosen];
    }
    for (let k = 0; k < list.length; k += 1024) {
      const idx = list.slice(k, k + 1024);
      idx.forEach((p, j) => {
        version[p] = round;
        fillPage(block.subarray(j * PAGE, (j + 1) * PAGE), p, round);
      });
      await s.writeScattered(idx, block.subarray(0, idx.length * PAGE));
      sent += idx.length;
    }
  }
  // The image it must restore to, hashed before the commit so that the reclaim starts as it resolves.
  let sha256;
  if (values.store) {
    const image = createHash('sha256');
    const page = Buffer.alloc(PAGE);
    for (let p = 0; p < pages; p++) {
      fillPage(page, p, version[p]);
      image.update(page);
    }
    sha256 = image.digest('hex');
  }
  const started = performance.now();
  const rec = await s.commit();
  const commitSeconds = (performance.now() - started) / 1000;
  const sessionSeconds = (performance.now() - began) / 1000;
  if (values.store) process.stdout.write(JSON.stringify({ committed: rec.id, sha256 }) + '\n');
  const reclaimStarted = performance.now();
  const reclaimRuns = typeof store.reclaimIdle === 'function' ? (await store.reclaimIdle()).runs : 0;
  const reclaimSeconds = (performance.now() - reclaimStarted) / 1000;
  // What the manifest references, from the index.
  const table = await store.loadPages(rec.id);
  const digests = new Map();
  for (let i = 0; i < table.pageCount; i++)
    if (table.kinds[i] === PageKind.Digest)
      digests.set(Buffer.from(table.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)).toString('hex'), true);
  const locs = await store.lookupExact([...digests.keys()].map((h) => Buffer.from(h, 'hex')));
  const referencedStored = locs.reduce((sum, l) => sum + l.storedLength, 0);
  await store.close();
  const packsDir = path.join(dir, 'packs');
  const files = readdirSync(packsDir);
  const packBytes = files.reduce((sum, n) => sum + statSync(path.join(packsDir, n)).size, 0);
  const bound = referencedStored + digests.size * 11 + files.length * 48;
  const out = {
    imageMib: Number(values.mib),
    rounds,
    dirty,
    pagesSent: sent,
    chunksReferenced: digests.size,
    referencedBytes: bound,
    packBytes,
    ratio: packBytes / bound,
    commitSeconds,
    sessionSeconds,
    reclaimRuns,
    reclaimSeconds,
    dist,
    loadavg: readFileSync('/proc/loadavg', 'utf8').trim(),
  };
  if (values.json) process.stdout.write(JSON.stringify(out) + '\n');
  else {
    process.stdout.write(
      `${out.imageMib} MiB image, ${rounds} rounds, ${dirty * 100}% rewritten per round: packs ${(packBytes / MIB).toFixed(1)} MiB, referenced ${(bound / MIB).toFixed(1)} MiB (${out.ratio.toFixed(3)}x); session ${sessionSeconds.toFixed(2)} s, of which commit ${commitSeconds.toFixed(2)} s; reclaim ${reclaimRuns} run(s), ${reclaimSeconds.toFixed(2)} s after the commit\nload average: ${out.loadavg}\n`,
    );
  }
} finally {
  if (root) rmSync(root, { recursive: true, force: true });
}
