/**
 * Space reserve (DIR/reserve): a file of a few MiB that keeps room on the store's file system for
 * the work that wins space back. Opening a store writes (the lock file; LevelDB replays its log into
 * a table and starts a new log and manifest), and so do forget and gc: on a disk filled to the last
 * block none of them could run, and the store could only be repaired by hand. So:
 *
 *   - the reserve is created by init and re-created on close when there is room for it twice over;
 *   - a store opened on a disk with less free space than the reserve deletes it first, so reading,
 *     listing, checking, forget and gc run in the room it leaves;
 *   - a new snapshot session needs the reserve in place (re-creating it if it can): ingest never eats
 *     the room maintenance needs, and a put on a full disk is refused at once (exit 9).
 *
 * Size: VNSTORE_RESERVE_BYTES (0 = no reserve), else 4 MiB, at most 1/8 of the file system. 4 MiB is
 * LevelDB's write buffer, the largest log an open replays into a table before it can answer
 * (docs/DESIGN.md, "The space reserve: what it must hold"); it does not grow with the store.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { FILE_MODE, writeFully } from '../util/durable.js';

export const RESERVE_FILE = 'reserve';
const DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024;
const WRITE_BYTES = 1024 * 1024;

/** Bytes the reserve should hold on the file system of `dir` (0: no reserve). */
export async function reserveSize(dir: string): Promise<number> {
  const env = process.env.VNSTORE_RESERVE_BYTES;
  if (env !== undefined && /^\d+$/.test(env)) return roundToBlocks(Number(env));
  const fs = await fsp.statfs(dir);
  return roundToBlocks(Math.min(DEFAULT_RESERVE_BYTES, (fs.blocks * fs.bsize) / 8));
}

/** Bytes an unprivileged writer may still use on the file system of `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const fs = await fsp.statfs(dir);
  return fs.bavail * fs.bsize;
}

/** Deletes the reserve when the disk has less free space than it holds; true when it did. */
export async function releaseReserveIfLow(dir: string): Promise<boolean> {
  const file = path.join(dir, RESERVE_FILE);
  const st = await fsp.stat(file).catch(() => undefined);
  if (!st) return false;
  if ((await freeBytes(dir)) >= (await reserveSize(dir))) return false;
  await fsp.rm(file, { force: true });
  return true;
}

/**
 * Makes sure the reserve is in place: creates it when missing (or of another size) if at least
 * `headroom` bytes stay free beside it. Returns false when there is no room for it (nothing is left
 * half-written then).
 */
export async function ensureReserve(dir: string, tmpDir: string, headroom: number): Promise<boolean> {
  const size = await reserveSize(dir);
  const file = path.join(dir, RESERVE_FILE);
  const st = await fsp.stat(file).catch(() => undefined);
  if (st?.size === size) return true;
  if (st) await fsp.rm(file, { force: true }); // another size (VNSTORE_RESERVE_BYTES changed)
  if (size === 0) return true;
  if ((await freeBytes(dir)) < size + headroom) return false;
  const tmp = path.join(tmpDir, `${RESERVE_FILE}.tmp`);
  // Random bytes, not zeros: a compressing or deduplicating file system would not store zeros.
  const block = randomFillSync(Buffer.allocUnsafe(Math.min(WRITE_BYTES, size)));
  const fh = await fsp.open(tmp, 'w', FILE_MODE);
  try {
    for (let done = 0; done < size; done += block.length) await writeFully(fh, block.subarray(0, Math.min(block.length, size - done)));
    await fh.close();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'ENOSPC' || (err as NodeJS.ErrnoException).code === 'EDQUOT') return false;
    throw err;
  }
  // Not fsynced: the reserve holds no data, and a lost one is re-created on the next close.
  await fsp.rename(tmp, file);
  return true;
}

function roundToBlocks(n: number): number {
  return Math.floor(n / 4096) * 4096;
}
