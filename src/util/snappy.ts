/**
 * Snappy decompression (the raw block format, github.com/google/snappy format_description.txt), for
 * reading LevelDB's compressed table blocks. Input is untrusted: every length and back-reference is
 * checked, and damage throws a RangeError (callers report it as damage).
 */
export function snappyUncompress(src: Uint8Array): Buffer {
  let pos = 0;
  let length = 0;
  for (let shift = 0; ; shift += 7) {
    if (pos >= src.length || shift > 28) throw new RangeError('snappy: bad uncompressed length');
    const b = src[pos++];
    length += (b & 0x7f) * 2 ** shift;
    if (b < 0x80) break;
  }
  if (length > 0xffffffff) throw new RangeError('snappy: bad uncompressed length');
  const out = Buffer.allocUnsafe(length);
  let op = 0;
  while (pos < src.length) {
    const tag = src[pos++];
    let len: number;
    let offset: number;
    switch (tag & 3) {
      case 0: {
        len = tag >>> 2;
        if (len >= 60) {
          const bytes = len - 59;
          if (pos + bytes > src.length) throw new RangeError('snappy: literal length past the end');
          len = 0;
          for (let i = 0; i < bytes; i++) len += src[pos + i] * 2 ** (8 * i);
          pos += bytes;
        }
        len += 1;
        if (pos + len > src.length || op + len > length) throw new RangeError('snappy: literal past the end');
        out.set(src.subarray(pos, pos + len), op);
        pos += len;
        op += len;
        continue;
      }
      case 1:
        if (pos + 1 > src.length) throw new RangeError('snappy: copy past the end');
        len = ((tag >>> 2) & 7) + 4;
        offset = ((tag >>> 5) << 8) | src[pos];
        pos += 1;
        break;
      case 2:
        if (pos + 2 > src.length) throw new RangeError('snappy: copy past the end');
        len = (tag >>> 2) + 1;
        offset = src[pos] | (src[pos + 1] << 8);
        pos += 2;
        break;
      default:
        if (pos + 4 > src.length) throw new RangeError('snappy: copy past the end');
        len = (tag >>> 2) + 1;
        offset = (src[pos] | (src[pos + 1] << 8) | (src[pos + 2] << 16) | (src[pos + 3] << 24)) >>> 0;
        pos += 4;
    }
    if (offset === 0 || offset > op || op + len > length) throw new RangeError('snappy: bad copy');
    // Byte by byte: a copy may overlap its own output (a run).
    for (let i = 0; i < len; i++, op++) out[op] = out[op - offset];
  }
  if (op !== length) throw new RangeError('snappy: output shorter than its stated length');
  return out;
}
