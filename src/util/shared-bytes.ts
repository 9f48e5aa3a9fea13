/**
 * Byte copies and zeroing that stay fast on shared memory (the store's slabs are
 * SharedArrayBuffers). V8's TypedArray.prototype.set (and Buffer.copy, which calls it) copies into
 * or out of a SharedArrayBuffer with relaxed atomics, a byte at a time unless source and target are
 * equally aligned to 8 bytes, and TypedArray.prototype.fill stores byte by byte there too. Page
 * bytes received in a PAGES frame sit at an odd offset, so copying them into a shared slab ran at
 * ~3 GB/s: 80 ms of the server's main thread per 256 MiB against 12 ms aligned; zeroing a restore
 * window's zero pages ran at 3.2 GB/s against 25-36 GB/s and took 7% of a server's restore CPU
 * (bench/RESULTS.md, issue 12, first13 and restore13; bench/copy-bytes.mjs, bench/fill-shared.mjs).
 * Buffer.prototype.fill with a buffer value is one native copy in Node's C++ (node_buffer.cc,
 * Fill), whatever the alignment or the kind of memory.
 */

/** Copies all of `source` into `target` at `targetStart` (like target.set(source, targetStart)). */
export function copyBytes(target: Uint8Array, source: Uint8Array, targetStart = 0): void {
  const n = source.length;
  if (n === 0) return;
  if (targetStart < 0 || targetStart + n > target.length)
    throw new RangeError(`copy of ${n} bytes at ${targetStart} overruns a target of ${target.length}`);
  // Views over the exact ranges: fill() then copies source once, with nothing left to repeat.
  const into = Buffer.from(target.buffer, target.byteOffset + targetStart, n);
  into.fill(source);
}

const ZEROS = Buffer.alloc(64 * 1024);

/** Sets bytes [start, end) of `buf` to zero. */
export function zeroFill(buf: Uint8Array, start = 0, end = buf.length): void {
  if (end <= start) return;
  Buffer.from(buf.buffer, buf.byteOffset, buf.length).fill(ZEROS, start, end);
}
