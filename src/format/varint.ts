/** Unsigned LEB128 varints up to 2^53 (safe integers), used by compact on-disk records. */
import { CorruptError } from '../util/errors.js';

/** Bytes of the LEB128 encoding of v. */
export function varintBytes(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

/**
 * Writes v (a safe integer ≥ 0, unchecked: callers on hot paths pass known-good values) as LEB128 at
 * out[p..]; returns the position after it. `out` must have varintBytes(v) bytes free there.
 */
export function putVarint(out: Uint8Array, p: number, v: number): number {
  while (v >= 0x80) {
    out[p++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  out[p++] = v;
  return p;
}

export class ByteWriter {
  private buf: Uint8Array;
  length = 0;
  constructor(initialCapacity = 1024) {
    this.buf = new Uint8Array(initialCapacity);
  }
  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf[this.length++] = v;
  }
  u16(v: number): void {
    this.reserve(2);
    this.buf[this.length++] = v & 0xff;
    this.buf[this.length++] = (v >>> 8) & 0xff;
  }
  u32(v: number): void {
    this.reserve(4);
    new DataView(this.buf.buffer, this.buf.byteOffset).setUint32(this.length, v, true);
    this.length += 4;
  }
  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varint out of range: ${v}`);
    this.reserve(varintBytes(v)); // exactly: a writer sized from varintBytes never grows
    this.length = putVarint(this.buf, this.length, v);
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  /** Length-prefixed UTF-8 string. */
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.varint(b.length);
    this.bytes(b);
  }
  finish(): Buffer {
    return Buffer.from(this.buf.buffer, this.buf.byteOffset, this.length);
  }
}

export class ByteReader {
  pos = 0;
  /** `damage` makes the error a read of bad bytes throws: a CorruptError unless the caller's format wants its own. */
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
    private readonly damage: (message: string) => Error = (message) => new CorruptError(message),
  ) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw this.damage(`${this.what}: truncated record`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }
  u16(): number {
    this.need(2);
    const v = this.buf[this.pos] | (this.buf[this.pos + 1] << 8);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      result += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (!Number.isSafeInteger(result)) break;
        return result;
      }
      mul *= 0x80;
    }
    throw this.damage(`${this.what}: bad varint`);
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  str(): string {
    const n = this.varint();
    return Buffer.from(this.bytes(n)).toString('utf8');
  }
}
