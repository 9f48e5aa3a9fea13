#!/usr/bin/env node
// The fixed cost of every snapshot commit through `vnstore serve` (issue 12): a first snapshot of a
// bench/server-image.mjs image, then --warmup empty dirty-list snapshots (untimed: V8 optimises the
// commit path, as in a daemon that has served for a while), then N timed ones. An empty dirty-list
// snapshot writes no page (`unwritten: 'parent'`): all it costs is BEGIN (the parent's page table),
// PREPARE (fill from the parent, number the pages, manifest, fsyncs) and COMMIT (the catalog record).
// Prints the server's CPU seconds per empty snapshot (whole process, and its main thread; /proc
// counts in 10 ms ticks, so the N snapshots are measured together) and the medians of BEGIN,
// PREPARE and COMMIT as the agent sees them. Run `npm run build` first.
//   node bench/empty-commit.mjs [--mib 256] [--n 20] [--warmup 10] [--server-root DIR] [--json] [--help]
// --server-root: the checkout whose dist/cli/bin.cjs serves (default: this one), to compare a base
// build against this one with the same agent. $BENCH_SERVE_NODE_ARGS: extra node flags for the
// server (e.g. "--cpu-prof --cpu-prof-dir=D").
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    n: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '10' },
    'server-root': { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  process.stdout.write(
    'usage: node bench/empty-commit.mjs [--mib 256] [--n 20] [--warmup 10] [--server-root DIR] [--json]\n' +
      "The server's CPU per empty dirty-list snapshot (format 3, through vnstore serve) and the agent's\n" +
      'median BEGIN / PREPARE / COMMIT. --server-root: the checkout whose dist/ serves (a base build).\n',
  );
  process.exit(0);
}
const serverRoot = resolve(args['server-root'] ?? root);
const CLI = join(serverRoot, 'dist', 'cli', 'bin.cjs');
const { AgentClient } = await import(join(root, 'dist', 'index.js'));
const { makeImage } = await import(join(root, 'bench', 'server-image.mjs'));
const { asExecutableRuns, emptySnapshot, startServe } = await import(join(root, 'bench', 'serve-child.mjs'));
// Agents and server allocate as `vnstore agent` and `vnstore serve` do (bin/vnstore's environment).
await asExecutableRuns(CLI);
const PAGE = 4096;
const now = () => performance.now() / 1000;
const log = (s) => process.stderr.write(`empty-commit: ${s}\n`);

/** CPU seconds (user + system) of a process or thread so far, from /proc. */
async function cpuOf(pid) {
  const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

function run(cmd, argv) {
  return new Promise((res, rej) =>
    spawn(cmd, argv, { stdio: 'ignore' }).on('exit', (c) => (c === 0 ? res() : rej(new Error(`${argv[1]} exited with ${c}`)))),
  );
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const work = await mkdtemp(join(tmpdir(), 'vnstore-empty-commit-'));
let child;
try {
  const store = join(work, 'store');
  await run(process.execPath, [CLI, 'init', '--store', store, '--format', '3']);
  const token = (await readFile(join(store, 'access-token'), 'utf8')).trim();
  const srv = await startServe(CLI, store);
  child = srv.child;
  const client = await AgentClient.connect({ server: srv.address, token });
  const image = makeImage(Number(args.mib), 1);
  const first = await client.beginSession({ vm: 'vm', memoryBytes: image.length, parent: 'none' });
  for (let o = 0; o < image.length; o += 4096 * PAGE) await first.writePages(o / PAGE, image.subarray(o, o + 4096 * PAGE));
  await first.commit({ byteLength: image.length, unwritten: 'zero' });
  log(`first snapshot of ${args.mib} MiB stored`);

  const empty = () => emptySnapshot(client, image.length);
  for (let k = 0; k < Number(args.warmup); k++) await empty();
  const n = Number(args.n);
  const cpu0 = await cpuOf(child.pid);
  const main0 = await cpuOf(`${child.pid}/task/${child.pid}`);
  const t0 = now();
  const times = [];
  for (let k = 0; k < n; k++) times.push(await empty());
  const wall = now() - t0;
  const serverCpu = (await cpuOf(child.pid)) - cpu0;
  const serverMainCpu = (await cpuOf(`${child.pid}/task/${child.pid}`)) - main0;
  await client.close();
  const ms = (s) => +(s * 1000).toFixed(2);
  const result = {
    date: new Date().toISOString(),
    serverRoot,
    imageMiB: Number(args.mib),
    snapshots: n,
    loadavg: (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number),
    serverCpuMsPerSnapshot: ms(serverCpu / n),
    serverMainThreadCpuMsPerSnapshot: ms(serverMainCpu / n),
    wallMsPerSnapshot: ms(wall / n),
    medianMs: {
      begin: ms(median(times.map((t) => t.begin))),
      prepare: ms(median(times.map((t) => t.prepare))),
      commit: ms(median(times.map((t) => t.commit))),
    },
  };
  if (args.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else
    for (const [k, v] of Object.entries(result)) process.stdout.write(`${k.padEnd(34)} ${typeof v === 'object' ? JSON.stringify(v) : v}\n`);
} finally {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((res) => child.on('exit', res));
  }
  await rm(work, { recursive: true, force: true });
}
