#!/usr/bin/env node
// Live migration of a real QEMU guest (TCG) into vnstore against the plain baseline
// `migrate "exec:cat > FILE"`: QEMU's own total migration time and downtime (query-migrate), for
// the same running guest, alternating targets. Run `npm run build` first; needs qemu-system-x86_64
// and busybox-static (the guest is test/qemu/build-guest.sh's).
//   node bench/qemu.mjs [--rounds R] [--mem MiB] [--bandwidth default|max] [--json]
//   BENCH_TARGETS=cat,vnstore-listen (a subset of the targets below, in that order)
//   (vnstore-mem and vnstore-listen-mem: the same receivers with VNSTORE_QEMU_SPOOL=memory, the
//   stream held in memory instead of spooled to a file; spool-only: vnstore's early spool module
//   alone, which copies the stream to its file and exits, nothing stored; vnstore-b: `exec:` into another build's
//   executable, BENCH_VNSTORE_B=/path/to/dist/cli/bin.cjs, for an A/B of two builds in one run)
//
// Targets: `exec:cat > FILE`; `exec:node -e 'stdin.resume()'` (Node's start-up alone);
// `exec:vnstore qemu receive` (Node start-up and store open are part of the migration); a
// pre-started Node TCP server that discards the stream; `vnstore qemu receive --listen` started
// beforehand (a daemon), QEMU migrating to `tcp:`. Round 1 into vnstore is a cold store (every page new); later rounds have the previous snapshot
// as parent. --bandwidth max lifts QEMU's default 128 MiB/s cap, so the target is the limit.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { buildGuest, lastTick, migrate, startGuest, vnstoreBin, waitFor } from '../test/qemu/harness.mjs';

const { values: opts } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    mem: { type: 'string', default: '128' },
    bandwidth: { type: 'string', default: 'default' },
    json: { type: 'boolean', default: false },
  },
});
const rounds = Number(opts.rounds);
const TARGETS = (process.env.BENCH_TARGETS ?? 'cat,node-drain,vnstore,tcp-drain,vnstore-listen').split(',');
const DRAIN = 'process.stdin.resume()';
// spool-only: vnstore's own early spool (dist/qemu/early-spool.cjs) and nothing else of vnstore.
const EARLY_SPOOL = join(vnstoreBin, '..', '..', 'qemu', 'early-spool.cjs');
// The floor of any Node exec: receiver that keeps the stream: Node's start-up, then 1 MiB
// synchronous reads written to a file (what vnstore's spool does, without loading vnstore).
// It prints when it first read (ms since its process started) on stderr, as vnstore's early spool
// does with VNSTORE_TRACE=1: the start-up during which QEMU waited on the full pipe.
const SPOOL =
  "const fs=require('fs'),b=Buffer.allocUnsafe(1<<20),o=fs.openSync(process.argv[1],'w');let f;for(let n;(n=fs.readSync(0,b,0,b.length,null))>0;){f??=performance.now();fs.writeSync(o,b,0,n)}process.stderr.write('[trace '+f.toFixed(1)+' ms] early spool: first bytes read\\n')";

/** When an exec: receiver first read, from its trace line; undefined for the others. */
function firstRead(traceFile) {
  const m = existsSync(traceFile) && /\[trace +([\d.]+) ms\] early spool: first bytes read/.exec(readFileSync(traceFile, 'utf8'));
  return m ? Math.round(Number(m[1])) : undefined;
}

/** The other build's executable for the vnstore-b target. */
function otherBin() {
  const bin = process.env.BENCH_VNSTORE_B;
  if (!bin || !existsSync(bin)) throw new Error('target vnstore-b needs BENCH_VNSTORE_B=/path/to/dist/cli/bin.cjs');
  return bin;
}

