/** `--lock-wait`: retries opening a store while another live process holds its lock. */
import { StoreLockedError } from '../store/lock.js';
import { VnstoreError } from '../util/errors.js';

export interface LockWaitClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realClock: LockWaitClock = { now: () => Date.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };

/**
 * Calls `open` until it does not fail with E_LOCKED or `waitMs` has passed. Polls at 50 ms, doubling
 * to 1 s: a short put frees the store quickly, a long one is not hammered. On a terminal, says once
 * whom it waits for. The final E_LOCKED says how long it waited.
 */
export async function openWaitingForLock<T>(
  open: () => Promise<T>,
  waitMs: number,
  clock: LockWaitClock = realClock,
  notify = tellWaiting,
): Promise<T> {
  const deadline = clock.now() + waitMs;
  let delay = 50;
  let told = false;
  for (;;) {
    try {
      return await open();
    } catch (err) {
      if (!(err instanceof VnstoreError) || err.code !== 'E_LOCKED' || waitMs <= 0) throw err;
      const left = deadline - clock.now();
      if (left <= 0)
        throw new VnstoreError('E_LOCKED', `${err.message} (waited ${(waitMs / 1000).toFixed(waitMs % 1000 ? 1 : 0)} s)`, { cause: err });
      if (!told) {
        notify(err instanceof StoreLockedError ? err.pid : undefined, waitMs);
        told = true;
      }
      await clock.sleep(Math.min(delay, left));
      delay = Math.min(delay * 2, 1000);
    }
  }
}

function tellWaiting(pid: number | undefined, waitMs: number): void {
  if (!process.stderr.isTTY) return;
  process.stderr.write(`vnstore: store is locked${pid ? ` by PID ${pid}` : ''}; waiting up to ${waitMs / 1000} s ...\n`);
}
