/** The images of bench/server.mjs and bench/server-stages.mjs (the same bytes for both). */
const PAGE = 4096;

/** xorshift pages: a quarter zero, a quarter text-like (compressible), half random. */
export function makeImage(mib, seed) {
  const pages = (mib * 1024 * 1024) / PAGE;
  const buf = Buffer.alloc(pages * PAGE);
  let s = seed >>> 0 || 1;
  const next = () => ((s ^= s << 13), (s ^= s >>> 17), (s ^= s << 5), s >>> 0);
  for (let p = 0; p < pages; p++) {
    const kind = next() % 4;
    const at = p * PAGE;
    if (kind === 0) continue;
    if (kind === 1) buf.write(`page ${p} seed ${seed} `.repeat(200).slice(0, PAGE), at, 'latin1');
    else for (let o = 0; o < PAGE; o += 4) buf.writeUInt32LE(next(), at + o);
  }
  return buf;
}
