/**
 * The simulated VMs' frames through real `vnstore switch` processes, one per host with a tunnel
 * between them (src/sim/udp-network.ts), and one switch SIGKILLed at a random point of an epoch, then
 * restarted: no partial group is ever committed (the epoch aborts, or it commits whole and its group
 * is consistent and resumes to the undisturbed checksums), and the next epoch commits and is consistent.
 */
import { describe, expect, it, vi } from 'vitest';
import { runEnvironment, resumeGroup } from '../src/coordinator/environment-run.js';
import { MemoryTarget } from '../src/coordinator/target.js';
import { channelMemberName } from '../src/coordinator/channel-state.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import { diskMemberName } from '../src/sim/vm.js';
import { Rng } from '../src/sim/events.js';
import { UdpNetwork } from '../src/sim/udp-network.js';
import { startSwitchProcesses } from '../src/sim/switch-processes.js';
import { CLI } from './helpers/engine.js';
import { killSpec } from './helpers/vne-kill.js';

interface Case {
  seed: number;
  channels: 'drop' | 'hold';
  syncStop: boolean;
}

const CASES: Case[] = [
  { seed: 1, channels: 'hold', syncStop: true },
  { seed: 2, channels: 'drop', syncStop: true },
  { seed: 3, channels: 'hold', syncStop: false },
  { seed: 4, channels: 'drop', syncStop: false },
  { seed: 5, channels: 'hold', syncStop: true },
];

// The cases run two at a time: most of a case's real time is spent waiting for its switch
// processes, each case has its own, and the settle tolerates a slow switch.
vi.setConfig({ maxConcurrency: 2 });

async function killRun(c: Case) {
  const spec = killSpec(`k${c.seed}`, c.seed, c.channels, 3000);
  const members = [
    ...(c.channels === 'hold' ? [channelMemberName(spec.name)] : []),
    ...spec.vms.flatMap((v) => [v.name, diskMemberName(v.name)]),
  ].sort();
  const switches = await startSwitchProcesses(spec, CLI);
  const network = await UdpNetwork.open(switches.network);
  // A random point of epoch 2 (it takes about 500-1000 simulated ms here), down for 150 ms.
  const killAt = Math.round(new Rng(c.seed * 7919).range(0, 700));
  const events: string[] = [];
  const target = new MemoryTarget();
  try {
    const run = await runEnvironment({
      spec,
      target,
      network,
      epochs: 3,
      firstAtMs: 300,
      gapMs: 300,
      syncStop: c.syncStop,
      timeoutMs: 60_000,
      agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
      limitMs: 600_000,
      onEpoch: (epoch, env) => {
        if (epoch !== 2) return;
        env.clock.after(killAt, async () => {
          events.push(`kill at ${env.clock.now.toFixed(0)}`);
          await switches.kill('h1');
        });
        env.clock.after(killAt + 150, async () => {
          events.push(`restart at ${env.clock.now.toFixed(0)}`);
          await switches.start('h1'); // a fresh process: colours at 0, nothing held or recorded
        });
      },
    });
    return { spec, members, run, target, killAt, events };
  } finally {
    await network.close();
    await switches.stop();
  }
}

describe('a switch process killed mid-epoch', () => {
  it.concurrent.each(CASES)(
    'seed $seed, $channels, sync-stop $syncStop: no partial group, the next epoch commits consistent',
    { timeout: 120_000 },
    async (c) => {
      const { spec, members, run, target, killAt, events } = await killRun(c);
      const [e1, e2, e3] = run.reports;
      expect(events.length, 'the switch was killed and restarted').toBe(2);
      expect(Number(events[0].slice(8)), `killed ${killAt} ms into epoch 2`).toBeGreaterThanOrEqual(e2.startedAt);
      expect(e1.outcome).toBe('committed');
      expect(e3.outcome, e3.reason).toBe('committed');
      if (e2.outcome === 'aborted') expect(e2.reason).toMatch(/switch h1|flip/);
      expect([...target.groups.keys()].sort()).toEqual(
        run.reports
          .filter((r) => r.outcome === 'committed')
          .map((r) => r.group)
          .sort(),
      );
      for (const r of run.reports.filter((x) => x.outcome === 'committed')) {
        const images = target.groups.get(r.group) as Map<string, Uint8Array>;
        expect([...images.keys()].sort(), r.group).toEqual(members);
        const g = await resumeGroup(spec, target, r.group, r.epoch, 600_000);
        expect(g.check.violations, r.group).toEqual([]);
        expect(g.outcome.done, r.group).toBe(true);
        for (const t of g.outcome.transfers)
          expect([t.checksum, t.diskChecksum], `${r.group} ${t.from}->${t.to}`).toEqual([t.expected, t.expected]);
      }
      // the live run, through a switch that died and came back, still ends every transfer right
      expect(run.outcome.done).toBe(true);
      for (const t of run.outcome.transfers) expect(t.checksum).toBe(t.expected);
    },
  );
});

