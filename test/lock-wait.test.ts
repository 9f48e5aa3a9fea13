/** --lock-wait's retry loop (src/cli/lock-wait.ts) against a fake clock. */
import { describe, expect, it } from 'vitest';
import { openWaitingForLock, type LockWaitClock } from '../src/cli/lock-wait.js';
import { StoreLockedError } from '../src/store/lock.js';
import { VnstoreError } from '../src/util/errors.js';

function fakeClock(): LockWaitClock & { sleeps: number[] } {
  let t = 0;
  const sleeps: number[] = [];
  return { sleeps, now: () => t, sleep: async (ms) => void (sleeps.push(ms), (t += ms)) };
}

describe('openWaitingForLock', () => {
  it('retries while locked, backing off from 50 ms to 1 s, and returns what open returns', async () => {
    const clock = fakeClock();
    let calls = 0;
    const told: (number | undefined)[] = [];
    const r = await openWaitingForLock(
      async () => {
        if (++calls < 8) throw new StoreLockedError(4242);
        return 'open';
      },
      60_000,
      clock,
      (pid) => told.push(pid),
    );
    expect(r).toBe('open');
    expect(clock.sleeps).toEqual([50, 100, 200, 400, 800, 1000, 1000]);
    expect(told).toEqual([4242]); // said once
  });

  it('gives up at the deadline with the holder named and the wait said', async () => {
    const clock = fakeClock();
    const err = await openWaitingForLock(
      () => Promise.reject(new StoreLockedError(7)),
      2500,
      clock,
      () => undefined,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VnstoreError);
    expect((err as VnstoreError).code).toBe('E_LOCKED');
    expect((err as VnstoreError).message).toMatch(/PID 7\b.*\(waited 2\.5 s\)$/);
    expect(clock.sleeps.reduce((a, b) => a + b, 0)).toBe(2500);
  });

  it('does not wait without --lock-wait, nor on other errors', async () => {
    const clock = fakeClock();
    let calls = 0;
    const locked = () => {
      calls++;
      return Promise.reject(new StoreLockedError(7));
    };
    await expect(openWaitingForLock(locked, 0, clock)).rejects.toThrow(/PID 7/);
    await expect(openWaitingForLock(() => Promise.reject(new VnstoreError('E_NOT_STORE', 'no')), 10_000, clock)).rejects.toThrow('no');
    expect(calls).toBe(1);
    expect(clock.sleeps).toEqual([]);
  });
});
