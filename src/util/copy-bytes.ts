/**
 * Byte copies that stay fast when shared memory is involved. V8's TypedArray.prototype.set (and
 * Buffer.copy, which calls it) copies into or out of a SharedArrayBuffer with relaxed atomics, a
 * byte at a time unless source and target are equally aligned to 8 bytes. Page bytes received in a
 * PAGES frame sit at an odd offset, so copying them into a shared slab ran at ~3 GB/s: 80 ms of the
 * server's main thread per 256 MiB against 12 ms aligned (bench/RESULTS.md, issue 12, first13).
 * Buffer.prototype.fill with a buffer value as long as the range is one memcpy in Node's C++
 * (node_buffer.cc, Fill), whatever the alignment or the kind of memory.
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
