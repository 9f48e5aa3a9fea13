/** writevFully: every byte of every buffer goes out in order, whatever short writes the file system makes. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { writevFully } from '../src/util/durable.js';

/** A file handle whose writev takes at most the next planned number of bytes each call. */
function shortWriter(plan: number[]) {
  const written: Buffer[] = [];
  let call = 0;
  return {
    written,
    calls: () => call,
    async writev(buffers: Uint8Array[]): Promise<{ bytesWritten: number }> {
      const total = buffers.reduce((s, b) => s + b.length, 0);
      const take = Math.min(total, plan[call++ % plan.length]);
      let left = take;
      for (const b of buffers) {
        if (left === 0) break;
        const n = Math.min(left, b.length);
        written.push(Buffer.from(b.subarray(0, n)));
        left -= n;
      }
      return { bytesWritten: take };
    },
  };
}

describe('writevFully', () => {
  it('writes all bytes in order across short writes and empty buffers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 100 }), { minLength: 1, maxLength: 6 }),
        async (buffers, plan) => {
          const fh = shortWriter(plan);
          await writevFully(fh, buffers);
          expect(Buffer.concat(fh.written).equals(Buffer.concat(buffers))).toBe(true);
        },
      ),
    );
  });

  it('reports a write that makes no progress as a full disk', async () => {
    const fh = shortWriter([0]);
    await expect(writevFully(fh, [Buffer.from('abc')])).rejects.toMatchObject({ code: 'ENOSPC' });
  });
});
