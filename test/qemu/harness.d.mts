// Types of harness.mjs (plain JS so that bench/qemu.mjs can use it too).
import type { ChildProcess } from 'node:child_process';

export const repoRoot: string;
export const vnstoreBin: string;
export function qemuAvailable(): boolean;
export function buildGuest(): { kernel: string; initrd: string };
export function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs?: number, everyMs?: number): Promise<NonNullable<T>>;
export class Qmp {
  events: { event: string; data?: unknown }[];
  static connect(path: string): Promise<Qmp>;
  cmd<T = unknown>(execute: string, args?: Record<string, unknown>): Promise<T>;
  close(): void;
}
export interface Guest {
  name: string;
  proc: ChildProcess;
  qmp: Qmp;
  argv: string[];
  qmpPath: string;
  consolePath: string;
  exited: Promise<{ code: number | null; signal: string | null }>;
  stderr(): string;
  stop(): Promise<void>;
}
export function startGuest(o: {
  dir: string;
  name: string;
  /** QEMU's -m: MiB, or a size with a suffix ('98312K'). */
  memMiB?: number | string;
  incoming?: string;
  guest: { kernel: string; initrd: string };
  append?: string;
  extraArgs?: string[];
}): Promise<Guest>;
export function ticks(consolePath: string): { n: number; ok: boolean }[];
export function lastTick(consolePath: string): number;
export function pingReplies(consolePath: string): number[];
export interface MigrateInfo {
  status: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  ram?: Record<string, number>;
}
export function migrate(vm: Guest, uri: string, o?: { resume?: boolean; timeoutMs?: number }): Promise<MigrateInfo>;
export function qmpProxy(
  path: string,
  upstream: string,
  o?: { teePrefix?: string },
): Promise<{ streams: string[]; hooks: { beforeCont?: () => Promise<unknown> }; close(): void }>;
