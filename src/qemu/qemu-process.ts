/**
 * Finds what a snapshot must record about the QEMU that sends a stream: its version and command
 * line. With `migrate "exec:vnstore qemu receive ..."` QEMU is an ancestor of this process (through
 * /bin/sh); with a TCP listener the caller names its PID. Linux /proc only; absent is not an error.
 */
import { execFile } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { QemuProcessInfo } from './state-image.js';

async function parentOf(pid: number): Promise<number | undefined> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return Number.isInteger(ppid) && ppid > 0 ? ppid : undefined;
  } catch {
    return undefined;
  }
}

async function exeOf(pid: number): Promise<string | undefined> {
  try {
    return await fsp.readlink(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
}

/** The nearest ancestor (up to a few levels) whose executable is qemu-system-*. */
export async function findQemuAncestor(start = process.ppid, levels = 4): Promise<number | undefined> {
  let pid: number | undefined = start;
  for (let i = 0; i < levels && pid !== undefined && pid > 1; i++) {
    const exe = await exeOf(pid);
    if (exe && path.basename(exe).startsWith('qemu-system-')) return pid;
    pid = await parentOf(pid);
  }
  return undefined;
}

export async function describeQemu(pid: number): Promise<QemuProcessInfo> {
  const info: QemuProcessInfo = {};
  try {
    const raw = await fsp.readFile(`/proc/${pid}/cmdline`);
    info.commandLine = raw.toString('utf8').split('\0').slice(0, -1);
  } catch {
    return info;
  }
  const exe = await exeOf(pid);
  if (exe) {
    info.version = await new Promise<string | undefined>((resolve) => {
      execFile(exe, ['--version'], { timeout: 10_000 }, (err, stdout) =>
        resolve(err ? undefined : stdout.split('\n')[0].trim() || undefined),
      );
    });
  }
  return info;
}

/**
 * The QEMU process listening on a Unix socket (its QMP socket), found through /proc/net/unix and
 * the processes' open sockets; undefined when it cannot be seen (another user's process, not Linux).
 */
export async function findQemuBySocket(socketPath: string): Promise<number | undefined> {
  let table: string;
  try {
    table = await fsp.readFile('/proc/net/unix', 'utf8');
  } catch {
    return undefined;
  }
  const wanted = path.resolve(socketPath);
  const inodes = new Set<string>();
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[7] === wanted) inodes.add(`socket:[${f[6]}]`);
  }
  if (inodes.size === 0) return undefined;
  for (const entry of await fsp.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const exe = await exeOf(pid);
    if (!exe || !path.basename(exe).startsWith('qemu-system-')) continue;
    const fds = await fsp.readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await fsp.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (inodes.has(target)) return pid;
    }
  }
  return undefined;
}
