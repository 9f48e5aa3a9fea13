/**
 * Zeroes a byte range fast on any buffer. TypedArray.prototype.fill on a SharedArrayBuffer (the
 * store's slabs are shared) stores byte by byte with relaxed atomics: 3.2 GB/s here, against 25-36
 * GB/s for Buffer#fill with a buffer pattern, which Node copies natively (bench/fill-shared.mjs).
 * Zeroing the zero pages of restore windows took 7% of a server's CPU in a restore (bench/RESULTS.md,
 * restore13).
 */
const ZEROS = Buffer.alloc(64 * 1024);

/** Sets bytes [start, end) of `buf` to zero. */
export function zeroFill(buf: Uint8Array, start = 0, end = buf.length): void {
  if (end <= start) return;
  Buffer.from(buf.buffer, buf.byteOffset, buf.length).fill(ZEROS, start, end);
}
