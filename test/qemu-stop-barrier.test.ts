/** The synchronised stop's barrier (src/qemu/stop-barrier.ts): released once every member has arrived or left. */
import { setImmediate as tick } from 'node:timers/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StopBarrier } from '../src/qemu/stop-barrier.js';

describe('StopBarrier', () => {
  it('releases the members who arrived exactly when the last member arrives or leaves', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.boolean(), { minLength: 1, maxLength: 8 }), async (arrives) => {
        const barrier = new StopBarrier(arrives.length);
        const released: boolean[] = [];
        for (const [k, arrive] of arrives.entries()) {
          if (arrive) void barrier.arrive().then(() => (released[k] = true));
          else barrier.leave();
          await tick();
          const last = k === arrives.length - 1;
          // Before the last member nobody is released; after it, everyone who arrived.
          expect(released.filter(Boolean).length).toBe(last ? arrives.filter(Boolean).length : 0);
        }
      }),
      { numRuns: 50 },
    );
  });

  it('is open at once for no members', async () => {
    await expect(new StopBarrier(0).arrive()).resolves.toBeUndefined();
  });
});
