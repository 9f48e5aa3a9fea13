#!/usr/bin/env node
// Issue 12's ratios through `vnstore serve`: agents (in this process, over loopback TCP) and the
// server (a child process) on this machine, against single-thread BLAKE3 (one blake3() call per
// page) over the same bytes in memory. Run `npm run build` first.
//   node bench/server.mjs [--mib N] [--agents-mib N] [--warmup-mib N] [--warmup-rounds N] [--reps N] [--format 1|3] [--writes-in-flight N] [--no-aggregate] [--json]
// --format: the store format `vnstore init --format` creates (default: init's own default).
// --warmup-mib (default: --mib) and --warmup-rounds (default 10): before the timed rounds, each
// warm-up round stores a first snapshot of a new VM (other bytes), a consecutive one, one from a
// dirty list, and restores it, so both processes run the hot code V8 has optimised, as a daemon
// that has served for a while does. In a fresh server V8's optimising compiler took about a quarter
// of the server's CPU during its first snapshot; after one first snapshot and ten consecutive ones
// its threads still took 342 of the server's 1580 perf samples in the timed first snapshot, against
// 38-80 per half second late in the warm-up (functions that run once per snapshot, such as
// numberPages, are optimised over many snapshots; bench/RESULTS.md). 0 times a fresh server.
// --writes-in-flight (default 2, as `vnstore agent push` keeps): a push's 16 MiB write calls are
// issued before the earlier ones settle; 1 awaits each call before the next (sessions 17 and earlier).
// --reps (default 5): timed rounds, each a new VM: first snapshot, consecutive from the whole image,
// consecutive from a 10% dirty list, an empty dirty list, restore, each against a baseline measured
// just before the round. Each ratio is the median of the rounds' (one ~0.2-0.7 s phase moved by
// ±30% from run to run on this shared machine); every round's ratio is in the JSON too.
// $BENCH_SERVE_NODE_ARGS: extra node flags for the server child (e.g. "--cpu-prof --cpu-prof-dir=D").
// $BENCH_SERVE_STDOUT: a file for what the server prints (e.g. with --trace-opt), with a "### PHASE
// round N" line where each timed phase starts and "### end" where it ends.
// Figures: first snapshot, consecutive from the whole image, consecutive with a 10% dirty-page list
// (logical bytes / time), restore (verified client-side), wire bytes of the consecutive snapshot
// against (its new pages' bytes + 40 B per offered page) from the server's metrics, aggregate ingest
// with 1, 2, 4 and 8 agents, and the server's peak RSS (VmHWM) after the 8-agent run.
import { spawn } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { blake3 } from '@napi-rs/blake-hash';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(root, 'dist', 'cli', 'bin.cjs');
const { AgentClient } = await import(join(root, 'dist', 'index.js'));
const { writeWindow } = await import(join(root, 'dist', 'agent', 'write-window.js'));
const { getCodec } = await import(join(root, 'dist', 'chunk', 'codec.js'));
const { makeImage } = await import(join(root, 'bench', 'server-image.mjs'));
const { asExecutableRuns, serverNodeFlags, startServe } = await import(join(root, 'bench', 'serve-child.mjs'));
// Agents and server allocate as `vnstore agent` and `vnstore serve` do (bin/vnstore's environment).
await asExecutableRuns(CLI);
const { values: args } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    'agents-mib': { type: 'string', default: '64' },
    json: { type: 'boolean', default: false },
    'no-aggregate': { type: 'boolean', default: false },
    'warmup-mib': { type: 'string' },
    'warmup-rounds': { type: 'string', default: '10' },
    reps: { type: 'string', default: '5' },
    format: { type: 'string' },
    'writes-in-flight': { type: 'string', default: '2' },
  },
});
const PAGE = 4096;
const MB = 1e6;
const log = (s) => process.stderr.write(`server-bench: ${s}\n`);
const now = () => performance.now() / 1000;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * MB/s of single-thread BLAKE3, one call per page, over `image`: the best of three passes. A first
 * pass ran at ~650 MB/s and the next ones at ~870-920 (call and loop warm-up), so one pass made the
 * baseline, and every ratio, move by a quarter from run to run; the best pass is the conservative
 * choice (the highest baseline, the lowest ratios).
 */
function baseline(image) {
  const passes = [];
  for (let r = 0; r < 3; r++) {
    const t = now();
    for (let o = 0; o < image.length; o += PAGE) blake3(image.subarray(o, o + PAGE));
    passes.push(image.length / MB / (now() - t));
  }
  return { best: Math.max(...passes), passes };
}

/** CPU seconds (user + system) of a process so far, from /proc (all its threads). */
async function cpuOf(pid) {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** CPU seconds of this process's main thread so far (the rest of process.cpuUsage is the thread pool and V8's helpers). */
const mainThreadCpu = () => cpuOf(`${process.pid}/task/${process.pid}`);

