/** `vnstore serve` as a child process for the server benchmarks (server.mjs, server-floor.mjs, empty-commit.mjs). */
import { spawn } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/**
 * The node flags the `vnstore` executable (bin/vnstore, beside the dist/ that holds `cli`) starts
 * node with: the server is measured as `vnstore serve` runs, though it is started as `node CLI`
 * here (so that $BENCH_SERVE_NODE_ARGS can add profiler flags).
 */
export function executableNodeFlags(cli) {
  const launcher = readFileSync(join(dirname(cli), '..', '..', 'bin', 'vnstore'), 'utf8');
  const m = /^exec node((?: --\S+)*) /m.exec(launcher);
  if (!m) throw new Error('bin/vnstore: no "exec node FLAGS" line');
  return m[1].split(' ').filter(Boolean);
}

/** The server's node flags: the executable's (executableNodeFlags), then `nodeArgs`. */
export function serverNodeFlags(cli, nodeArgs = process.env.BENCH_SERVE_NODE_ARGS?.split(' ').filter(Boolean) ?? []) {
  return [...executableNodeFlags(cli), ...nodeArgs];
}

/**
 * Starts `node FLAGS CLI serve --store STORE --listen 127.0.0.1:0` (and `--metrics 127.0.0.1:0` with
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
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'ignore'] });
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