/** A pre-started TCP sink that discards the stream: the baseline for --listen. */
async function tcpDrain() {
  const child = spawn(
    process.execPath,
    [
      '-e',
      "const s=require('net').createServer(c=>{c.resume();c.on('end',()=>{s.close()})}).listen(0,'127.0.0.1',()=>console.log(s.address().port))",
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const port = await new Promise((res) => child.stdout.once('data', (d) => res(Number(String(d).trim()))));
  const exited = new Promise((res) => child.once('exit', res));
  return { uri: `tcp:127.0.0.1:${port}`, done: () => exited };
}

/** A receiver started before the migration, as a snapshot daemon would be: `--listen tcp:127.0.0.1:0`. */
async function listeningReceiver(store, vm, spool) {
  const env = spool ? { ...process.env, VNSTORE_QEMU_SPOOL: spool } : process.env;
  const child = spawn(process.execPath, [vnstoreBin, 'qemu', 'receive', '--vm', vm, '--listen', 'tcp:127.0.0.1:0', '--store', store], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  let stderr = '';
  const exited = new Promise((res) => child.once('exit', (code) => res(code)));
  const port = await new Promise((resolve, reject) => {
    child.stderr.on('data', (d) => {
      stderr += d;
      const m = /listening on tcp:127\.0\.0\.1:(\d+)/.exec(stderr);
      if (m) resolve(Number(m[1]));
    });
    exited.then(() => reject(new Error(`receiver exited: ${stderr}`)));
  });
  return {
    uri: `tcp:127.0.0.1:${port}`,
    done: () =>
      exited.then((code) => {
        if (code !== 0) throw new Error(`receiver failed: ${stderr}`);
      }),
  };
}
const dir = mkdtempSync(join(tmpdir(), 'vnstore-bench-qemu-'));
const store = join(dir, 'store');
const results = [];
let vm;
let maxBandwidth;
try {
  spawnSync(process.execPath, [vnstoreBin, 'init', '--store', store], { stdio: 'inherit' });
  vm = await startGuest({ dir, name: 'bench', guest: buildGuest(), memMiB: Number(opts.mem) });
  if (opts.bandwidth === 'max') await vm.qmp.cmd('migrate-set-parameters', { 'max-bandwidth': 64 * 2 ** 30 });
  // One QEMU, one setting for every target: recorded so that the report says what it was.
  maxBandwidth = (await vm.qmp.cmd('query-migrate-parameters'))['max-bandwidth'];
  await waitFor('the guest counting', () => lastTick(vm.consolePath) >= 3, 120_000);
  for (let r = 1; r <= rounds; r++) {
    for (const target of TARGETS) {
      const file = join(dir, `cat-${r}.mig`);
      const idFile = join(dir, `r${r}-${target}.id`);
      const traceFile = join(dir, `r${r}-${target}.trace`);
      const listener = target.startsWith('vnstore-listen')
        ? await listeningReceiver(store, 'bench-listen', target === 'vnstore-listen-mem' ? 'memory' : undefined)
        : target === 'tcp-drain'
          ? await tcpDrain()
          : undefined;
      const uri =
        target === 'cat'
          ? `exec:cat > ${file}`
          : target === 'node-drain'
            ? `exec:${process.execPath} -e "${DRAIN}"`
            : target === 'node-spool'
              ? `exec:${process.execPath} -e "${SPOOL}" ${file} 2> ${traceFile}`
              : target === 'spool-only'
                ? `exec:VNSTORE_TRACE=1 ${process.execPath} -e "require('${EARLY_SPOOL}').startEarlySpool()" 2> ${traceFile}`
                : (listener?.uri ??
                  `exec:VNSTORE_TRACE=1 ${target === 'vnstore-mem' ? 'VNSTORE_QEMU_SPOOL=memory ' : ''}${process.execPath} ${target === 'vnstore-b' ? otherBin() : vnstoreBin} qemu receive --vm bench --store ${store} > ${idFile} 2> ${traceFile}`);
      const t0 = performance.now();
      const info = await migrate(vm, uri);
      const wallMs = performance.now() - t0;
      await listener?.done();
      // The exec: receiver stores the stream after QEMU is done: wait for it, so that its work
      // never overlaps the next target's migration.
      if (target === 'vnstore' || target === 'vnstore-mem' || target === 'vnstore-b')
        await waitFor(`round ${r}: receive's id`, () => existsSync(idFile) && readFileSync(idFile, 'utf8').endsWith('\n'), 120_000);
      if (info.status !== 'completed') throw new Error(`round ${r} ${target}: ${info.status}`);
      results.push({
        round: r,
        target,
        totalMs: info['total-time'],
        downtimeMs: info.downtime,
        setupMs: info['setup-time'],
        wallMs: Math.round(wallMs),
        transferredBytes: info.ram?.transferred,
        iterations: info.ram?.['dirty-sync-count'],
        // ms from the exec: receiver's start to its first read (vnstore's early spool, the node floor)
        firstReadMs: firstRead(traceFile),
      });
      if (target === 'cat' || target === 'node-spool') rmSync(file, { force: true });
      if (!opts.json) console.error(`round ${r} ${target}: total ${info['total-time']} ms, downtime ${info.downtime} ms`);
      // Let the guest run between migrations, as a daemon's snapshots would.
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
} finally {
  await vm?.stop();
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = {};
for (const target of TARGETS) {
  const rs = results.filter((x) => x.target === target);
  summary[target] = {
    totalMsMedian: median(rs.map((x) => x.totalMs)),
    downtimeMsMedian: median(rs.map((x) => x.downtimeMs)),
    totalMs: rs.map((x) => x.totalMs),
    downtimeMs: rs.map((x) => x.downtimeMs),
    firstReadMs: rs.map((x) => x.firstReadMs),
  };
}
for (const target of TARGETS) if (summary.cat) summary[target].totalRatioToCat = summary[target].totalMsMedian / summary.cat.totalMsMedian;
const storeBytes = spawnSync('du', ['-sb', store], { encoding: 'utf8' }).stdout.split('\t')[0];
const report = {
  mem: Number(opts.mem),
  bandwidth: opts.bandwidth,
  maxBandwidth,
  loadavg: readFileSync('/proc/loadavg', 'utf8').trim(),
  rounds,
  results,
  summary,
  storeBytes: Number(storeBytes),
  date: new Date().toISOString(),
};
rmSync(dir, { recursive: true, force: true });
if (opts.json) console.log(JSON.stringify(report));
else {
  console.log(
    `guest ${opts.mem} MiB, bandwidth ${opts.bandwidth} (max-bandwidth ${maxBandwidth} B/s), ${rounds} round(s) per target, load ${report.loadavg}`,
  );
  console.log('round target   total ms  downtime ms  transferred');
  for (const x of results)
    console.log(
      `${String(x.round).padStart(5)} ${x.target.padEnd(8)} ${String(x.totalMs).padStart(8)} ${String(x.downtimeMs).padStart(12)} ${String(x.transferredBytes).padStart(12)}`,
    );
  for (const t of TARGETS)
    console.log(
      `${t.padEnd(15)} median total ${summary[t].totalMsMedian} ms${summary.cat ? ` (x${summary[t].totalRatioToCat.toFixed(3)} of cat)` : ''}, median downtime ${summary[t].downtimeMsMedian} ms`,
    );
  console.log(`store ${storeBytes} B`);
}
