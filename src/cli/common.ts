/** Shared CLI plumbing: store location, error reporting, human units, progress. */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { SingleBar } from 'cli-progress';
import { createRequire } from 'node:module';
import { Store, type OpenOptions } from '../store/store.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';
import { humanBytes } from '../util/units.js';
import { openWaitingForLock } from './lock-wait.js';
import { readLiveServer } from '../server/address.js';
import { lazyGcSweeper } from '../maintenance/lazy-sweeper.js';

export { humanBytes };

export const DEFAULT_STORE_DIR = 'vnstore-data';

/** What a committed snapshot reports: `put` and `agent push` print the same fields. */
interface CommittedRecord {
  id: string;
  vm: string;
  group?: string;
  parent?: string;
  byteLength: number;
  newChunks: number;
  addedBytes: number;
}

/** Prints a committed snapshot's id, or with --json its fields, `extra` before the time taken. */
export function printCommitted(rec: CommittedRecord, json: boolean | undefined, seconds: number, extra: Record<string, number> = {}): void {
  if (!json) {
    process.stdout.write(`${rec.id}\n`);
    return;
  }
  const out = {
    id: rec.id,
    vm: rec.vm,
    group: rec.group ?? null,
    parent: rec.parent ?? null,
    logicalBytes: rec.byteLength,
    newChunks: rec.newChunks,
    addedBytes: rec.addedBytes,
    ...extra,
    seconds,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

export function storeOption(): Option {
  return new Option('--store <dir>', `store directory (default: $VNSTORE_STORE, else ./${DEFAULT_STORE_DIR})`);
}

export function storeDir(opts: { store?: string }): string {
  return path.resolve(opts.store ?? process.env.VNSTORE_STORE ?? DEFAULT_STORE_DIR);
}

/**
 * Open options of a one-shot command that pages through a snapshot (put, restore): page workers
 * start only if the work turns out to need them (see OpenOptions.startWorkers).
 */
export const ONE_SHOT: OpenOptions = { startWorkers: 'on-demand' };
/** Catalog work (ls, stats, forget): no page workers, and no chunk table (megabytes for a large store). */
export const CATALOG_ONLY: OpenOptions = { workers: 0, chunkTable: false };

/** `--lock-wait SECONDS` (as borg has), for every command that opens a store. */
export function lockWaitOption(): Option {
  return new Option(
    '--lock-wait <seconds>',
    'if another process holds the store, wait up to SECONDS for it (default 0: fail at once, exit 5)',
  ).argParser(parseLockWait);
}

function parseLockWait(value: string): number {
  if (!/^\d+(\.\d+)?$/.test(value.trim())) throw new InvalidArgumentError('takes a number of seconds >= 0');
  return Number(value);
}

/**
 * Refuses a store path that cannot be a store directory (a file, or under one) with one line, before
 * anything reads it: otherwise the user is told to run 'vnstore init', which cannot succeed there.
 */
export async function assertStorePath(dir: string, forInit = false): Promise<void> {
  const st = await fsp.stat(dir).catch((err: NodeJS.ErrnoException) => err);
  if (st instanceof Error) {
    if (st.code === 'ENOTDIR')
      throw new VnstoreError(forInit ? 'E_USAGE' : 'E_NOT_STORE', `${dir}: a parent of this path is a file, not a directory`);
    return; // ENOENT and the like: init creates it; open reports a missing store its own way
  }
  if (!st.isDirectory()) {
    if (forInit) throw new VnstoreError('E_USAGE', `${dir} is a file; name a new or empty directory for the store`);
    throw new VnstoreError('E_NOT_STORE', `${dir} is not a vnstore store: it is a file, not a directory`);
  }
}

export async function withStore<T>(
  opts: { store?: string; lockWait?: number },
  fn: (store: Store) => Promise<T>,
  openOptions?: OpenOptions,
): Promise<T> {
  const dir = storeDir(opts);
  await assertStorePath(dir);
  const store = await openForCommand(dir, opts.lockWait, { sweeper: lazyGcSweeper, ...openOptions });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/**
 * Opens a store for a command: waits up to `lockWaitSeconds` for its lock, and a store held by a
 * running `vnstore serve` is refused with the server's PID and address.
 */
export function openForCommand(dir: string, lockWaitSeconds: number | undefined, openOptions: OpenOptions): Promise<Store> {
  return openWaitingForLock(() => Store.open(dir, openOptions), (lockWaitSeconds ?? 0) * 1000).catch(async (err: unknown) => {
    throw await explainServerLock(err, dir);
  });
}

/** Runs a command action: typed errors become one line on stderr and their exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      reportError(err);
    }
  };
}

/** A store locked by a running `vnstore serve`: say which server holds it and how to go through it. */
async function explainServerLock(err: unknown, dir: string): Promise<unknown> {
  if (!(err instanceof VnstoreError) || err.code !== 'E_LOCKED') return err;
  const rec = await readLiveServer(dir);
  if (!rec) return err;
  const addr = rec.addresses[0] ?? 'an unknown address';
  return new VnstoreError(
    'E_LOCKED',
    `store is served by vnstore server PID ${rec.pid} at ${addr}; give --server ${addr} (or set VNSTORE_SERVER) to go through it`,
  );
}

export function reportError(err: unknown): never {
  // A system error no layer mapped (ENOSPC, EIO from some write path) is still not an internal one.
  if (!(err instanceof VnstoreError) && isSystemError(err)) err = fromSystemError(err, 'store I/O');
  if (err instanceof VnstoreError) {
    process.stderr.write(`vnstore: error: ${err.message}\n`);
    if (process.env.VNSTORE_DEBUG) process.stderr.write(`${err.stack ?? ''}\n`);
    process.exit(err.exitCode);
  }
  const e = err as Error;
  process.stderr.write(`vnstore: internal error: ${e?.message ?? String(err)} (set VNSTORE_DEBUG=1 for details)\n`);
  if (process.env.VNSTORE_DEBUG) process.stderr.write(`${e?.stack ?? ''}\n`);
  process.exit(70);
}

function isSystemError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && (/^E[A-Z0-9]+$/.test(code) || code.startsWith('LEVEL_'));
}

export function usage(message: string): VnstoreError {
  return new VnstoreError('E_USAGE', message);
}

/** A progress bar on stderr when it is a terminal; a no-op otherwise (scripts, pipes, CI). */
export function progressBar(label: string, total: number): { update(done: number): void; stop(): void } {
  if (!process.stderr.isTTY || total <= 0) return { update() {}, stop() {} };
  // Loaded only for a terminal: scripts and pipes never pay its start-up.
  const { SingleBar: Bar } = createRequire(import.meta.url)('cli-progress') as { SingleBar: typeof SingleBar };
  const bar = new Bar({
    stream: process.stderr,
    format: `${label} [{bar}] {percentage}% | {doneH} / {totalH} | {speed}`,
    hideCursor: true,
    clearOnComplete: true,
  });
  const start = Date.now();
  bar.start(total, 0, { doneH: humanBytes(0), totalH: humanBytes(total), speed: '' });
  return {
    update(done: number) {
      const s = (Date.now() - start) / 1000;
      bar.update(done, { doneH: humanBytes(done), totalH: humanBytes(total), speed: s > 0 ? `${humanBytes(done / s)}/s` : '' });
    },
    stop() {
      bar.stop();
    },
  };
}

export function addStoreOption(cmd: Command): Command {
  return cmd.addOption(storeOption());
}
