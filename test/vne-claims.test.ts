/**
 * The claims of bench/RESULTS.md's tables for issue 14, asserted on the very same simulations (the
 * environments, seeds and settings of src/coordinator/vne-bench.ts, which bench/vne.mjs runs).
 *
 * The stall is the time a snapshot adds to the application's longest wait: a gap between two
 * progresses of a transfer minus the undisturbed run's time over the same bytes (src/sim/progress.ts),
 * the undisturbed run being the same environment and seed with no snapshot. Asserted per environment,
 * seed and channel mode: the runs do not differ from the undisturbed one before the epoch's first
 * pause (so the reference is the same application doing the same thing); synchronised stop-and-copy
 * makes skew and stall at least 5x smaller; in hold mode nothing is dropped and the stall is at most
 * the longest downtime plus the flip window; with sync-stop exactly its receiver's downtime less the
 * part of it before the next segment was due, ending the instant the receiver resumes; and in drop
 * mode, where frames from post-snapshot VMs are dropped (without sync-stop), the stall is no shorter
 * than hold mode's on the same flips and exceeds that bound on some seed of every environment (TCP's
 * back-off), so the bound is not one every run meets.
 */
import { describe, expect, it } from 'vitest';
import { BENCH_ENVS, BENCH_SEEDS, benchRun, undisturbedRun, type BenchEnv, type BenchFigures } from '../src/coordinator/vne-bench.js';

const bound = (r: BenchFigures) => r.maxDowntimeMs + r.skewMs;

/** The claims on one environment and seed; returns how far drop mode without sync-stop stalls past downtime + window. */
async function claimsFor(env: BenchEnv, seed: number): Promise<number> {
  const reference = await undisturbedRun(env, seed);
  // undisturbed, about one segment's time on its path (5.12 ms) between progresses; with N=2 the
  // two transfers' acks share paths with the other's data
  expect(reference.longestGapMs, 'the bulk transfer undisturbed').toBeLessThan(8);
  const runs = { drop: { off: {}, on: {} }, hold: { off: {}, on: {} } } as Record<'drop' | 'hold', Record<'off' | 'on', BenchFigures>>;
  for (const channels of ['drop', 'hold'] as const) {
    const off = await benchRun(env, { syncStop: false, channels }, seed, { resume: false, reference });
    const on = await benchRun(env, { syncStop: true, channels }, seed, { resume: false, reference });
    runs[channels] = { off, on };
    const at = `seed ${seed}, ${channels}`;
    for (const r of [off, on])
      expect(r.stall.divergedAtMs, `${at}: the run is the undisturbed one until its first pause`).toBeGreaterThanOrEqual(r.firstPauseMs);
    expect(off.skewMs / on.skewMs, `${at}: skew ${off.skewMs} vs ${on.skewMs}`).toBeGreaterThanOrEqual(5);
    expect(off.stallMs / on.stallMs, `${at}: stall ${off.stallMs} vs ${on.stallMs}`).toBeGreaterThanOrEqual(5);
    const p = on.stallAtPause;
    expect(p, `${at}: with sync-stop the stall spans its receiver's pause`).toBeDefined();
    expect(p?.endsAtResume, `${at}: what arrived during the pause is handled at the resume`).toBe(true);
    // its receiver's downtime, less the part of it before the next segment was due (the gap began
    // `leadMs` before the pause; undisturbed, the gap over those bytes is `referenceGapMs`)
    expect(on.stallMs, at).toBeCloseTo((p?.leadMs ?? NaN) + (p?.downtimeMs ?? NaN) - on.stall.referenceGapMs, 6);
    expect(on.stallMs, at).toBeLessThanOrEqual(p?.downtimeMs ?? NaN);
  }
  const { drop, hold } = runs;
  for (const r of [hold.off, hold.on]) {
    expect(r.framesDropped, `seed ${seed}, hold`).toBe(0);
    expect(
      r.stallMs,
      `seed ${seed}, hold, sync-stop ${r === hold.on}: downtime ${r.maxDowntimeMs}, window ${r.skewMs}`,
    ).toBeLessThanOrEqual(bound(r));
  }
  expect(drop.off.framesDropped, `seed ${seed}, drop`).toBeGreaterThan(0);
  expect(drop.off.stallMs, `seed ${seed}: drop stalls no less than hold, on the same flips`).toBeGreaterThanOrEqual(hold.off.stallMs);
  // With sync-stop every VM is paused through the flip window, so none sends to a pre-snapshot VM:
  // nothing is dropped, and the drop-mode run is the hold-mode run.
  expect(drop.on.framesDropped, `seed ${seed}, drop`).toBe(0);
  expect(drop.on.stallMs, `seed ${seed}, drop with sync-stop`).toBe(hold.on.stallMs);
  return drop.off.stallMs - bound(drop.off);
}

describe('the bench environments: sync-stop, the stall bound, hold against drop', () => {
  it.each(BENCH_ENVS)('$label: the claims of bench/RESULTS.md', { timeout: 600_000 }, async (env) => {
    const dropOverBound: number[] = [];
    for (const seed of BENCH_SEEDS) dropOverBound.push(await claimsFor(env, seed));
    // The bound is not one every run meets: in drop mode without sync-stop, frames dropped between
    // post- and pre-snapshot VMs make TCP back off, and on some seeds of every environment the stall
    // outlasts downtime + window (on others a retransmission happens to land just after the last flip).
    expect(Math.max(...dropOverBound), `drop mode without sync-stop, stall over the bound per seed: ${dropOverBound}`).toBeGreaterThan(0);
  });
});
