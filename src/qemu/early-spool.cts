/**
 * `qemu receive`'s first step under QEMU's `exec:`: copy standard input into an unlinked private
 * spool file before any ES module loads (docs/QEMU.md). QEMU is sending already and its pipe holds
 * 64 KiB, so every millisecond the process spends loading vnstore, or running anything beside the
 * copy, stretches the migration. CommonJS and self-contained (Node built-ins only), so the
 * executable (bin.cts) runs it first; the receive command takes the result through the same module
 * instance (spool.ts, createRequire), never through a static import (vitest cannot load `.cts`
 * modules imported from the ES sources). With `--detach` it also starts the background receive
 * itself, so the command exits without loading the CLI at all.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** One read's and one write's size while spooling. */
const COPY_BYTES = 1 << 20;

/** What the synchronous copy of standard input left: the open file, its bytes, and how it stopped. */
export interface StdinSpool {
  fd: number;
  bytes: number;
  /** Standard input reached its end (else it is non-blocking and ran dry: the rest is Node's stream's). */
  ended: boolean;
  /** performance.now() when the first bytes were read (undefined if none were). */
  firstReadAt?: number;
}

/** A system error and what was being done (the ES side turns it into a VnstoreError). */
export interface SpoolFailure {
  error: unknown;
  doing: string;
}

/** `VNSTORE_QEMU_SPOOL_DIR`, else the system's temporary directory. */
export function defaultSpoolDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.VNSTORE_QEMU_SPOOL_DIR || os.tmpdir();
}

/**
 * An open, already unlinked, private (0600) file in `dir`. O_EXCL makes the name safe; the random
 * part only avoids collisions (Math.random: node:crypto took 3-7 ms to load on the loaded machine).
 */
export function createSpoolFile(dir: string): number {
  const file = path.join(dir, `vnstore-qemu-spool-${process.pid}-${Math.random().toString(16).slice(2, 14)}`);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  fs.unlinkSync(file);
  return fd;
}

/** Writes all of `buf` at `at`; throws the system error. */
export function writeAllAt(fd: number, buf: Uint8Array, at: number): void {
  for (let done = 0; done < buf.length;) done += fs.writeSync(fd, buf, done, buf.length - done, at + done);
}

/**
 * Copies standard input into a new spool file in `dir` with synchronous 1 MiB reads until its end,
 * or until a non-blocking pipe runs dry (EAGAIN). Throws a SpoolFailure.
 */
