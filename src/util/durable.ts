/**
 * Durable file primitives: write-then-fsync-then-publish. A published name always refers to
 * complete, synced bytes; a crash leaves at most a temp file that recovery removes.
 */
import { promises as fsp, constants as fsConstants } from 'node:fs';
import path from 'node:path';

export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;

/** fsync a directory so a rename or create inside it survives power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, fsConstants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `data` to `tmpPath`, fsyncs, renames to `finalPath`, fsyncs the directory. */
export async function writeFileDurable(finalPath: string, data: Uint8Array, tmpPath: string): Promise<void> {
  const fh = await fsp.open(tmpPath, 'wx', FILE_MODE);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fsp.rm(tmpPath, { force: true }).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await fsp.rename(tmpPath, finalPath);
  } catch (err) {
    await fsp.rm(tmpPath, { force: true }).catch(() => undefined);
    throw err;
  }
  await fsyncDir(path.dirname(finalPath));
}

export async function ensurePrivateDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE });
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes all of `data`, at the current position or at `position`: write() may write less than asked
 * (a full disk does, before it fails with ENOSPC).
 */
export async function writeFully(
  fh: { write(b: Uint8Array, offset: number, length: number, position?: number | null): Promise<{ bytesWritten: number }> },
  data: Uint8Array,
  position?: number,
): Promise<void> {
  for (let off = 0; off < data.length;) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position === undefined ? null : position + off);
    // A write that makes no progress would loop forever: report it as the full disk it almost surely is.
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'ENOSPC' });
    off += bytesWritten;
  }
}

/** writeFully for several buffers at the file's current position, in one writev where the kernel takes it all. */
export async function writevFully(
  fh: { writev(buffers: Uint8Array[]): Promise<{ bytesWritten: number }> },
  buffers: Uint8Array[],
): Promise<void> {
  const rest = buffers.filter((b) => b.length > 0);
  while (rest.length > 0) {
    let { bytesWritten } = await fh.writev(rest);
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'ENOSPC' });
    // A short write: drop what went out and continue with the remainder.
    while (rest.length > 0 && bytesWritten >= rest[0].length) bytesWritten -= rest.shift()!.length;
    if (rest.length > 0 && bytesWritten > 0) rest[0] = rest[0].subarray(bytesWritten);
  }
}