/** Runs `fn`, returning its wall seconds and the CPU seconds of this process and of the server. */
async function timed(serverPid, fn) {
  const cpu0 = process.cpuUsage();
  const main0 = await mainThreadCpu();
  const srv0 = await cpuOf(serverPid);
  const srvMain0 = await cpuOf(`${serverPid}/task/${serverPid}`);
  const t0 = now();
  const us0 = process.hrtime.bigint() / 1000n;
  const value = await fn();
  const wall = now() - t0;
  const c = process.cpuUsage(cpu0);
  const agentMainCpu = (await mainThreadCpu()) - main0;
  const serverMainCpu = (await cpuOf(`${serverPid}/task/${serverPid}`)) - srvMain0;
  // The phase's window in the monotonic clock (µs) that --cpu-prof profiles use, to cut one to a phase.
  const window = [Number(us0), Number(process.hrtime.bigint() / 1000n)];
  return {
    value,
    wall,
    window,
    agentCpu: (c.user + c.system) / 1e6,
    agentMainCpu,
    serverMainCpu,
    serverCpu: (await cpuOf(serverPid)) - srv0,
  };
}

/**
 * The server's wire-in counter. node:http, not fetch(): fetch's HTTP parser is WebAssembly, and its
 * first use left V8 compiling that module on a background thread through the next timed phase
 * (148 of the agent's 401 perf samples in a consecutive snapshot).
 */
async function wireIn(metricsUrl) {
  const text = await new Promise((res, rej) =>
    get(metricsUrl, (r) => {
      let body = '';
      r.setEncoding('utf8').on('data', (d) => (body += d));
      r.on('end', () => res(body)).on('error', rej);
    }).on('error', rej),
  );
  return Number(/^vnstore_wire_bytes_total\{direction="in"\} (\S+)$/m.exec(text)?.[1] ?? 0);
}

/** Write calls a push keeps in flight (--writes-in-flight; `vnstore agent push` keeps 2). */
const writesInFlight = Number(args['writes-in-flight']);
/** The send buffers of dirty-list pushes, one per write in flight (touched once here, as a running daemon's are). */
const gathers = Array.from({ length: writesInFlight }, () => Buffer.alloc(4096 * PAGE, 1));

/** Stores `image` as a snapshot of `vm`; `seconds` splits the wall time into begin, writes and prepare + commit. */
async function push(client, vm, image, opts = {}) {
  const t0 = now();
  const s = await client.beginSession({ vm, memoryBytes: image.length, parent: opts.parent ?? 'auto' });
  const t1 = now();
  const block = 4096 * PAGE;
  const writes = writeWindow(writesInFlight);
  if (opts.dirty) {
    // The dirty pages are gathered (timed) into reused buffers, as a daemon gathers them into its
    // send buffer: Buffer.concat of 4096 page views into fresh memory took 0.45 s of this process's
    // main thread per 256 MiB image under load, mostly page faults, more than the snapshot itself.
    // Buffer n % writesInFlight is gathered into once call n - writesInFlight has settled (the window's bound).
    for (let k = 0, n = 0; k < opts.dirty.length; k += 4096, n++) {
      const part = opts.dirty.slice(k, k + 4096);
      const gather = gathers[n % writesInFlight];
      for (let j = 0; j < part.length; j++) image.copy(gather, j * PAGE, part[j] * PAGE, (part[j] + 1) * PAGE);
      await writes.add(s.writeScattered(part, gather.subarray(0, part.length * PAGE)));
    }
  } else for (let o = 0; o < image.length; o += block) await writes.add(s.writePages(o / PAGE, image.subarray(o, o + block)));
  await writes.drain();
  const t2 = now();
  const rec = await s.commit({ byteLength: image.length, unwritten: opts.dirty ? 'parent' : 'zero' });
  return { rec, stats: s.stats, seconds: { begin: t1 - t0, writes: t2 - t1, commit: now() - t2 } };
}

