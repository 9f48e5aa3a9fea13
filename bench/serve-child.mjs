/** `vnstore serve` as a child process for the server benchmarks (server.mjs, server-floor.mjs, empty-commit.mjs). */
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** `vnstore version --json` as the executable (bin/vnstore, beside the dist/ that holds `cli`) runs it, asked once per process. */
const reports = new Map();
function executableReport(cli) {
  if (!reports.has(cli)) {
    const launcher = join(dirname(cli), '..', '..', 'bin', 'vnstore');
    const r = spawnSync(launcher, ['version', '--json'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${launcher} version --json: ${r.stderr || r.error}`);
    reports.set(cli, JSON.parse(r.stdout));
  }
  return reports.get(cli);
}

/**
 * The node flags the `vnstore` executable starts node with: the server is measured as `vnstore
 * serve` runs, though it is started as `node CLI` here (so that $BENCH_SERVE_NODE_ARGS can add
 * profiler flags).
 */
export function executableNodeFlags(cli) {
  return executableReport(cli).nodeFlags;
}

/**
 * The environment the `vnstore` executable runs node in: this process's, with $GLIBC_TUNABLES as
 * the executable sets it (glibc.malloc.hugetlb=1 added: docs/OPERATIONS.md, "Huge pages").
 */
export function executableEnv(cli) {
  const tunables = executableReport(cli).glibcTunables;
  const env = { ...process.env };
  if (tunables === null) delete env.GLIBC_TUNABLES;
  else env.GLIBC_TUNABLES = tunables;
  return env;
}

/**
 * Runs this benchmark again in a child process with the executable's environment (executableEnv),
 * unless it already has it, so that the agents it runs in-process allocate as `vnstore agent` does
 * (glibc reads its tunables only at start-up). Resolves in the child; in the parent, exits with
 * the child's status once it ends.
 */
export async function asExecutableRuns(cli) {
  const env = executableEnv(cli);
  if ((process.env.GLIBC_TUNABLES ?? null) === (env.GLIBC_TUNABLES ?? null)) return;
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], { env, stdio: 'inherit' });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
  const code = await new Promise((res) => child.on('exit', (c, s) => res(c ?? (s ? 1 : 0))));
  process.exit(code);
}

/** The server's node flags: the executable's (executableNodeFlags), then `nodeArgs`. */
export function serverNodeFlags(cli, nodeArgs = process.env.BENCH_SERVE_NODE_ARGS?.split(' ').filter(Boolean) ?? []) {
  return [...executableNodeFlags(cli), ...nodeArgs];
}

/**
 * Starts, in the executable's environment (executableEnv), `node FLAGS CLI serve --store STORE --listen 127.0.0.1:0` (and `--metrics 127.0.0.1:0` with
 * `metrics`), FLAGS being serverNodeFlags(cli, nodeArgs) ($BENCH_SERVE_NODE_ARGS by default, e.g.
 * profiler flags); resolves once it prints where it listens: { child, address, metrics }. With
 * $BENCH_SERVE_STDOUT set, everything the child prints goes to that file too (e.g. --trace-gc lines).
 */
export async function startServe(cli, store, { metrics = false, nodeArgs } = {}) {
  const argv = [
    ...serverNodeFlags(cli, nodeArgs),
    cli,
    'serve',
    '--store',
    store,
    '--listen',
    '127.0.0.1:0',
    ...(metrics ? ['--metrics', '127.0.0.1:0'] : []),
  ];
  const child = spawn(process.execPath, argv, { env: executableEnv(cli), stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  await new Promise((res, rej) => {
    child.stdout.on('data', (d) => {
      if (process.env.BENCH_SERVE_STDOUT) appendFileSync(process.env.BENCH_SERVE_STDOUT, d);
      out += d;
      if (/^listening /m.test(out) && (!metrics || /^metrics /m.test(out))) res();
    });
    child.on('exit', () => rej(new Error('vnstore serve exited')));
  });
  return { child, address: /^listening (\S+)$/m.exec(out)[1], metrics: metrics ? /^metrics (\S+)$/m.exec(out)[1] : undefined };
}

/**
 * One dirty-list snapshot of VM 'vm' that lists no page (what every snapshot through the server
 * costs whatever its size): wall seconds of BEGIN, PREPARE and COMMIT, and the committed record.
 */
export async function emptySnapshot(client, imageBytes) {
  const now = () => performance.now() / 1000;
  const t0 = now();
  const s = await client.beginSession({ vm: 'vm', memoryBytes: imageBytes, parent: 'auto' });
  const t1 = now();
  await s.prepare({ byteLength: imageBytes, unwritten: 'parent' });
  const t2 = now();
  const record = await s.commitPreparedHere();
  return { begin: t1 - t0, prepare: t2 - t1, commit: now() - t2, record };
}
