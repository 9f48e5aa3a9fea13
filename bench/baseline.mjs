// Shared by bench/engine.mjs and bench/daemon.mjs: the single-thread BLAKE3 baseline of issue 2 and
// page-cache warming (the baseline hashes bytes already in memory; the measured commands get the
// same start).
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';

const PAGE_SIZE = 4096;
const MB = 1e6;

/** Reads a file once (into the page cache), untimed. */
export async function warm(path) {
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  const fh = await open(path, 'r');
  try {
    while ((await fh.read(buf, 0, buf.length, null)).bytesRead > 0);
  } finally {
    await fh.close();
  }
}

export async function warmDir(dir) {
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) await warm(join(e.parentPath ?? e.path, e.name));
  }
}

/** Hashes every page of the images with one blake3() call each, timing only the hashing. */
export async function hashBaseline(files) {
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  let ns = 0n;
  let bytes = 0;
  for (const f of files) {
    const fh = await open(f.path, 'r');
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        const t = process.hrtime.bigint();
        for (let o = 0; o < bytesRead; o += PAGE_SIZE) blake3(buf.subarray(o, Math.min(o + PAGE_SIZE, bytesRead)));
        ns += process.hrtime.bigint() - t;
        bytes += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  const seconds = Number(ns) / 1e9;
  return { bytes, seconds, mbPerSec: bytes / MB / seconds };
}