const work = await mkdtemp(join(tmpdir(), 'vnstore-server-bench-'));
try {
  const store = join(work, 'store');
  await new Promise((res, rej) =>
    spawn(process.execPath, [CLI, 'init', '--store', store, ...(args.format ? ['--format', args.format] : [])], { stdio: 'ignore' }).on(
      'exit',
      (c) => (c === 0 ? res() : rej(new Error('init failed'))),
    ),
  );
  const token = (await readFile(join(store, 'access-token'), 'utf8')).trim();
  const mib = Number(args.mib);
  log(`images of ${mib} MiB`);
  const first = makeImage(mib, 1);
  const second = Buffer.alloc(first.length);
  const third = Buffer.alloc(first.length);
  const pages = first.length / PAGE;
  const zero = getCodec().zeroMask(first, pages);
  // 10% of the pages dirty (every tenth), with new random content.
  const dirty = [];
  for (let p = 0; p < pages; p += 10) dirty.push(p);
  /**
   * The images of timed round `rep` (new bytes in every non-zero page, so each round's first
   * snapshot stores them all): first, second (its 10% dirty pages rewritten word by word, so
   * incompressible) and third (the same pages changed again), in the buffers reused by every round.
   */
  const makeRound = (rep) => {
    for (let p = 0; p < pages; p++) if (!zero[p]) first.writeUInt32LE((0x9e3779b9 ^ rep) >>> 0, p * PAGE + 16);
    second.set(first);
    for (const p of dirty)
      for (let o = 0; o < PAGE; o += 4) second.writeUInt32LE((Math.imul(p + rep * pages, 2654435761) ^ o) >>> 0, p * PAGE + o);
    third.set(second);
    for (const p of dirty) third.writeUInt32LE(0xdeadbeef, p * PAGE + 8);
  };
  makeRound(0);
  const { best: base, passes: basePasses } = baseline(first);
  const srv = await startServe(CLI, store, { metrics: true });
  const client = await AgentClient.connect({ server: srv.address, token });
  const warmupMiB = Number(args['warmup-mib'] ?? mib);
  const warmupRounds = Number(args['warmup-rounds']);
  if (warmupMiB > 0) {
    const warmImage = makeImage(warmupMiB, 99);
    const warmDirty = [];
    for (let p = 0; p < warmImage.length / PAGE; p += 10) warmDirty.push(p);
    // The same kinds of pages as the timed images (zero ones too: they go as ranges, their own code).
    const warmZero = getCodec().zeroMask(warmImage, warmImage.length / PAGE);
    const warmNonZero = [];
    for (let p = 0; p < warmZero.length; p++) if (!warmZero[p]) warmNonZero.push(p);
    let warm;
    for (let round = 1; round <= warmupRounds; round++) {
      // A first snapshot of a new VM every round, then two consecutive ones (one from a dirty list):
      // after a single first snapshot in the warm-up, V8's compiler threads took 342 of the server's
      // 1580 perf samples in the timed first snapshot (bench/RESULTS.md, issue 12, session 14).
      for (const p of warmNonZero) warmImage.writeUInt32LE(round, p * PAGE + 16);
      warm = await push(client, `warmup${round}`, warmImage, { parent: 'none' });
      for (const p of warmDirty) warmImage.writeUInt32LE(round, p * PAGE + 8);
      warm = await push(client, `warmup${round}`, warmImage);
      for (const p of warmDirty) warmImage.writeUInt32LE(round + 0x10000, p * PAGE + 8);
      warm = await push(client, `warmup${round}`, warmImage, { dirty: warmDirty });
      await client.restore(warm.rec.id, () => undefined);
    }
  }
  const reps = Number(args.reps);
  const r = { first: [], consecutive: [], dirty10: [], restore: [], firstSteps: [], consSteps: [], dirtySteps: [], emptyDirty: [] };
  /** Per round: MB/s of `bytes` over the phase's wall time; CPU seconds of agent and server go to r.cpu. */
  r.cpu = [];
  r.windows = [];
  r.baselines = [];
  for (let rep = 0; rep < reps; rep++) {
    if (rep > 0) makeRound(rep);
    // Each round against a baseline measured just before it: this machine's speed drifts over a run
    // (one run's three start-of-run passes all came out at ~718 MB/s, against 960-980 in the runs
    // beside it, while its phases ran no slower), and a ratio must divide figures taken together.
    r.baselines.push(rep === 0 ? { best: base, passes: basePasses } : baseline(first));
    const vm = `vm${rep}`;
    const cpu = {};
    const windows = {};
    const phase = async (name, bytes, fn) => {
      if (process.env.BENCH_SERVE_STDOUT) appendFileSync(process.env.BENCH_SERVE_STDOUT, `### ${name} round ${rep}\n`);
      const m = await timed(srv.child.pid, fn);
      if (process.env.BENCH_SERVE_STDOUT) appendFileSync(process.env.BENCH_SERVE_STDOUT, `### end\n`);
      r[name].push(bytes / MB / m.wall);
      cpu[name] = {
        wall: +m.wall.toFixed(3),
        agent: +m.agentCpu.toFixed(3),
        agentMainThread: +m.agentMainCpu.toFixed(2),
        server: +m.serverCpu.toFixed(2),
        serverMainThread: +m.serverMainCpu.toFixed(2),
      };
      windows[name] = m.window;
      return m.value;
    };
    r.firstSteps.push((await phase('first', first.length, () => push(client, vm, first))).seconds);
    const before = await wireIn(srv.metrics);
    const cons = await phase('consecutive', second.length, () => push(client, vm, second));
    const wire = (await wireIn(srv.metrics)) - before;
    if (rep === 0) {
      r.wireBytes = wire;
      r.wireBudget = cons.stats.pagesSent * PAGE + 40 * cons.stats.pagesOffered;
    }
    r.consSteps.push(cons.seconds);
    const dirtyPush = await phase('dirty10', third.length, () => push(client, vm, third, { dirty }));
    r.dirtySteps.push(dirtyPush.seconds);
    // What every snapshot pays whatever its size (begin with the parent's page table, prepare and
    // commit: manifest, fsyncs, catalog): a dirty-list snapshot that lists no page.
    r.emptyDirty.push((await push(client, vm, third, { dirty: [] })).seconds);
    let restored = 0;
    await phase('restore', first.length, () => client.restore(cons.rec.id, (b) => void (restored += b.length)));
    if (restored !== second.length) throw new Error(`restored ${restored} bytes, want ${second.length}`);
    r.cpu.push(cpu);
    r.windows.push(windows);
  }
  await client.close();
  r.aggregate = {};
  const amib = Number(args['agents-mib']);
  const agentImages = Array.from({ length: 8 }, (_, k) => makeImage(amib, 100 + k));
  for (const n of args['no-aggregate'] ? [] : [1, 2, 4, 8]) {
    const clients = await Promise.all(Array.from({ length: n }, () => AgentClient.connect({ server: srv.address, token })));
    const t = now();
    await Promise.all(clients.map((c, k) => push(c, `agg${n}-${k}`, agentImages[k], { parent: 'none' })));
    r.aggregate[n] = (n * amib * 1024 * 1024) / MB / (now() - t);
    await Promise.all(clients.map((c) => c.close()));
  }
  const status = await readFile(`/proc/${srv.child.pid}/status`, 'utf8').catch(() => '');
  r.serverPeakRssMiB = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
  srv.child.kill('SIGTERM');
  await new Promise((res) => srv.child.on('exit', res));
  /** Each round's MB/s of phase `name` over that round's own baseline. */
  const ratios = (name) => r[name].map((x, k) => x / r.baselines[k].best);
  const out = {
    date: new Date().toISOString(),
    imageMiB: mib,
    storeFormat: JSON.parse(await readFile(join(store, 'vnstore.json'), 'utf8').catch(() => '{}')).version ?? null,
    warmupMiB,
    warmupRounds,
    writesInFlight,
    loadavg: (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number),
    // The server's node flags: the executable's (bin/vnstore), then $BENCH_SERVE_NODE_ARGS.
    serverNodeFlags: serverNodeFlags(CLI),
    // Both processes' $GLIBC_TUNABLES (the executable's: bin/vnstore asks malloc for huge pages).
    glibcTunables: process.env.GLIBC_TUNABLES ?? null,
    baselineMBps: base,
    baselinePassesMBps: basePasses.map((x) => Math.round(x)),
    // Each ratio is the median of `reps` timed rounds (each a new VM: first snapshot, consecutive,
    // 10% dirty list, restore); the rounds' own ratios follow it.
    reps,
    roundBaselinesMBps: r.baselines.map((b) => Math.round(b.best)),
    firstRatio: median(ratios('first')),
    consecutiveRatio: median(ratios('consecutive')),
    dirty10Ratio: median(ratios('dirty10')),
    restoreRatio: median(ratios('restore')),
    ratiosByRound: {
      first: ratios('first').map((x) => +x.toFixed(3)),
      consecutive: ratios('consecutive').map((x) => +x.toFixed(3)),
      dirty10: ratios('dirty10').map((x) => +x.toFixed(3)),
      restore: ratios('restore').map((x) => +x.toFixed(3)),
    },
    firstMBps: median(r.first),
    consecutiveMBps: median(r.consecutive),
    dirty10MBps: median(r.dirty10),
    restoreMBps: median(r.restore),
    // Where each snapshot's wall time went, as the agent sees it: BEGIN, the writes, PREPARE + COMMIT.
    firstSteps: r.firstSteps,
    consecutiveSteps: r.consSteps,
    dirty10Steps: r.dirtySteps,
    emptyDirtySnapshotSeconds: r.emptyDirty,
    dirty10BudgetSeconds: third.length / MB / (8 * median(r.baselines.map((b) => b.best))),
    consecutiveWireBytes: r.wireBytes,
    wireBudgetBytes: r.wireBudget,
    wireRatio: r.wireBytes / r.wireBudget,
    aggregateMBps: r.aggregate,
    serverPeakRssMiB: r.serverPeakRssMiB,
    cpuSeconds: r.cpu,
    phaseWindowsUs: r.windows,
  };
  if (args.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  else
    for (const [k, v] of Object.entries(out))
      process.stdout.write(`${k.padEnd(22)} ${typeof v === 'number' ? v.toFixed(2) : JSON.stringify(v)}\n`);
} finally {
  await rm(work, { recursive: true, force: true });
}
