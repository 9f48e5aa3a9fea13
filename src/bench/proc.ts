/**
 * Running whole commands as child processes with wall time and peak RSS.
 *
 * Peak RSS comes from GNU time (`/usr/bin/time -f %M`, the child's ru_maxrss) when it is installed, as
 * it sees the whole life of the process. Without it, /proc/<pid>/status VmHWM is polled every 20 ms,
 * which can miss growth in the last moments before exit (reported as a lower bound).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const GNU_TIME = '/usr/bin/time';
const POLL_MS = 20;
const OUTPUT_LIMIT = 16 * 1024 * 1024;

export type RssMethod = 'gnu-time' | 'proc-poll';

/** How peak RSS is measured on this machine. */
export function rssMethod(): RssMethod {
  return existsSync(GNU_TIME) ? 'gnu-time' : 'proc-poll';
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Where GNU time may write its report (default: OS temp dir). */
  scratchDir?: string;
}

export interface RunResult {
  command: string;
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit, start-up included. */
  seconds: number;
  /** Peak resident set size of the command in bytes, or null if it could not be measured. */
  peakRssBytes: number | null;
}

let scratchCounter = 0;

/** Runs a command to completion; never throws for a non-zero exit (see `runChecked`). */
export async function runMeasured(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const method = rssMethod();
  const timeFile = join(opts.scratchDir ?? tmpdir(), `.vnstore-bench-time-${process.pid}-${scratchCounter++}`);
  const [file, argv] = method === 'gnu-time' ? [GNU_TIME, ['-f', '%M', '-o', timeFile, cmd, ...args]] : [cmd, args];
  // An undefined value removes an inherited variable (e.g. a user's RESTIC_REPOSITORY).
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...opts.env })) if (v !== undefined) env[k] = v;
  const started = process.hrtime.bigint();
  const child = spawn(file, argv, { cwd: opts.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let outLen = 0;
  let errLen = 0;
  child.stdout.on('data', (b: Buffer) => {
    if ((outLen += b.length) <= OUTPUT_LIMIT) out.push(b);
  });
  child.stderr.on('data', (b: Buffer) => {
    if ((errLen += b.length) <= OUTPUT_LIMIT) err.push(b);
  });
  let polledKiB = 0;
  const timer =
    method === 'proc-poll' && child.pid !== undefined
      ? setInterval(() => {
          polledKiB = Math.max(polledKiB, readHwmKiB(child.pid as number));
        }, POLL_MS)
      : undefined;
  const code = await new Promise<number>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, signal) => resolve(c ?? (signal ? 128 : 1)));
  }).finally(() => {
    if (timer) clearInterval(timer);
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  let peakRssBytes: number | null = polledKiB > 0 ? polledKiB * 1024 : null;
  if (method === 'gnu-time') {
    peakRssBytes = await readTimeFile(timeFile);
    rmSync(timeFile, { force: true });
  }
  return {
    command: [cmd, ...args].join(' '),
    code,
    stdout: Buffer.concat(out).toString('utf8'),
    stderr: Buffer.concat(err).toString('utf8'),
    seconds,
    peakRssBytes,
  };
}

/** Like runMeasured, but a non-zero exit becomes an Error with the command's last stderr line. */
export async function runChecked(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await runMeasured(cmd, args, opts);
  if (r.code !== 0) {
    const lines = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^Command exited with non-zero status/.test(l));
    throw new Error(`${cmd} ${args[0] ?? ''} failed (exit ${r.code}): ${lines.at(-1) ?? 'no message'}`);
  }
  return r;
}

function readHwmKiB(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0; // exited between polls
  }
}

async function readTimeFile(path: string): Promise<number | null> {
  try {
    // GNU time may put "Command exited with non-zero status N" before the figure.
    const lines = (await readFile(path, 'utf8')).trim().split('\n');
    const kib = Number(lines.at(-1));
    return Number.isFinite(kib) && kib > 0 ? kib * 1024 : null;
  } catch {
    return null;
  }
}

/** Whether an executable is on PATH (or an absolute path exists). */
export function which(name: string): string | null {
  if (name.includes('/')) return existsSync(name) ? name : null;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}
