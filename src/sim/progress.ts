/**
 * The application's stall as the time a snapshot adds to its waits (issue 14's bound), measured
 * against an undisturbed run of the same environment and seed.
 *
 * A gap between two in-order progresses of a transfer contains the application's own cadence (a
 * segment every ~5 ms on a 200 kB/s path), with or without a snapshot. So the stall of one gap is
 * how much longer it is than the undisturbed run's gap over the same bytes: the gap from the
 * progress to `a` bytes to the progress to `b` bytes, minus the undisturbed run's time from having
 * `a` bytes to having `b`. Where the gap begins at the same instant in both runs (the first gap a
 * snapshot touches), that is exactly the time from the moment the next segment was handled
 * undisturbed to the moment it was handled here.
 */
import type { SimEnv } from './env.js';

/** One transfer's in-order progress at its receiver: after each, the bytes it had in order and when. */
export interface ProgressLog {
  bytes: number[];
  at: number[];
}

/** Every transfer's progress log, by `from>to`. */
export type ProgressLogs = Map<string, ProgressLog>;

export interface AddedStall {
  /** The longest time a snapshot added to one gap between two progresses (0 if it added none). */
  stallMs: number;
  /** Where: the transfer, the gap's start and end in this run, and the undisturbed run's time over the same bytes. */
  transfer: string;
  gapStartMs: number;
  gapEndMs: number;
  referenceGapMs: number;
  /**
   * The first moment a progress of this run differs from the undisturbed run's (in time or in bytes):
   * before it the two runs are the same application doing the same thing. Infinity if never.
   */
  divergedAtMs: number;
}

export function progressLogs(env: SimEnv): ProgressLogs {
  const out: ProgressLogs = new Map();
  for (const [to, vm] of env.vms) for (const [from, log] of vm.progress) out.set(`${from}>${to}`, log);
  return out;
}

/** The time the reference first had at least `bytes` in order (binary search; its bytes only grow). */
function reachedAt(ref: ProgressLog, bytes: number): number {
  let lo = 0;
  let hi = ref.bytes.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ref.bytes[mid] < bytes) lo = mid + 1;
    else hi = mid;
  }
  if (lo === ref.bytes.length) throw new Error(`the undisturbed run never reached ${bytes} bytes`);
  return ref.at[lo];
}

/**
 * The longest stall `run` has beyond `reference` (the same environment and seed, no snapshot). The
 * wait for a transfer's first byte is its start, not a stall: the first gap is from the first progress.
 */
export function addedStall(run: ProgressLogs, reference: ProgressLogs): AddedStall {
  let worst: AddedStall = { stallMs: 0, transfer: '', gapStartMs: 0, gapEndMs: 0, referenceGapMs: 0, divergedAtMs: Infinity };
  let divergedAtMs = Infinity;
  for (const [transfer, log] of run) {
    const ref = reference.get(transfer);
    if (!ref) throw new Error(`the undisturbed run has no transfer ${transfer}`);
    for (let i = 0; i < log.bytes.length; i++) {
      if (log.bytes[i] !== ref.bytes[i] || log.at[i] !== ref.at[i]) divergedAtMs = Math.min(divergedAtMs, log.at[i], ref.at[i] ?? Infinity);
      if (i === 0) continue;
      const referenceGapMs = reachedAt(ref, log.bytes[i]) - reachedAt(ref, log.bytes[i - 1]);
      const stallMs = log.at[i] - log.at[i - 1] - referenceGapMs;
      if (stallMs > worst.stallMs)
        worst = { stallMs, transfer, gapStartMs: log.at[i - 1], gapEndMs: log.at[i], referenceGapMs, divergedAtMs: Infinity };
    }
  }
  return { ...worst, divergedAtMs };
}
