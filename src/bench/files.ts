/** File helpers for the benchmark: store sizes, the --images layout, byte-exact comparison. */
import { lstat, open, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { ImageFile } from '../sim/workload.js';

export interface DirSize {
  /** Sum of file sizes (apparent bytes): what the issue calls bytes on disk. */
  bytes: number;
  /** Sum of allocated blocks (st_blocks × 512): shows small-file overhead of chunk-per-file stores. */
  allocatedBytes: number;
  files: number;
}

/** Recursive size of a directory (symlinks not followed); a missing directory is empty. */
export async function dirSize(dir: string): Promise<DirSize> {
  const total: DirSize = { bytes: 0, allocatedBytes: 0, files: 0 };
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else {
        const st = await lstat(p);
        total.bytes += st.size;
        total.allocatedBytes += st.blocks * 512;
        total.files++;
      }
    }
  };
  await walk(dir);
  return total;
}

export async function dirBytes(dir: string): Promise<number> {
  return (await dirSize(dir)).bytes;
}

export class ImageDirError extends Error {
  override name = 'ImageDirError';
}

/**
 * Reads the `--images DIR` layout: one folder per VM, one raw file per snapshot. Snapshots are ordered
 * by file name, numbers compared as numbers (2.img before 10.img). Returns files in put order
 * (snapshot-major: every VM's first snapshot, then every VM's second, ...).
 */
export async function readImageDir(dir: string): Promise<ImageFile[]> {
  const root = resolve(dir);
  let top;
  try {
    top = await readdir(root, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ImageDirError(code === 'ENOENT' ? `${dir}: no such directory` : `${dir}: cannot read (${code})`);
  }
  const byName = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });
  const vms = top
    .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
    .map((e) => e.name)
    .sort(byName);
  const perVm: ImageFile[][] = [];
  for (const vm of vms) {
    const entries = await readdir(join(root, vm), { withFileTypes: true });
    const names = entries
      .filter((e) => e.isFile() && !e.name.startsWith('.'))
      .map((e) => e.name)
      .sort(byName);
    const files: ImageFile[] = [];
    for (const [snap, name] of names.entries()) {
      const path = join(root, vm, name);
      files.push({ vm, snap, path, bytes: (await lstat(path)).size });
    }
    if (files.length > 0) perVm.push(files);
  }
  if (perVm.length === 0) {
    throw new ImageDirError(`${dir}: expected one folder per VM holding one raw image file per snapshot; found none`);
  }
  const out: ImageFile[] = [];
  const maxSnaps = Math.max(...perVm.map((f) => f.length));
  for (let s = 0; s < maxSnaps; s++) for (const files of perVm) if (s < files.length) out.push(files[s]);
  return out;
}

const CMP_BYTES = 4 * 1024 * 1024;

/** True when both files exist and hold exactly the same bytes. */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return false;
    const ba = Buffer.allocUnsafe(CMP_BYTES);
    const bb = Buffer.allocUnsafe(CMP_BYTES);
    for (let pos = 0; pos < sa.size; pos += CMP_BYTES) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, CMP_BYTES, pos), fb.read(bb, 0, CMP_BYTES, pos)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
    }
    return true;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
