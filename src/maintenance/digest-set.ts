/**
 * A compact set of 32-byte chunk digests for marking (gc, stats, check): open addressing over a
 * flat key array, each digest given a stable ordinal (0, 1, 2, ... in insertion order) so callers can
 * keep per-chunk data in parallel typed arrays. Memory: 32 B of key + 4-8 B of slot per digest.
 * With `keyBytes` 24 it keeps and compares digest prefixes (store format 3, whose TOCs keep 24 bytes).
 *
 * The probe hash mixes three words of the digest with a per-process random seed: digests are
 * guest-chosen content hashes, and a guest must not be able to make marking quadratic.
 */
import { randomBytes } from 'node:crypto';

const DIGEST = 32;
const MAX_LOAD = 0.6;
const SEED = randomBytes(12);
const S0 = SEED.readUInt32LE(0);
const S1 = SEED.readUInt32LE(4);
const S2 = SEED.readUInt32LE(8);

export class DigestSet {
  /** Digest bytes by ordinal. */
  private keys: Uint8Array;
  /** Slot → ordinal + 1 (0 = empty). */
  private slots: Uint32Array;
  private mask: number;
  size = 0;

  constructor(
    expected = 1024,
    /** Bytes of each digest kept and compared: 32, or a 24-byte prefix (at least the 20 the hash mixes). */
    readonly keyBytes = DIGEST,
  ) {
    if (keyBytes < 20 || keyBytes > DIGEST) throw new RangeError(`digest keys of ${keyBytes} bytes`);
    let cap = 1024;
    while (cap * MAX_LOAD < expected) cap *= 2;
    this.slots = new Uint32Array(cap);
    this.mask = cap - 1;
    this.keys = new Uint8Array(Math.max(expected, 256) * keyBytes);
  }

  /** Capacity of the ordinal space before the key array grows (for sizing parallel arrays). */
  get ordinalCapacity(): number {
    return this.keys.length / this.keyBytes;
  }

  private static hash(d: Uint8Array, o: number): number {
    const w0 = (d[o] | (d[o + 1] << 8) | (d[o + 2] << 16) | (d[o + 3] << 24)) ^ S0;
    const w1 = (d[o + 8] | (d[o + 9] << 8) | (d[o + 10] << 16) | (d[o + 11] << 24)) ^ S1;
    const w2 = (d[o + 16] | (d[o + 17] << 8) | (d[o + 18] << 16) | (d[o + 19] << 24)) ^ S2;
    let h = Math.imul(w0, 0x9e3779b1) ^ Math.imul(w1, 0x85ebca77) ^ Math.imul(w2, 0xc2b2ae3d);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 13;
    return h >>> 0;
  }

  private equalsAt(ordinal: number, d: Uint8Array, o: number): boolean {
    const k = this.keys;
    const n = this.keyBytes;
    const p = ordinal * n;
    for (let i = 0; i < n; i++) if (k[p + i] !== d[o + i]) return false;
    return true;
  }

  /** Ordinal of the digest at d[o..o+32), or -1. */
  find(d: Uint8Array, o = 0): number {
    let s = DigestSet.hash(d, o) & this.mask;
    for (;;) {
      const v = this.slots[s];
      if (v === 0) return -1;
      if (this.equalsAt(v - 1, d, o)) return v - 1;
      s = (s + 1) & this.mask;
    }
  }

  has(d: Uint8Array, o = 0): boolean {
    return this.find(d, o) >= 0;
  }

  /**
   * Adds the digest; returns its ordinal. `added` tells whether it was new (a one-element out array
   * avoids an allocation per call in the marking loops).
   */
  add(d: Uint8Array, o = 0, added?: boolean[]): number {
    let s = DigestSet.hash(d, o) & this.mask;
    for (;;) {
      const v = this.slots[s];
      if (v === 0) break;
      if (this.equalsAt(v - 1, d, o)) {
        if (added) added[0] = false;
        return v - 1;
      }
      s = (s + 1) & this.mask;
    }
    const ordinal = this.size;
    const n = this.keyBytes;
    if ((ordinal + 1) * n > this.keys.length) {
      const next = new Uint8Array(this.keys.length * 2);
      next.set(this.keys);
      this.keys = next;
    }
    this.keys.set(d.subarray(o, o + n), ordinal * n);
    this.slots[s] = ordinal + 1;
    this.size++;
    if (this.size > this.slots.length * MAX_LOAD) this.grow();
    if (added) added[0] = true;
    return ordinal;
  }

  /** The digest (keyBytes of it) with this ordinal (a view; copy it to keep it). */
  digest(ordinal: number): Uint8Array {
    return this.keys.subarray(ordinal * this.keyBytes, (ordinal + 1) * this.keyBytes);
  }

  private grow(): void {
    const cap = this.slots.length * 2;
    const slots = new Uint32Array(cap);
    const mask = cap - 1;
    for (let ord = 0; ord < this.size; ord++) {
      let s = DigestSet.hash(this.keys, ord * this.keyBytes) & mask;
      while (slots[s] !== 0) s = (s + 1) & mask;
      slots[s] = ord + 1;
    }
    this.slots = slots;
    this.mask = mask;
  }
}

/** Grows a typed array to at least `n` elements (doubling), keeping its contents. */
export function ensureLength<T extends Uint8Array | Int32Array | Uint32Array | Float64Array>(a: T, n: number): T {
  if (a.length >= n) return a;
  let cap = Math.max(a.length, 256);
  while (cap < n) cap *= 2;
  const Ctor = a.constructor as new (len: number) => T;
  const next = new Ctor(cap);
  next.set(a);
  return next;
}
