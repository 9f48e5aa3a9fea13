import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { copyBytes, zeroFill } from '../src/util/shared-bytes.js';

/** A view of `length` bytes at `offset` into a fresh buffer of either kind, filled with `fill`. */
function view(shared: boolean, size: number, offset: number, length: number, fill: number): Uint8Array {
  const buffer = shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
  new Uint8Array(buffer).fill(fill);
  return new Uint8Array(buffer, offset, length);
}

describe('copyBytes', () => {
  it('copies exactly what set() copies, between shared and plain memory at any alignment', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.boolean(),
        fc.uint8Array({ minLength: 0, maxLength: 300 }),
        fc.nat(15),
        fc.nat(15),
        fc.nat(40),
        (sharedSource, sharedTarget, bytes, sourceOffset, targetOffset, targetStart) => {
          const source = view(sharedSource, sourceOffset + bytes.length + 8, sourceOffset, bytes.length, 0xee);
          source.set(bytes);
          const targetLength = targetStart + bytes.length + 5;
          const target = view(sharedTarget, targetOffset + targetLength + 8, targetOffset, targetLength, 0xab);
          const expected = new Uint8Array(target.buffer.byteLength).fill(0xab);
          expected.set(bytes, targetOffset + targetStart);
          copyBytes(target, source, targetStart);
          // The whole underlying buffer: nothing written outside the range, every byte of it right.
          expect(Buffer.from(new Uint8Array(target.buffer))).toEqual(Buffer.from(expected));
          expect(Buffer.from(source)).toEqual(Buffer.from(bytes)); // the source is left alone
        },
      ),
    );
  });

  it('copies a whole page batch from an odd offset into a shared slab', () => {
    const frame = new Uint8Array(1 + 12 + 36 * 256 + 256 * 4096);
    for (let i = 0; i < frame.length; i++) frame[i] = (i * 131 + 7) & 0xff;
    const pages = frame.subarray(1 + 12 + 36 * 256);
    const slab = new Uint8Array(new SharedArrayBuffer(4 << 20), 0, pages.length);
    copyBytes(slab, pages);
    expect(Buffer.compare(Buffer.from(slab), Buffer.from(pages))).toBe(0);
  });

  it('refuses a copy past the end of the target rather than writing beyond the view', () => {
    const buffer = new ArrayBuffer(16);
    const target = new Uint8Array(buffer, 0, 8);
    expect(() => copyBytes(target, new Uint8Array(4), 5)).toThrow(RangeError);
    expect(() => copyBytes(target, new Uint8Array(1), -1)).toThrow(RangeError);
    expect(new Uint8Array(buffer)).toEqual(new Uint8Array(16));
  });
});

describe('zeroFill', () => {
  it('zeroes exactly [start, end) of shared and unshared buffers, views included', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.integer({ min: 0, max: 200_000 }),
        fc.integer({ min: 0, max: 64 }),
        fc.nat(),
        fc.nat(),
        (shared, length, viewOffset, a, b) => {
          const backing = new Uint8Array(shared ? new SharedArrayBuffer(length + viewOffset) : new ArrayBuffer(length + viewOffset));
          backing.fill(0xa5);
          const view = backing.subarray(viewOffset);
          const start = length === 0 ? 0 : a % (length + 1);
          const end = length === 0 ? 0 : start + (b % (length - start + 1));
          zeroFill(view, start, end);
          const want = new Uint8Array(length + viewOffset).fill(0xa5);
          want.fill(0, viewOffset + start, viewOffset + end);
          expect(Buffer.compare(Buffer.from(backing.buffer), Buffer.from(want))).toBe(0);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('zeroes the whole buffer by default, a window of 256 pages included', () => {
    const window = new Uint8Array(new SharedArrayBuffer(256 * 4096)).fill(7);
    zeroFill(window);
    expect(window.every((x) => x === 0)).toBe(true);
  });
});
