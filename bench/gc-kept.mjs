#!/usr/bin/env node
/**
 * Issue 16's gc figures on a generated environment: after forgetting a third of the snapshots, a
 * default `vnstore gc`'s store bytes against the bounds of what is kept, every kept snapshot exact,
 * and gc's peak RSS at each pack size (VNSTORE_PACK_TARGET_BYTES, for put and gc alike).
 *
 *   npm run build && node bench/gc-kept.mjs [--format 3] [--packs-mib 8,32] [--mem-mib 64,96,128,192]
 *                                           [--work DIR] [--json FILE]
 *
 * The environment: the engine benchmark's contents (sim/workload ENGINE_WORKLOAD: 35% zero pages, 30%
 * shared between VMs, 10% dirty between snapshots) at the given VM sizes, 3 snapshots per VM. The
 * first snapshot of every VM is forgotten (a third: `forget --keep-last 2`; what it alone holds is
 * dead, ~8% of the store at 10% dirty, above gc's default 5% of unused bytes), then
 * `vnstore gc` runs with defaults under GNU time (peak RSS = its maximum resident set). Afterwards:
 * `check --read-data`, every kept snapshot restored and compared byte for byte, `stats --json`, and
 * `compact` with the store against bound (d) again. Bounds (b) (page dedup + per-page LZ4, what an
 * LZ4 store aims at) and (d) (zstd-3 over 64 KiB containers) come from computeIdeal over the kept
 * images only, as `vnstore bench` computes them.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter, MIB, timedCli } from './dist-workload.mjs';

const { values } = parseArgs({
  options: {
    format: { type: 'string', default: '3' },
    'packs-mib': { type: 'string', default: '8,32' },
    'mem-mib': { type: 'string', default: '64,96,128,192' },
    work: { type: 'string', default: '/tmp' },
    json: { type: 'string' },
  },
});
const load = distImporter(DEFAULT_DIST);
const { Workload, writeWorkload, ENGINE_WORKLOAD } = await load('sim/workload.js');
const { computeIdeal } = await load('sim/ideal.js');
const { dirSize, sameBytes } = await load('bench/files.js');
const CLI = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli', 'bin.cjs');

const log = (s) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const work = mkdtempSync(path.join(values.work, 'gc-kept-'));
const timeFile = path.join(work, 'time.txt');

/** Runs one vnstore command under GNU time, with `env` added (the pack size). */
const vn = (env, ...args) => timedCli(CLI, timeFile, args, env);

const result = { date: new Date().toISOString(), cpus: cpus().length, format: Number(values.format), load: { start: loadavg() }, runs: [] };
try {
  const params = { ...ENGINE_WORKLOAD, memMiB: values['mem-mib'].split(',').map(Number) };
  log(`generating ${params.vms} VMs × ${params.snapshots} snapshots (${params.memMiB.join(', ')} MiB)`);
  const images = await writeWorkload(path.join(work, 'images'), new Workload(params));
  const forgotten = (img) => img.snap === 0;
  const kept = images.filter((i) => !forgotten(i));
  log(`bounds of the ${kept.length} kept images`);
  const ideal = await computeIdeal(kept);
  result.workload = { params, images: images.length, logicalBytes: images.reduce((s, i) => s + i.bytes, 0) };
  result.keptBounds = { b: ideal.dedupLz4Bytes, d: ideal.dedupZstdContainerBytes, keptImages: kept.length };

  for (const packMib of values['packs-mib'].split(',').map(Number)) {
    const env = { VNSTORE_PACK_TARGET_BYTES: String(packMib * MIB) };
    const store = path.join(work, `store-${packMib}`);
    log(`pack ${packMib} MiB: putting ${images.length} images (load ${loadavg()})`);
    vn(env, 'init', '--store', store, '--format', values.format);
    const ids = new Map();
    for (const img of images) ids.set(img, JSON.parse(vn(env, 'put', '--store', store, '--vm', img.vm, '--json', img.path).stdout).id);
    const before = (await dirSize(store)).bytes;
    vn(env, 'forget', '--store', store, ...images.filter(forgotten).map((i) => ids.get(i)));
    log(`pack ${packMib} MiB: gc (load ${loadavg()})`);
    const gcRun = vn(env, 'gc', '--store', store, '--json');
    const gc = JSON.parse(gcRun.stdout);
    const afterGc = (await dirSize(store)).bytes;
    const summary = JSON.parse(vn(env, 'stats', '--store', store, '--json').stdout).summary;
    vn(env, 'check', '--store', store, '--read-data');
    const out = path.join(work, 'out.img');
    for (const img of kept) {
      vn(env, 'restore', '--store', store, ids.get(img), '-o', out);
      if (!(await sameBytes(img.path, out))) throw new Error(`pack ${packMib} MiB: restored ${img.vm}/${img.snap} differs`);
      rmSync(out);
    }
    log(`pack ${packMib} MiB: compact after gc`);
    vn(env, 'compact', '--store', store, '--min-age', '0');
    vn(env, 'check', '--store', store, '--read-data');
    const afterCompact = (await dirSize(store)).bytes;
    result.runs.push({
      packMib,
      storeBytesBeforeForget: before,
      gc: {
        wall: gcRun.wall,
        cpu: gcRun.cpu,
        peakRssBytes: gcRun.peakRssBytes,
        reclaimedBytes: gc.result.reclaimedBytes,
        packsRewritten: gc.result.packsRewritten,
        chunksCopied: gc.result.chunksCopied,
      },
      storeBytesAfterGc: afterGc,
      afterGcVsB: afterGc / ideal.dedupLz4Bytes,
      afterGcVsD: afterGc / ideal.dedupZstdContainerBytes,
      statsAfterGc: summary,
      keptRestoredExact: kept.length,
      storeBytesAfterCompact: afterCompact,
      afterCompactVsD: afterCompact / ideal.dedupZstdContainerBytes,
      load: loadavg(),
    });
    rmSync(store, { recursive: true, force: true });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
result.load.end = loadavg();
const r3 = (x) => x.toFixed(3);
const lines = [
  `${result.cpus} cores; store format ${result.format}; load ${result.load.start} → ${result.load.end}; kept bounds (b) ${result.keptBounds.b} B, (d) ${result.keptBounds.d} B`,
  '',
  '| pack size | store after gc | ÷ bound (b) | ÷ bound (d) | reclaimed | gc wall (CPU) s | gc peak RSS | kept exact | after compact ÷ (d) |',
  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...result.runs.map(
    (r) =>
      `| ${r.packMib} MiB | ${r.storeBytesAfterGc} | ${r3(r.afterGcVsB)} | ${r3(r.afterGcVsD)} | ${r.gc.reclaimedBytes} | ` +
      `${r.gc.wall.toFixed(1)} (${r.gc.cpu.toFixed(1)}) | ${(r.gc.peakRssBytes / MIB).toFixed(1)} MiB | ${r.keptRestoredExact} | ${r3(r.afterCompactVsD)} |`,
  ),
];
process.stdout.write(lines.join('\n') + '\n');
if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2) + '\n');
