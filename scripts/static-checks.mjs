// The checks `npm test` runs before the test suite: type check, lint, format check (the package.json
// scripts of those names). Each is one single-threaded process of 15-20 s of CPU, so they run side by
// side, one per core, instead of one after another (CI: bench/RESULTS.md, "CI time"). Each one's
// output is printed whole when it ends (never interleaved); the exit code is non-zero if any failed.
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';

const checks = process.argv.length > 2 ? process.argv.slice(2) : ['typecheck', 'format:check', 'lint'];
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function run(name) {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(npm, ['run', '--silent', name], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => out.push(d));
    let ended = false;
    const end = (ok, why) => {
      if (ended) return;
      ended = true;
      process.stdout.write(Buffer.concat(out));
      process.stdout.write(`${name}: ${ok ? 'ok' : `FAILED (${why})`} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
      resolve(ok);
    };
    child.on('error', (err) => end(false, err.message));
    child.on('close', (code, signal) => end(code === 0, signal ?? `exit ${code}`));
  });
}

const queue = [...checks];
const results = [];
const worker = async () => {
  while (queue.length > 0) results.push(await run(queue.shift()));
};
await Promise.all(Array.from({ length: Math.min(checks.length, availableParallelism()) }, worker));
process.exit(results.every(Boolean) ? 0 : 1);
