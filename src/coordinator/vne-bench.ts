/**
 * The environments, seeds and settings of the issue-14 measurements (bench/vne.mjs, bench/RESULTS.md),
 * shared with the test that asserts their claims (test/vne-claims.test.ts), so both run the very
 * same simulations. Simulated time: every figure is in simulated ms, deterministic per seed.
 *
 * The application is a bulk transfer, as the paper's (BitTorrent): each VM sends a 4 MB file to
 * the next in a ring, as fast as TCP's 8 kB window and a 200 kB/s path per VM pair allow, so the
 * undisturbed transfer's longest gap between two progresses is about one segment's time on the
 * path (5 ms). The stall is what the snapshot added to such a gap, against the undisturbed run of
 * the same environment and seed (src/sim/progress.ts).
 */
import { runEnvironment, resumeGroup } from './environment-run.js';
import { MemoryTarget } from './target.js';
import { scenarioSpec, type ScenarioOptions } from '../sim/scenario.js';
import type { AgentOptions } from './agent.js';
import type { EpochReport } from './executor.js';
import { addedStall, progressLogs, type AddedStall, type ProgressLogs } from '../sim/progress.js';

/** 512 pages at 1 ms a page: the smallest VM's first round takes ~0.5 s, a 16x larger one ~8 s. */
export const BENCH_BASE = {
  hosts: 2,
  minPages: 512,
  pageMs: 1,
  bytesPerSec: 0,
  transferMs: 0,
  transferBytes: 4_000_000,
  linkBytesPerSec: 200_000,
} as const;
export const BENCH_AGENT: AgentOptions = { dirtyThresholdPages: 32, maxRounds: 10, pauseOverheadMs: 10 };
export const BENCH_SEEDS = [1, 2, 3];

export interface BenchEnv {
  label: string;
  vms: number;
  sizeRatio: number;
}

export const BENCH_ENVS: BenchEnv[] = [
  { label: 'N=2, sizes 1-4x', vms: 2, sizeRatio: 4 },
  { label: 'N=4, sizes 1-4x', vms: 4, sizeRatio: 4 },
  { label: 'N=8, sizes 1-4x', vms: 8, sizeRatio: 4 },
  { label: 'N=4, sizes equal', vms: 4, sizeRatio: 1 },
  { label: 'N=4, sizes 1-16x', vms: 4, sizeRatio: 16 },
];

export interface BenchMode {
  syncStop: boolean;
  channels: 'drop' | 'hold';
}

export const BENCH_MODES: BenchMode[] = [
  { syncStop: false, channels: 'drop' },
  { syncStop: true, channels: 'drop' },
  { syncStop: false, channels: 'hold' },
  { syncStop: true, channels: 'hold' },
];

export interface BenchFigures {
  skewMs: number;
  framesDropped: number;
  framesHeld: number;
  longestRtoMs: number;
  /** The longest gap between two progresses of a transfer, raw: the application's own cadence included. */
  longestGapMs: number;
  /** The stall: the longest time the snapshot added to one such gap, against the undisturbed run (progress.ts). */
  stallMs: number;
  /** Where that stall is, and when the run first differed from the undisturbed one (progress.ts's AddedStall). */
  stall: AddedStall;
  /** The epoch's first pause (simulated ms): the run must not differ from the undisturbed one before it. */
  firstPauseMs: number;
  maxDowntimeMs: number;
  maxDurationMs: number;
  rounds: number[];
  /** With `resume`: the checker's count of frames lost across the cut, datagrams lost live and after the restore. */
  lostAcrossCut?: number;
  udpLostLive: number;
  udpLostRestored?: number;
  /**
   * The stall against its receiver's pause, when the gap spans it: how long before the pause the gap
   * began (the receiver's last progress before it), the receiver's downtime, and whether the gap ended
   * the instant the receiver resumed (what arrived meanwhile was handled then, not later).
   */
  stallAtPause?: { leadMs: number; downtimeMs: number; endsAtResume: boolean };
}

/** The undisturbed run of an environment and seed: its longest gap, and its progress to measure stalls against. */
export interface Undisturbed {
  longestGapMs: number;
  progress: ProgressLogs;
}

