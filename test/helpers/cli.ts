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
