#!/usr/bin/env node
// The engine benchmark's puts and restores through the library in ONE long-lived process, as the
// snapshot daemon (`vnstore serve`) will run them: the store is opened once, with its page workers
// started from open, and each snapshot is a session (begin, writeFileRange of the whole image,
// commit) and each restore a restoreSnapshot into a new file. Run `npm run build` first.
//   node bench/daemon.mjs [--scale F] [--repeat R] [--work-dir DIR] [--json]
//
// Same data set and baseline as bench/engine.mjs (single-thread BLAKE3, one blake3() call per page,
// over the same bytes, in this process). The timings exclude Node's start-up and the store's open
// (reported apart): this is what the engine itself does per snapshot, not what issue 2's targets
// measure (whole `vnstore put` / `restore` commands, start-up included: bench/engine.mjs).
import { mkdtemp, open, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { hashBaseline, warm } from './baseline.mjs';

// `vnstore serve` will run from the vnstore executable, which sizes libuv's thread pool to the cores
// (2 to 4) before Node starts it (src/cli/bin.cts). A script run as an ES module cannot: Node starts
// the pool while loading it. So, unless the size is given, this runs itself again with it set.
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (process.env.UV_THREADPOOL_SIZE === undefined) {
  const { sizeThreadPool } = await import(join(root, 'dist', 'cli', 'thread-pool-size.cjs'));
  const env = { ...process.env };
  sizeThreadPool(env);
  const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env,
  });
  process.exit(child.status ?? 1);
}

const dist = (p) => import(join(root, 'dist', p));
const { ENGINE_WORKLOAD, Workload, writeWorkload } = await dist('sim/workload.js');
const { Store, restoreSnapshot } = await dist('index.js');
const { sameBytes } = await dist('bench/files.js');