function spec(env: BenchEnv, channels: 'drop' | 'hold', seed: number) {
  const o: ScenarioOptions = { ...BENCH_BASE, seed, vms: env.vms, sizeRatio: env.sizeRatio, channels, name: 'bench' };
  return scenarioSpec(o);
}

const lostDatagrams = (ds: { sent: number; received: number }[]) => ds.reduce((n, d) => n + Math.max(0, d.sent - d.received - 1), 0);

/**
 * One coordinated snapshot at t = 1 s; throws unless it commits and every transfer ends with its
 * checksum (and, with `resume`, the group checks and resumes to them). `reference`: the undisturbed
 * run of the same environment and seed. `controlJitterMs`: the spread of the stop orders (default 2).
 */
export async function benchRun(
  env: BenchEnv,
  mode: BenchMode,
  seed: number,
  options: { resume: boolean; reference: Undisturbed; controlJitterMs?: number },
): Promise<BenchFigures> {
  const s = spec(env, mode.channels, seed);
  const target = new MemoryTarget();
  const r = await runEnvironment({
    spec: s,
    target,
    epochs: 1,
    firstAtMs: 1000,
    gapMs: 0,
    syncStop: mode.syncStop,
    timeoutMs: 120_000,
    agent: BENCH_AGENT,
    limitMs: 600_000,
    controlJitterMs: options.controlJitterMs,
  });
  const rep = r.reports[0];
  if (rep.outcome !== 'committed') throw new Error(`epoch aborted: ${rep.reason}`);
  if (!r.outcome.done || !r.outcome.transfers.every((t) => t.checksum === t.expected))
    throw new Error('a transfer ended with the wrong checksum');
  const stall = addedStall(progressLogs(r.env), options.reference.progress);
  const figures: BenchFigures = {
    skewMs: rep.skewMs,
    framesDropped: rep.framesDropped,
    framesHeld: rep.framesHeld,
    longestRtoMs: r.outcome.longestRtoMs,
    longestGapMs: r.outcome.longestGapMs,
    stallMs: stall.stallMs,
    stall,
    firstPauseMs: rep.startedAt + Math.min(...rep.vms.map((v) => v.flipAtMs)),
    maxDowntimeMs: Math.max(...rep.vms.map((v) => v.downtimeMs)),
    maxDurationMs: Math.max(...rep.vms.map((v) => v.durationMs)),
    rounds: rep.vms.map((v) => v.rounds),
    udpLostLive: lostDatagrams(r.outcome.datagrams),
    stallAtPause: stallAtPause(stall, rep),
  };
  if (options.resume) {
    const g = await resumeGroup(s, target, rep.group, rep.epoch, 600_000);
    if (g.check.violations.length > 0) throw new Error(`inconsistent group: ${g.check.violations[0]}`);
    if (!g.outcome.done || !g.outcome.transfers.every((t) => t.checksum === t.expected))
      throw new Error('a resumed transfer ended with the wrong checksum');
    figures.lostAcrossCut = g.check.lost;
    figures.udpLostRestored = lostDatagrams(g.outcome.datagrams);
  }
  return figures;
}

function stallAtPause(stall: AddedStall, rep: EpochReport): BenchFigures['stallAtPause'] {
  const receiver = stall.transfer.split('>')[1];
  const pause = rep.vms.find((v) => v.vm === receiver);
  if (!pause || stall.stallMs <= 0) return undefined;
  const at = rep.startedAt + pause.flipAtMs;
  if (stall.gapStartMs > at || stall.gapEndMs < at) return undefined;
  return {
    leadMs: at - stall.gapStartMs,
    downtimeMs: pause.downtimeMs,
    endsAtResume: Math.abs(stall.gapEndMs - (at + pause.downtimeMs)) < 1e-6,
  };
}

/** The same environment and seed with no snapshot: the application undisturbed. */
export async function undisturbedRun(env: BenchEnv, seed: number): Promise<Undisturbed> {
  const r = await runEnvironment({
    spec: spec(env, 'drop', seed),
    target: new MemoryTarget(),
    epochs: 0,
    firstAtMs: 0,
    gapMs: 0,
    syncStop: false,
    timeoutMs: 1,
    agent: BENCH_AGENT,
    limitMs: 600_000,
  });
  if (!r.outcome.done) throw new Error('the undisturbed run did not finish');
  return { longestGapMs: r.outcome.longestGapMs, progress: progressLogs(r.env) };
}
