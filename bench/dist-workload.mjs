/**
 * What the store benchmarks that drive dist/ directly share: importing a build (this checkout's or
 * an older commit's, to compare before and after on one workload) and reproducible page content.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const PAGE = 4096;
export const MIB = 1024 * 1024;
export const DEFAULT_DIST = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');

/** An importer of modules of the build in `dist` ('store/store.js' → its Store module). */
export function distImporter(dist) {
  const root = path.resolve(dist);
  return (rel) => import(pathToFileURL(path.join(root, rel)).href);
}

/** xorshift32 stream: incompressible bytes, reproducible from the seed. */
export function xorshift(seed) {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** Fills `buf` (a multiple of 4 bytes) with xorshift output. */
export function fillRandom(buf, seed) {
  const next = xorshift(seed);
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(next(), i);
}

/**
 * Runs `node CLI ARGS` under GNU time (its figures written to `timeFile`): stdout, wall and CPU
 * (user + system) seconds, and peak RSS bytes. `env` adds to this process's environment.
 */
export function timedCli(cli, timeFile, args, env = {}) {
  const stdout = execFileSync('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, process.execPath, cli, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const [wall, user, sys, kib] = readFileSync(timeFile, 'utf8').trim().split('\n').at(-1).split(' ').map(Number);
  return { stdout, wall, cpu: user + sys, peakRssBytes: kib * 1024 };
}
