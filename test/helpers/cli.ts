/** Helpers for tests that drive the built CLI: error assertions, child processes, puts from a buffer. */
import type { ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { runCli, singleErrorLine, type CliResult } from './engine.js';

/** Asserts a failed command: the exit code, one "vnstore: error:" line (no stack), containing `fragments`. */
export function expectCliError(r: CliResult, exitCode: number, ...fragments: string[]): string {
  const line = singleErrorLine(r.stderr);
  expect(line, r.stderr).toMatch(/^vnstore: error: \S/);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.code, r.stderr).toBe(exitCode);
  for (const f of fragments) expect(line).toContain(f);
  return line;
}

/** `vnstore put` of an in-memory image (written to a temp file in `scratch`, removed after). */
export async function putImage(scratch: string, store: string, vm: string, img: Buffer, extra: string[] = []): Promise<CliResult> {
  const file = path.join(scratch, `in-${vm}-${Math.random().toString(16).slice(2)}.img`);
  writeFileSync(file, img);
  try {
    return await runCli(['put', '--store', store, '--vm', vm, ...extra, file]);
  } finally {
    rmSync(file, { force: true });
  }
}

export function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('close', () => resolve()),
  );
}

/** process.exit called by the command line run in-process (reportError): its status. */
class ExitCalled extends Error {
  constructor(readonly status: number) {
    super(`process.exit(${status})`);
  }
}

/** In-process runs one at a time: each takes over this process's stdout, stderr, exit and environment. */
let inProcessTurn: Promise<unknown> = Promise.resolve();

/**
 * Runs `vnstore ARGS...` in this process (src/cli/program.ts), where what is tested is what the
 * command does or says, not the executable: a spawn costs ~0.3 s of CPU for node's start-up
 * (bench/RESULTS.md "CI time"). stdout, stderr, process.exit and the variables of `env` are taken
 * over for the run, so runs are queued, never overlapping; the same CliResult as runCli. A command
 * on a store opens it in this process (its lock names this process): the test must not hold it open.
 * Crash tests kill the executable, never this; servers and anything that waits on stdin or a
 * signal go through runCli.
 */
export function runCliInProcess(args: string[], options: { env?: Record<string, string | undefined> } = {}): Promise<CliResult> {
  const run = inProcessTurn.then(() => runInProcessNow(args, options.env ?? {}));
  inProcessTurn = run.catch(() => undefined);
  return run;
}

async function runInProcessNow(args: string[], env: Record<string, string | undefined>): Promise<CliResult> {
  const { runVnstore } = await import('../../src/cli/program.js');
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  // A write's callback (restore to stdout waits for it) is called as a real stream would: later.
  const take = (into: Buffer[]) =>
    ((chunk: string | Uint8Array, encodingOrDone?: unknown, done?: unknown) => {
      into.push(Buffer.from(chunk));
      const callback = typeof encodingOrDone === 'function' ? encodingOrDone : done;
      if (typeof callback === 'function') process.nextTick(callback as () => void);
      return true;
    }) as typeof process.stdout.write;
  const saved = { out: process.stdout.write, err: process.stderr.write, exit: process.exit, exitCode: process.exitCode };
  const savedEnv = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  const setEnv = (vars: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(vars)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  process.stdout.write = take(out);
  process.stderr.write = take(err);
  process.exit = ((status?: number) => {
    throw new ExitCalled(status ?? 0);
  }) as typeof process.exit;
  setEnv(env);
  let code: number;
  try {
    process.exitCode = undefined;
    code = (await runVnstore(args)) ?? Number(process.exitCode ?? 0);
  } catch (e) {
    if (!(e instanceof ExitCalled)) throw e;
    code = e.status;
  } finally {
    setEnv(savedEnv);
    process.stdout.write = saved.out;
    process.stderr.write = saved.err;
    process.exit = saved.exit;
    process.exitCode = saved.exitCode;
  }
  return { code, signal: null, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') };
}
