/**
 * What the benches over a directory of real guest images share (compact-levels.mjs,
 * compact-ingest.mjs): the common options and their usage check, this checkout's CLI and file
 * helpers, a work directory with the file GNU time writes to, a timestamped log, the load average
 * and a median.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_DIST, distImporter } from './dist-workload.mjs';

/** This checkout's CLI. */
export const CLI = path.join(DEFAULT_DIST, 'cli', 'bin.cjs');

/**
 * Parses --images DIR, --rounds N (default `rounds`), --work DIR, --json FILE and the bench's own
 * `options`; exits 2 with "usage: node bench/NAME --images DIR USAGE" unless --images is given,
 * --rounds is at least 1 and `valid(values)` holds.
 */
export function imageBenchArgs(name, usage, { rounds = '1', options = {}, valid = () => true } = {}) {
  const { values } = parseArgs({
    options: {
      images: { type: 'string' },
      rounds: { type: 'string', default: rounds },
      work: { type: 'string', default: tmpdir() },
      json: { type: 'string' },
      ...options,
    },
  });
  const n = Number(values.rounds);
  if (!values.images || !(n >= 1) || !valid(values)) {
    process.stderr.write(`usage: node bench/${name} --images DIR ${usage}\n`);
    process.exit(2);
  }
  return { values, rounds: n };
}

/** The build's helpers for image directories (readImageDir, sameBytes, dirSize). */
export function imageFiles() {
  return distImporter(DEFAULT_DIST)('bench/files.js');
}

/** A new work directory under `parent` named `prefix`…, and the file GNU time writes its figures to. */
export function workDir(parent, prefix) {
  const work = mkdtempSync(path.join(parent, prefix));
  return { work, timeFile: path.join(work, 'time.txt') };
}

export const log = (s) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

export const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

export function median(xs) {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}
