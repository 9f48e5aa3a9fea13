/** The small seeded environment the VNE kill tests share: 4 VMs of 64-192 pages on 2 hosts, paced transfers, and how its epochs run. */
import { scenarioSpec } from '../../src/sim/scenario.js';
import type { EnvSpec } from '../../src/sim/env.js';

export function killSpec(name: string, seed: number, channels: 'drop' | 'hold', transferMs: number): EnvSpec {
  return scenarioSpec({ name, seed, vms: 4, hosts: 2, minPages: 64, sizeRatio: 3, pageMs: 2, channels, bytesPerSec: 20_000, transferMs });
}

/** Epoch timing and agent settings of runEnvironment for it (epochs about 350-1000 simulated ms). */
export const KILL_RUN = {
  firstAtMs: 300,
  gapMs: 300,
  timeoutMs: 60_000,
  agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
  limitMs: 600_000,
};
