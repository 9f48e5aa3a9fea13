#!/usr/bin/env node
// Repeated snapshots and restores through `vnstore serve`, for profiles and for how the figures of
// bench/server.mjs move as both processes warm up: a first snapshot of a bench/server-image.mjs
// image, then REPS consecutive whole-image snapshots (every tenth page changed each time), then REPS
// restores. Each line gives MB/s, the ratio against single-thread BLAKE3 (one call per page, over
// the same image in this run), wall and CPU seconds of agent and server, and the phase's window in
// the monotonic clock (µs) that --cpu-prof profiles use, to cut a profile to one phase.
// Run `npm run build` first.
//   node bench/server-repeat.mjs [MIB=128] [REPS=5] [cons|restore|all] [FORMAT]
// FORMAT: the store format `vnstore init --format` creates (1 or 3; default: init's own).
// $SERVE_ARGS: extra node flags for the server (e.g. "--cpu-prof --cpu-prof-dir=D", or "--trace-gc":
// what the server prints on stdout after it listens goes to this process's stderr).
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { blake3 } from '@napi-rs/blake-hash';
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const mib = Number(process.argv[2] ?? 128),
  reps = Number(process.argv[3] ?? 5),
  mode = process.argv[4] ?? 'all',
  format = process.argv[5];
const CLI = join(root, 'dist', 'cli', 'bin.cjs');
const { AgentClient } = await import(join(root, 'dist', 'index.js'));
const { makeImage } = await import(join(root, 'bench', 'server-image.mjs'));
const PAGE = 4096,
  MB = 1e6,
  now = () => performance.now() / 1000;
const work = await mkdtemp(join(tmpdir(), 'vnstore-server-repeat-'));
const store = join(work, 'store');
await new Promise((res) =>
  spawn(process.execPath, [CLI, 'init', '--store', store, ...(format ? ['--format', format] : [])], { stdio: 'ignore' }).on('exit', res),
);
const token = (await readFile(join(store, 'access-token'), 'utf8')).trim();
const child = spawn(
  process.execPath,
  [...(process.env.SERVE_ARGS?.split(' ').filter(Boolean) ?? []), CLI, 'serve', '--store', store, '--listen', '127.0.0.1:0'],
  { stdio: ['ignore', 'pipe', 'ignore'] },
);
let out = '';
await new Promise((res) =>
  child.stdout.on('data', (d) => {
    out += d;
    if (/^listening /m.test(out)) res();
  }),
);
const address = /^listening (\S+)$/m.exec(out)[1];
child.stdout.on('data', (d) => process.stderr.write(d));
const client = await AgentClient.connect({ server: address, token });
const img = makeImage(mib, 1);
let t = now();
for (let o = 0; o < img.length; o += PAGE) blake3(img.subarray(o, o + PAGE));
const base = img.length / MB / (now() - t);
const push = async (image) => {
  const s = await client.beginSession({ vm: 'vm', memoryBytes: image.length, parent: 'auto' });
  for (let o = 0; o < image.length; o += 4096 * PAGE) await s.writePages(o / PAGE, image.subarray(o, o + 4096 * PAGE));
  return s.commit({ byteLength: image.length, unwritten: 'zero' });
};
const stat = async () => (await readFile(`/proc/${child.pid}/stat`, 'utf8')).split(') ')[1].split(' ');
const cpu = async () => {
  const f = await stat();
  return (Number(f[11]) + Number(f[12])) / 100;
};
/** The server's minor page faults so far (first touches of fresh memory). */
const faults = async () => Number((await stat())[7]);
const timed = async (label, fn) => {
  const c0 = process.cpuUsage(),
    s0 = await cpu(),
    f0 = await faults(),
    t0 = now();
  const v = await fn();
  const w = now() - t0;
  const c = process.cpuUsage(c0);
  console.log(
    `${label} [${process.hrtime.bigint() / 1000n - BigInt(Math.round(w * 1e6))}..${process.hrtime.bigint() / 1000n}] ${(img.length / MB / w).toFixed(0)} MB/s = ${(img.length / MB / w / base).toFixed(2)}x wall ${w.toFixed(3)} agent ${((c.user + c.system) / 1e6).toFixed(2)} server ${((await cpu()) - s0).toFixed(2)} faults ${(await faults()) - f0}`,
  );
  return v;
};
console.log(`baseline ${base.toFixed(0)} MB/s load ${(await readFile('/proc/loadavg', 'utf8')).slice(0, 15)}`);
let rec = await timed('first', () => push(img));
for (let r = 0; r < reps && mode !== 'restore'; r++) {
  for (let p = 0; p < img.length / PAGE; p += 10) img.writeUInt32LE(r * 7919 + p + 1, p * PAGE + 16);
  rec = await timed(`cons${r}`, () => push(img));
}
for (let r = 0; r < reps && mode !== 'cons'; r++) {
  let n = 0;
  await timed(`restore${r}`, () => client.restore(rec.id, (b) => void (n += b.length)));
  if (n !== img.length) throw new Error(`restored ${n} bytes, want ${img.length}`);
}
await client.close();
child.kill('SIGTERM');
await new Promise((res) => child.on('exit', res));
await rm(work, { recursive: true, force: true });
