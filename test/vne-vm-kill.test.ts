/**
 * A VM killed mid-epoch (its hypervisor process dies: the VM stops for good, its agent's calls on it
 * fail, frames for it are lost), with the agents and switches in this process; the same with agent
 * processes is in test/vne-agents.test.ts. No partial group is committed, and the environment,
 * restored from its last committed group as a whole, takes the next epoch, which commits; every
 * group resumes to the transfers' checksums.
 */
import { describe, expect, it } from 'vitest';
import { resumeGroup, runEnvironment } from '../src/coordinator/environment-run.js';
import { MemoryTarget } from '../src/coordinator/target.js';
import { channelMemberName } from '../src/coordinator/channel-state.js';
import { diskMemberName } from '../src/sim/vm.js';
import { Rng } from '../src/sim/events.js';
import { KILL_RUN, killSpec } from './helpers/vne-kill.js';

// `window`: the kill's simulated time after epoch 2 starts is drawn from it (epoch 2 lasts about
// 350-500 ms here: early kills abort it, late ones come after its commit).
const CASES = [
  { seed: 1, channels: 'hold' as const, syncStop: true, window: [0, 350] },
  { seed: 2, channels: 'drop' as const, syncStop: true, window: [0, 350] },
  { seed: 3, channels: 'hold' as const, syncStop: false, window: [0, 350] },
  { seed: 4, channels: 'drop' as const, syncStop: false, window: [0, 350] },
  { seed: 5, channels: 'hold' as const, syncStop: true, window: [0, 350] },
  { seed: 6, channels: 'hold' as const, syncStop: false, window: [500, 800] },
];

const RUN = KILL_RUN;

describe('a VM killed mid-epoch (its hypervisor process dies)', () => {
  it.each(CASES)(
    'seed $seed, $channels, sync-stop $syncStop: no partial group; restored from the last group, the next epoch commits',
    async (c) => {
      const spec = killSpec(`vk${c.seed}`, c.seed, c.channels, 3000);
      const rng = new Rng(c.seed * 7919);
      const killAt = Math.round(rng.range(c.window[0], c.window[1]));
      const victim = spec.vms[rng.int(spec.vms.length)].name;
      const target = new MemoryTarget();
      const members = [
        ...(c.channels === 'hold' ? [channelMemberName(spec.name)] : []),
        ...spec.vms.flatMap((v) => [v.name, diskMemberName(v.name)]),
      ].sort();
      const dead = await runEnvironment({
        ...RUN,
        spec,
        target,
        epochs: 2,
        syncStop: c.syncStop,
        tail: false, // with a VM dead its transfers cannot finish
        onEpoch: (epoch, env) => {
          if (epoch === 2) env.clock.after(killAt, () => env.killVm(victim));
        },
      });
      const [e1, e2] = dead.reports;
      expect(e2.outcome, 'the runs are deterministic: early kills abort epoch 2, late ones follow its commit').toBe(
        c.window[0] === 0 ? 'aborted' : 'committed',
      );
      expect(e1.outcome, e1.reason).toBe('committed');
      if (e2.outcome === 'aborted') expect(e2.reason).toMatch(new RegExp(`VM ${victim} is gone: its hypervisor process died`));
      else expect(Math.max(...e2.vms.map((v) => v.durationMs)), 'committed: every VM had prepared before the kill').toBeLessThan(killAt);
      const last = dead.reports.filter((r) => r.outcome === 'committed').at(-1)!;

      // The environment brought back from its last group, whole; the next epoch commits.
      const restored = await runEnvironment({
        ...RUN,
        spec,
        target,
        epochs: 1,
        firstEpoch: 3,
        syncStop: c.syncStop,
        from: { images: target.groups.get(last.group)!, epoch: last.epoch },
      });
      const [e3] = restored.reports;
      expect(e3.outcome, e3.reason).toBe('committed');
      const reports = [...dead.reports, e3];
      const committed = reports.filter((r) => r.outcome === 'committed');
      expect([...target.groups.keys()].sort()).toEqual(committed.map((r) => r.group).sort());
      for (const r of committed) {
        expect([...(target.groups.get(r.group) as Map<string, Uint8Array>).keys()].sort(), r.group).toEqual(members);
        const g = await resumeGroup(spec, target, r.group, r.epoch, 600_000);
        expect(g.check.violations, r.group).toEqual([]);
        if (c.channels === 'hold') expect(g.check.lost, `${r.group}: hold mode loses nothing across the cut`).toBe(0);
        expect(g.outcome.done, r.group).toBe(true);
        for (const t of g.outcome.transfers)
          expect([t.checksum, t.diskChecksum], `${r.group} ${t.from}->${t.to}`).toEqual([t.expected, t.expected]);
      }
      // the restored environment's live run ends every transfer right
      expect(restored.outcome.done).toBe(true);
      for (const t of restored.outcome.transfers) expect(t.checksum).toBe(t.expected);
    },
  );
});