const { values: args } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    repeat: { type: 'string', default: '1' },
    'work-dir': { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const scale = Number(args.scale);
const repeat = Number(args.repeat);
if (!(scale > 0)) throw new Error('--scale must be a positive number');
if (!Number.isInteger(repeat) || repeat < 1) throw new Error('--repeat must be a positive integer');
const log = (s) => process.stderr.write(`daemon: ${s}\n`);
const MB = 1e6;
const now = () => performance.now() / 1000;

const work = await mkdtemp(join(args['work-dir'] ?? tmpdir(), 'vnstore-daemon-'));
try {
  const params = { ...ENGINE_WORKLOAD, memMiB: ENGINE_WORKLOAD.memMiB.map((m) => m * scale) };
  const w = new Workload(params);
  log(`generating ${w.images().length} images in ${work}`);
  const images = await writeWorkload(join(work, 'images'), w);
  spawnSync('sync');
  const bytesOf = (list) => list.reduce((s, f) => s + f.bytes, 0);
  const first = images.filter((f) => f.snap === 0);
  const later = images.filter((f) => f.snap > 0);

  const runs = [];
  for (let r = 0; r < repeat; r++) {
    if (repeat > 1) log(`run ${r + 1} of ${repeat}`);
    runs.push(await runOnce(join(work, `store${r}`)));
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const med = (key) => median(runs.map((x) => x[key]));
  const result = {
    date: new Date().toISOString(),
    command: `node bench/daemon.mjs${process.argv.slice(2).length ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version, threadPool: Number(process.env.UV_THREADPOOL_SIZE) },
    workload: w.params,
    hashMbPerSec: med('hashMbPerSec'),
    openSeconds: med('openSeconds'),
    firstMbPerSec: med('firstMbPerSec'),
    consecutiveMbPerSec: med('consecutiveMbPerSec'),
    restoreMbPerSec: med('restoreMbPerSec'),
    verified: Math.min(...runs.map((x) => x.verified)),
    images: images.length,
    repeat,
    runs,
  };
  result.ratios = {
    first: result.firstMbPerSec / result.hashMbPerSec,
    consecutive: result.consecutiveMbPerSec / result.hashMbPerSec,
    restore: result.restoreMbPerSec / result.hashMbPerSec,
  };
  if (args.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else process.stdout.write(render(result));

  async function runOnce(storeDir) {
    log('single-thread BLAKE3 baseline (one call per 4 KiB page)');
    const hash = (await hashBaseline(images)).mbPerSec;
    await Store.init(storeDir);
    const t0 = now();
    const store = await Store.open(storeDir); // workers started from open, as a daemon keeps them
    await store.pool.whenReady();
    const openSeconds = now() - t0;
    try {
      const put = async (list, label) => {
        let seconds = 0;
        for (const f of list) {
          await warm(f.path); // the baseline hashes bytes already in memory: the same start
          const t = now();
          const s = await store.beginSession({ vm: f.vm });
          await s.writeFileRange(0, f.path, 0, f.bytes);
          f.record = await s.commit();
          const dt = now() - t;
          seconds += dt;
          log(`  put ${f.vm}/${f.snap} ${label}: ${(f.bytes / MB / dt).toFixed(0)} MB/s`);
        }
        return bytesOf(list) / MB / seconds;
      };
      log('first snapshots');
      const firstMbPerSec = await put(first, 'first');
      log('consecutive snapshots');
      const consecutiveMbPerSec = await put(later, 'consecutive');
      log('restores: every image, to a new file, verified against the original');
      let seconds = 0;
      let verified = 0;
      for (const f of images) {
        const out = join(work, 'restored.img');
        const t = now();
        const fh = await open(out, 'wx');
        try {
          await restoreSnapshot(store, f.record, {
            write: (b) => writeAll(fh, b),
            writeAt: (b, pos) => writeAll(fh, b, pos),
            setLength: (n) => fh.truncate(n),
            filePath: out,
          });
        } finally {
          await fh.close();
        }
        seconds += now() - t;
        if (await sameBytes(f.path, out)) verified++;
        else log(`  restored ${f.vm}/${f.snap} DIFFERS from the original`);
        await rm(out, { force: true });
      }
      return {
        hashMbPerSec: hash,
        openSeconds,
        firstMbPerSec,
        consecutiveMbPerSec,
        restoreMbPerSec: bytesOf(images) / MB / seconds,
        verified,
      };
    } finally {
      await store.close();
      await rm(storeDir, { recursive: true, force: true });
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}

async function writeAll(fh, b, position) {
  for (let off = 0; off < b.length;) {
    const { bytesWritten } = await fh.write(b, off, b.length - off, position === undefined ? null : position + off);
    off += bytesWritten;
  }
}

function render(r) {
  const x = (v) => `${v.toFixed(2)}x`;
  return [
    `## vnstore through the library, one long-lived process, ${r.date.slice(0, 10)}`,
    '',
    `Command: \`${r.command}\` on ${r.machine.cpus} x ${r.machine.cpuModel}, Node ${r.machine.node} (libuv pool: ${r.machine.threadPool} threads); ` +
      `${r.workload.vms} VMs (${r.workload.memMiB.join(', ')} MiB) x ${r.workload.snapshots} snapshots.`,
    `Store opened once (workers started and ready): ${(r.openSeconds * 1000).toFixed(0)} ms, not counted below.`,
    '',
    '| measure | MB/s | ÷ BLAKE3 | (issue 2 target, for whole commands) |',
    '| --- | ---: | ---: | ---: |',
    `| single-thread BLAKE3 (baseline) | ${r.hashMbPerSec.toFixed(0)} | 1.00x | |`,
    `| sessions, first snapshots | ${r.firstMbPerSec.toFixed(0)} | ${x(r.ratios.first)} | >= 0.5x |`,
    `| sessions, consecutive snapshots | ${r.consecutiveMbPerSec.toFixed(0)} | ${x(r.ratios.consecutive)} | >= 1.5x |`,
    `| restoreSnapshot to a file (verified) | ${r.restoreMbPerSec.toFixed(0)} | ${x(r.ratios.restore)} | >= 0.8x |`,
    '',
    `Restored images identical to the originals: ${r.verified}/${r.images}${r.repeat > 1 ? ' in every run' : ''}.` +
      (r.repeat > 1 ? ` Medians of ${r.repeat} runs.` : ''),
    '',
  ].join('\n');
}
