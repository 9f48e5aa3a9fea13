/**
 * Chunk numbers are never given twice: an allocator reopened from the mark it recorded (even with
 * every pack that held the highest numbers gone) continues above every number it gave; the mark's
 * text is checked like any catalog record.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NumberAllocator, parseNextNumber } from '../src/store/number-allocator.js';
import { CorruptError } from '../src/util/errors.js';

describe('chunk number allocator', () => {
  it('gives increasing numbers above the mark and the packs, and a reopen from its mark never repeats one', () => {
    fc.assert(
      fc.property(
        fc.nat(2 ** 40),
        fc.nat(2 ** 40),
        fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 20 }),
        fc.nat(2 ** 40),
        (mark, pastPacks, takes, packsAfter) => {
          const a = new NumberAllocator(mark, pastPacks);
          let last = Math.max(mark, pastPacks) - 1;
          for (const n of takes) {
            const first = a.take(n);
            expect(first).toBe(last + 1);
            last = first + n - 1;
          }
          expect(a.nextNumber).toBe(last + 1);
          // Reopened with whatever packs survive (possibly none of the newest): above all given.
          const reopened = new NumberAllocator(parseNextNumber(a.markValue()), Math.min(packsAfter, last + 1));
          expect(reopened.take()).toBeGreaterThan(last);
        },
      ),
    );
  });

  it('stops at 2^48 and refuses a damaged mark', () => {
    const a = new NumberAllocator(2 ** 48 - 2, 0);
    expect(a.take(2)).toBe(2 ** 48 - 2);
    expect(() => a.take()).toThrow(RangeError);
    expect(() => new NumberAllocator(0, 0).take(0)).toThrow(RangeError);
    expect(parseNextNumber(undefined)).toBe(0);
    expect(parseNextNumber(Buffer.from('0'))).toBe(0);
    expect(parseNextNumber(Buffer.from(String(2 ** 48)))).toBe(2 ** 48);
    for (const bad of ['', '01', '-1', '1e3', '12a', ' 7', String(2 ** 48 + 1), '9'.repeat(16)]) {
      expect(() => parseNextNumber(Buffer.from(bad)), JSON.stringify(bad)).toThrow(CorruptError);
    }
  });
});
