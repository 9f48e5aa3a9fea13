/**
 * CRC-32C (Castagnoli), slice-by-8, as LevelDB uses it for its table blocks and log records. Node has
 * no CRC-32C of its own (zlib.crc32 is the IEEE polynomial).
 */
const POLY = 0x82f63b78; // reflected Castagnoli polynomial

const TABLES: Uint32Array[] = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) for (let k = 1; k < 8; k++) t[k][n] = ((t[k - 1][n] >>> 8) ^ t[0][t[k - 1][n] & 0xff]) >>> 0;
  return t;
})();

/** CRC-32C of `parts` taken one after the other (LevelDB's crc32c::Extend over each). */
export function crc32c(...parts: Uint8Array[]): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let c = 0xffffffff;
  for (const b of parts) {
    let i = 0;
    const end8 = b.length - (b.length % 8);
    for (; i < end8; i += 8) {
      const lo = (c ^ (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24))) >>> 0;
      c =
        t7[lo & 0xff] ^
        t6[(lo >>> 8) & 0xff] ^
        t5[(lo >>> 16) & 0xff] ^
        t4[lo >>> 24] ^
        t3[b[i + 4]] ^
        t2[b[i + 5]] ^
        t1[b[i + 6]] ^
        t0[b[i + 7]];
    }
    for (; i < b.length; i++) c = t0[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * LevelDB stores CRCs masked (rotated right 15 bits plus a constant): a CRC over data that holds
 * CRCs would otherwise be weak (leveldb/util/crc32c.h).
 */
export function maskCrc(crc: number): number {
  return (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0;
}