describe('the simulated VMs over switch processes', () => {
  it('run deterministically: the same seed gives the same epochs, and every group is consistent', { timeout: 120_000 }, async () => {
    const spec = scenarioSpec({
      name: 'det',
      seed: 8,
      vms: 4,
      hosts: 2,
      minPages: 64,
      sizeRatio: 3,
      pageMs: 2,
      channels: 'hold',
      bytesPerSec: 20_000,
      transferMs: 2000,
    });
    const once = async () => {
      const switches = await startSwitchProcesses(spec, CLI);
      const network = await UdpNetwork.open(switches.network);
      const target = new MemoryTarget();
      try {
        const run = await runEnvironment({
          spec,
          target,
          network,
          epochs: 2,
          firstAtMs: 300,
          gapMs: 300,
          syncStop: true,
          timeoutMs: 60_000,
          agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
          limitMs: 600_000,
        });
        return { run, target };
      } finally {
        await network.close();
        await switches.stop();
      }
    };
    const a = await once();
    const b = await once();
    expect(a.run.reports.map((r) => r.outcome)).toEqual(['committed', 'committed']);
    expect(b.run.reports).toEqual(a.run.reports);
    expect(b.run.outcome).toEqual(a.run.outcome);
    for (const r of a.run.reports) {
      for (const [m, image] of a.target.groups.get(r.group) as Map<string, Uint8Array>)
        expect(Buffer.from(image).equals(Buffer.from(b.target.groups.get(r.group)?.get(m) as Uint8Array)), `${r.group}/${m}`).toBe(true);
      const g = await resumeGroup(spec, a.target, r.group, r.epoch, 600_000);
      expect(g.check.violations).toEqual([]);
      expect(g.check.lost, 'hold mode: nothing lost across the cut').toBe(0);
      expect(g.outcome.done).toBe(true);
    }
  });

  it(
    'refuse a switch whose colours are already past the epoch (it would apply no cut): the epoch aborts, nothing is committed',
    { timeout: 60_000 },
    async () => {
      const spec = scenarioSpec({
        name: 'ahead',
        seed: 9,
        vms: 2,
        hosts: 2,
        minPages: 32,
        sizeRatio: 1,
        pageMs: 1,
        channels: 'drop',
        bytesPerSec: 20_000,
        transferMs: 500,
      });
      const switches = await startSwitchProcesses(spec, CLI, 5);
      const network = await UdpNetwork.open(switches.network);
      const target = new MemoryTarget();
      try {
        const run = await runEnvironment({
          spec,
          target,
          network,
          epochs: 1,
          firstAtMs: 100,
          gapMs: 0,
          syncStop: true,
          timeoutMs: 60_000,
          agent: { dirtyThresholdPages: 8, maxRounds: 4, pauseOverheadMs: 2 },
          limitMs: 600_000,
        });
        expect(run.reports[0]).toMatchObject({ outcome: 'aborted' });
        expect(run.reports[0].reason).toMatch(
          /switch h0 has vm0 at colour 5, past this environment's last epoch 0: restart it with --epoch 0/,
        );
        expect(target.groups.size).toBe(0);
      } finally {
        await network.close();
        await switches.stop();
      }
    },
  );
});
