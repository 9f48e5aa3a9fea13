import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { zeroFill } from '../src/util/zero-fill.js';

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
