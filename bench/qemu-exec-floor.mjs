#!/usr/bin/env node
// What an `exec:` receiver costs QEMU before and while it reads, without QEMU: each receiver is
// started with a pipe on its standard input, as QEMU's `exec:` starts it, and a writer pushes a
// migration-sized stream (default 92 MB, what a 128 MiB guest sends) into the pipe in 1 MiB writes.
//   first: ms from spawn until the receiver has taken the first 1 MiB (the pipe holds 64 KiB, so
//          until then QEMU would wait: start-up is all of it)
//   total: ms from spawn until the last write was taken (start-up plus the copy)
// Receivers, alternating, --runs N each: `cat > FILE`; `node -e <spool loop>` (Node's start-up,
// then 1 MiB reads written to a file: the floor of any Node receiver); `vnstore qemu receive` (the early
// spool; it then refuses the stream, which is not QEMU's: that is after `total`, waited for, not counted).
// BENCH_VNSTORE_B=/path/to/other/dist/cli/bin.cjs adds a second vnstore build (vnstore-b).
//   node bench/qemu-exec-floor.mjs [--runs N] [--mb MB] [--json]
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { vnstoreBin } from '../test/qemu/harness.mjs';

const { values: opts } = parseArgs({
  options: { runs: { type: 'string', default: '7' }, mb: { type: 'string', default: '92' }, json: { type: 'boolean', default: false } },
});
const SPOOL =
  "const fs=require('fs'),b=Buffer.allocUnsafe(1<<20),o=fs.openSync(process.argv[1],'w');for(let n;(n=fs.readSync(0,b,0,b.length,null))>0;)fs.writeSync(o,b,0,n)";
const dir = mkdtempSync(join(tmpdir(), 'vnstore-bench-exec-floor-'));
const store = join(dir, 'store');
spawnSync(process.execPath, [vnstoreBin, 'init', '--store', store]);

const receivers = {
  cat: (file) => ['/bin/sh', ['-c', `cat > ${file}`]],
  'node-spool': (file) => [process.execPath, ['-e', SPOOL, file]],
  vnstore: () => [process.execPath, [vnstoreBin, 'qemu', 'receive', '--vm', 'floor', '--store', store]],
};
if (process.env.BENCH_VNSTORE_B)
  receivers['vnstore-b'] = () => [process.execPath, [process.env.BENCH_VNSTORE_B, 'qemu', 'receive', '--vm', 'floor', '--store', store]];

// Not a QEMU stream: the receivers only copy it while it arrives (vnstore refuses it afterwards,
// exit 10, which is after what is timed). Bytes that are not zero, so nothing is sparse.
function stream(bytes) {
  const b = Buffer.allocUnsafe(bytes);
  for (let i = 0; i + 4 <= bytes; i += 4) b.writeUInt32LE((i * 2654435761) >>> 0, i);
  return b;
}

function once(name, data) {
  const file = join(dir, `${name}.out`);
  const [cmd, args] = receivers[name](file);
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ['pipe', 'ignore', 'inherit'] });
  const exited = new Promise((res) => child.once('exit', (code) => res(code)));
  return new Promise((resolve, reject) => {
    let first;
    let at = 0;
    const next = () => {
      if (at >= data.length) {
        const total = performance.now() - t0;
        child.stdin.end();
        exited.then((code) => {
          rmSync(file, { force: true });
          if (code !== 0 && !(code === 10 && name.startsWith('vnstore'))) reject(new Error(`${name} exited ${code}`));
          else resolve({ first, total });
        });
        return;
      }
      const piece = data.subarray(at, at + (1 << 20));
      at += piece.length;
      child.stdin.write(piece, () => {
        first ??= performance.now() - t0;
        next();
      });
    };
    next();
  });
}

const data = stream(Number(opts.mb) * 1e6);
const results = [];
const loadBefore = readFileSync('/proc/loadavg', 'utf8').trim();
for (let r = 0; r < Number(opts.runs); r++)
  for (const name of Object.keys(receivers)) {
    const x = await once(name, data);
    results.push({ run: r + 1, receiver: name, firstMs: Math.round(x.first), totalMs: Math.round(x.total) });
  }
const loadAfter = readFileSync('/proc/loadavg', 'utf8').trim();
rmSync(dir, { recursive: true, force: true });
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const summary = Object.fromEntries(
  Object.keys(receivers).map((name) => {
    const rs = results.filter((x) => x.receiver === name);
    return [
      name,
      {
        firstMs: rs.map((x) => x.firstMs),
        totalMs: rs.map((x) => x.totalMs),
        firstMedian: median(rs.map((x) => x.firstMs)),
        totalMedian: median(rs.map((x) => x.totalMs)),
      },
    ];
  }),
);
const report = { bytes: data.length, runs: Number(opts.runs), loadBefore, loadAfter, summary, date: new Date().toISOString() };
if (opts.json) console.log(JSON.stringify(report));
else {
  console.log(`${data.length} B per stream, ${opts.runs} runs each, load ${loadBefore} -> ${loadAfter}`);
  for (const [name, s] of Object.entries(summary))
    console.log(
      `${name.padEnd(11)} first ${s.firstMs.join(' ')} (median ${s.firstMedian})  total ${s.totalMs.join(' ')} (median ${s.totalMedian})`,
    );
}
