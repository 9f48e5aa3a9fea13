#!/usr/bin/env node
/**
 * gc's peak memory against pack size (issue 16): for each pack size, builds a store of one VM whose
 * second snapshot rewrites every other page of the first (random, incompressible pages), forgets the
 * first, then runs a gc that rewrites every pack with dead bytes in a child process and reports its
 * peak RSS (VmHWM; process.resourceUsage().maxRSS where /proc is absent).
 *
 *   node bench/gc-rss.mjs [--data-mib 96] [--packs-mib 32,256] [--format 3|1] [--dist DIR] [--json]
 *
 * --format picks the store format (default 3, what init creates; 1 for the legacy layout and for --dist
 * builds older than format 3). --dist runs another build (an older commit's dist/) on the same workload. Uses the built dist/.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter, fillRandom, MIB, PAGE } from './dist-workload.mjs';

const { values } = parseArgs({
  options: {
    'data-mib': { type: 'string', default: '96' },
    'packs-mib': { type: 'string', default: '32,256' },
    dist: { type: 'string', default: DEFAULT_DIST },
    child: { type: 'string' },
    pack: { type: 'string' },
    json: { type: 'boolean', default: false },
    format: { type: 'string', default: '3' },
  },
});
const dist = path.resolve(values.dist);
const load = distImporter(dist);

function peakRssBytes() {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // no /proc: fall back below
  }
  return process.resourceUsage().maxRSS * 1024;
}

async function child(dir, packBytes) {
  const { Store } = await load('store/store.js');
  const { runGc } = await load('maintenance/gc.js');
  const store = await Store.open(dir, { workers: 0, packTargetBytes: packBytes });
  const rssOpen = peakRssBytes();
  // Every pack with a dead byte is rewritten (older builds: repackBelow; this one: maxUnused).
  const report = await runGc(store, { repackBelow: 1, maxUnused: { bytes: 0 } });
  const peak = peakRssBytes();
  await store.close();
  process.stdout.write(
    JSON.stringify({
      peakRssBytes: peak,
      peakRssAtOpenBytes: rssOpen,
      bytesCopied: report.result.bytesCopied,
      packsRewritten: report.result.packsRewritten,
      packsWritten: report.result.packsWritten.length,
      reclaimedBytes: report.result.reclaimedBytes,
    }) + '\n',
  );
}

async function build(dir, dataBytes, packBytes) {
  const { Store } = await load('store/store.js');
  const { forget } = await load('maintenance/forget.js');
  await Store.init(dir, { format: Number(values.format) });
  const store = await Store.open(dir, { workers: 0, packTargetBytes: packBytes });
  try {
    const pages = dataBytes / PAGE;
    const image = Buffer.allocUnsafe(dataBytes);
    fillRandom(image, 1);
    const put = async () => {
      const s = await store.beginSession({ vm: 'vm', parent: 'auto' });
      for (let p = 0; p < pages; p += 1024) await s.writePages(p, image.subarray(p * PAGE, Math.min(pages, p + 1024) * PAGE));
      return s.commit({ byteLength: dataBytes });
    };
    const first = await put();
    const fresh = Buffer.allocUnsafe(PAGE);
    for (let p = 0; p < pages; p += 2) {
      fillRandom(fresh, 1_000_003 + p);
      fresh.copy(image, p * PAGE);
    }
    await put();
    await forget(store, { ids: [first.id] });
  } finally {
    await store.close();
  }
}

if (values.child) {
  await child(values.child, Number(values.pack));
} else {
  const dataBytes = Number(values['data-mib']) * MIB;
  const rows = [];
  for (const packMib of values['packs-mib'].split(',').map(Number)) {
    const root = mkdtempSync(path.join(tmpdir(), 'vnstore-gc-rss-'));
    try {
      const dir = path.join(root, 'store');
      await build(dir, dataBytes, packMib * MIB);
      const r = spawnSync(
        process.execPath,
        [fileURLToPath(import.meta.url), '--child', dir, '--pack', String(packMib * MIB), '--dist', dist],
        { encoding: 'utf8' },
      );
      if (r.status !== 0) throw new Error(`gc child failed (${r.status}): ${r.stderr}`);
      rows.push({ packMib, ...JSON.parse(r.stdout.trim().split('\n').pop()) });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
  const out = { dataMib: Number(values['data-mib']), dist, loadavg: readFileSync('/proc/loadavg', 'utf8').trim(), rows };
  if (values.json) process.stdout.write(JSON.stringify(out) + '\n');
  else {
    for (const r of rows) {
      process.stdout.write(
        `pack ${r.packMib} MiB: gc peak RSS ${(r.peakRssBytes / MIB).toFixed(1)} MiB (at open ${(r.peakRssAtOpenBytes / MIB).toFixed(1)} MiB), copied ${(r.bytesCopied / MIB).toFixed(1)} MiB from ${r.packsRewritten} pack(s) into ${r.packsWritten}\n`,
      );
    }
    process.stdout.write(`load average: ${out.loadavg}\n`);
  }
}