export function spoolStdinSync(dir: string): StdinSpool {
  let fd: number;
  try {
    fd = createSpoolFile(dir);
  } catch (error) {
    throw { error, doing: `creating the spool file in ${dir}` } satisfies SpoolFailure;
  }
  const buf = Buffer.allocUnsafe(COPY_BYTES);
  let at = 0;
  let firstReadAt: number | undefined;
  let doing = 'reading the migration stream';
  try {
    for (;;) {
      const n = fs.readSync(0, buf, 0, buf.length, null);
      if (n === 0) return { fd, bytes: at, ended: true, firstReadAt };
      firstReadAt ??= performance.now();
      doing = 'writing the spool file';
      writeAllAt(fd, buf.subarray(0, n), at);
      doing = 'reading the migration stream';
      at += n;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EAGAIN') return { fd, bytes: at, ended: false, firstReadAt };
    fs.closeSync(fd);
    throw { error, doing } satisfies SpoolFailure;
  }
}

const hasOption = (args: string[], name: string) => args.some((a) => a === name || a.startsWith(`${name}=`));

/**
 * Whether a command line is `qemu receive` from standard input with the file spool: the executable
 * then spools before it loads the rest of vnstore. A usage error is still reported by the command.
 * `stdinIsTty` is asked only for such a command line.
 */
export function wantsEarlySpool(argv: string[], env: NodeJS.ProcessEnv, stdinIsTty: () => boolean): boolean {
  const [command, sub, ...rest] = argv;
  if (command !== 'qemu' || sub !== 'receive' || stdinIsTty()) return false;
  if (hasOption(rest, '--listen') || hasOption(rest, '--from-spool-fd') || rest.some((a) => a === '-h' || a === '--help')) return false;
  return (env.VNSTORE_QEMU_SPOOL ?? (env.VNSTORE_QEMU_HOLD === '0' ? 'none' : 'file')) === 'file';
}

/**
 * Whether standard input is a terminal, asking node:tty (5 ms to load on the loaded machine) only
 * when it is a character device: QEMU's `exec:` pipe is a FIFO.
 */
export function stdinIsTty(): boolean {
  try {
    if (!fs.fstatSync(0).isCharacterDevice()) return false;
  } catch {
    return false;
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('node:tty') as typeof import('node:tty')).isatty(0);
}

let early: StdinSpool | SpoolFailure | undefined;

/**
 * Spools standard input now, synchronously while the pipe has data; the result waits for
 * takeEarlySpool. VNSTORE_TRACE=1 prints, afterwards, when the first bytes were read (ms since the
 * process started: the start-up QEMU waited for) and when the copy stopped, as src/util/trace.ts does.
 */
export function startEarlySpool(): void {
  try {
    early ??= spoolStdinSync(defaultSpoolDir());
  } catch (failure) {
    early = failure as SpoolFailure;
  }
  if (process.env.VNSTORE_TRACE === '1' && 'fd' in early) {
    const ms = (t: number) => `[trace ${t.toFixed(1).padStart(8)} ms]`;
    if (early.firstReadAt !== undefined) process.stderr.write(`${ms(early.firstReadAt)} early spool: first bytes read\n`);
    process.stderr.write(`${ms(performance.now())} early spool: ${early.bytes} bytes, ${early.ended ? 'ended' : 'ran dry'}\n`);
  }
}

/** What startEarlySpool did, once (undefined if it did not run). */
export function takeEarlySpool(): StdinSpool | SpoolFailure | undefined {
  const e = early;
  early = undefined;
  return e;
}

/** The nearest ancestor (up to a few levels) whose executable is qemu-system-*: under `exec:`, QEMU (through /bin/sh). */
export function findQemuAncestorSync(start = process.ppid, levels = 4): number | undefined {
  let pid = start;
  for (let i = 0; i < levels && pid > 1; i++) {
    try {
      if (path.basename(fs.readlinkSync(`/proc/${pid}/exe`)).startsWith('qemu-system-')) return pid;
    } catch {
      // not ours to read, or gone: look further up
    }
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/**
 * Starts `vnstore qemu receive` with this process's arguments (without --detach), reading the
 * spool handed over as fd 3, detached, with the same standard output and error; QEMU's pid is
 * passed on, since the child will not have QEMU among its ancestors.
 */
export function spawnDetachedReceive(spoolFd: number, qemuPid: number | undefined): ChildProcess {
  // Required here, not at the top: loading child_process took 25-50 ms on the loaded project
  // machine, time that every receive would spend before its first read.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawn } = require('node:child_process') as typeof import('node:child_process');
  const args = process.argv.slice(2).filter((a) => a !== '--detach');
  args.push('--from-spool-fd', '3');
  if (qemuPid !== undefined && !hasOption(args, '--qemu-pid')) args.push('--qemu-pid', String(qemuPid));
  return spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], {
    stdio: ['ignore', 'inherit', 'inherit', spoolFd],
    detached: true,
  });
}

/**
 * `qemu receive --detach` done from the early spool: once standard input has ended, the background
 * receive starts and this process exits without loading the CLI (about 0.2 s less of paused guest;
 * bench/RESULTS.md). When that cannot be done here (the stream did not end synchronously, or the
 * spawn failed) it calls `orElse`, which loads the command: it takes the spool and its own spawn
 * reports what is wrong in one line.
 */
export function detachFromEarlySpool(orElse: () => void): void {
  const e = early;
  if (e === undefined || !('fd' in e) || !e.ended) return orElse();
  let child: ChildProcess;
  try {
    child = spawnDetachedReceive(e.fd, findQemuAncestorSync());
  } catch {
    return orElse();
  }
  // A failed spawn (ENOMEM, EAGAIN) arrives as an event: exit only once the child runs.
  child.once('error', orElse);
  child.once('spawn', () => {
    child.unref();
    fs.closeSync(e.fd);
    process.exit(0);
  });
}
