/**
 * The coordinator: its pure state machine (commit only when every VM is prepared and the cut has
 * settled, synchronised stops only when every VM is ready, any failure or the deadline aborts, a
 * final state never changes) and its executor on a simulated environment, with faults.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isFinal, startEpoch, step, type CoordinatorConfig, type CoordinatorEvent, type EpochState } from '../src/coordinator/protocol.js';
import { runEnvironment } from '../src/coordinator/environment-run.js';
import { MemoryTarget } from '../src/coordinator/target.js';
import { scenarioSpec } from '../src/sim/scenario.js';

const config = (syncStop: boolean): CoordinatorConfig => ({ vms: ['a', 'b', 'c'], syncStop, timeoutMs: 10_000, settleMs: 5 });

function drive(cfg: CoordinatorConfig, events: CoordinatorEvent[]) {
  const first = startEpoch(cfg, 4, 0);
  let state: EpochState = first.state;
  const commands = [...first.commands];
  const log: { ev: CoordinatorEvent; cmds: typeof commands; state: EpochState }[] = [];
  for (const ev of events) {
    const r = step(cfg, state, ev);
    state = r.state;
    commands.push(...r.commands);
    log.push({ ev, cmds: r.commands, state });
  }
  return { state, commands, log };
}

describe('coordinator state machine', () => {
  it('without sync-stop: commits once every VM flipped and prepared and the settle time passed', () => {
    const ev: CoordinatorEvent[] = [
      { type: 'round', vm: 'a', now: 10 },
      { type: 'flipped', vm: 'a', now: 11, downtimeMs: 3 },
      { type: 'prepared', vm: 'a', now: 15 },
      { type: 'flipped', vm: 'b', now: 20, downtimeMs: 3 },
      { type: 'prepared', vm: 'b', now: 24 },
      { type: 'flipped', vm: 'c', now: 100, downtimeMs: 4 },
      { type: 'prepared', vm: 'c', now: 104 },
      { type: 'tick', now: 105 },
      { type: 'committed', now: 106 },
    ];
    const { state, commands, log } = drive(config(false), ev);
    expect(commands.map((c) => c.type)).toEqual(['precopy', 'precopy', 'precopy', 'commit']);
    expect(log[7].cmds).toEqual([{ type: 'commit' }]); // at 105 = last flip 100 + settle 5, not at 104
    expect(state.phase).toBe('committed');
    expect(state.vms.c).toMatchObject({ flipAt: 100, downtimeMs: 4, preparedAt: 104 });
  });

  it('waits with the commit while frames from before a cut are still travelling', () => {
    const { log, state } = drive(config(false), [
      { type: 'flipped', vm: 'a', now: 1, downtimeMs: 1 },
      { type: 'prepared', vm: 'a', now: 2 },
      { type: 'flipped', vm: 'b', now: 1, downtimeMs: 1 },
      { type: 'prepared', vm: 'b', now: 2 },
      { type: 'flipped', vm: 'c', now: 1, downtimeMs: 1 },
      { type: 'prepared', vm: 'c', now: 7 },
      { type: 'tick', now: 10, cutInFlight: 3 },
      { type: 'tick', now: 20, cutInFlight: 0 },
    ]);
    expect(log[6].cmds).toEqual([]);
    expect(log[7].cmds).toEqual([{ type: 'commit' }]);
    expect(state.phase).toBe('committing');
  });

  it('with sync-stop: orders every stop at once when the last VM is ready, not before', () => {
    const { commands, log } = drive(config(true), [
      { type: 'ready', vm: 'b', now: 5 },
      { type: 'ready', vm: 'a', now: 9 },
      { type: 'tick', now: 10 },
      { type: 'ready', vm: 'c', now: 50 },
      { type: 'ready', vm: 'c', now: 51 },
    ]);
    expect(log.slice(0, 3).every((l) => l.cmds.length === 0)).toBe(true);
    expect(log[3].cmds).toEqual([
      { type: 'stop', vm: 'a' },
      { type: 'stop', vm: 'b' },
      { type: 'stop', vm: 'c' },
    ]);
    expect(log[4].cmds).toEqual([]);
    expect(commands.filter((c) => c.type === 'stop')).toHaveLength(3);
  });

  it('aborts on a failure, on the deadline, on a failed commit, and never changes afterwards', () => {
    expect(drive(config(false), [{ type: 'failed', vm: 'b', now: 3, reason: 'agent crashed' }]).state).toMatchObject({
      phase: 'aborted',
      reason: 'b: agent crashed',
    });
    expect(drive(config(false), [{ type: 'tick', now: 10_001 }]).state).toMatchObject({
      phase: 'aborted',
      reason: 'timed out after 10000 ms',
    });
    const late = drive(config(false), [
      ...['a', 'b', 'c'].flatMap((vm): CoordinatorEvent[] => [
        { type: 'flipped', vm, now: 1, downtimeMs: 1 },
        { type: 'prepared', vm, now: 2 },
      ]),
      { type: 'tick', now: 6 },
      { type: 'commit-failed', now: 7, reason: 'disk full' },
      { type: 'committed', now: 8 },
    ]);
    expect(late.state).toMatchObject({ phase: 'aborted', reason: 'group commit failed: disk full' });
    expect(late.commands.map((c) => c.type)).toEqual(['precopy', 'precopy', 'precopy', 'commit', 'abort']);
  });

  it('property: commits at most once, only with every VM prepared, and a final state is final', () => {
    const vm = fc.constantFrom('a', 'b', 'c');
    const event = fc.oneof(
      fc.record({ type: fc.constantFrom('round' as const, 'ready' as const, 'prepared' as const), vm, now: fc.nat(20_000) }),
      fc.record({ type: fc.constant('flipped' as const), vm, now: fc.nat(20_000), downtimeMs: fc.nat(50) }),
      fc.record({ type: fc.constant('failed' as const), vm, now: fc.nat(20_000), reason: fc.constant('x') }),
      fc.record({ type: fc.constantFrom('tick' as const, 'committed' as const), now: fc.nat(20_000) }),
    );
    fc.assert(
      fc.property(fc.boolean(), fc.array(event, { maxLength: 40 }), (sync, evs) => {
        const sorted = [...evs].sort((x, y) => x.now - y.now);
        const { commands, log } = drive(config(sync), sorted);
        const commits = log.filter((l) => l.cmds.some((c) => c.type === 'commit'));
        expect(commits.length).toBeLessThanOrEqual(1);
        for (const l of commits) expect(Object.values(l.state.vms).every((v) => v.phase === 'prepared')).toBe(true);
        expect(commands.filter((c) => c.type === 'abort').length).toBeLessThanOrEqual(1);
        if (!sync) expect(commands.some((c) => c.type === 'stop')).toBe(false);
        for (let i = 1; i < log.length; i++) if (isFinal(log[i - 1].state)) expect(log[i].state).toBe(log[i - 1].state);
        if (commands.some((c) => c.type === 'abort')) expect(log[log.length - 1].state.phase).toBe('aborted');
      }),
      { numRuns: 500 },
    );
  });
});

describe('coordinator executor on a simulated environment', () => {
  const spec = (channels: 'drop' | 'hold') =>
    scenarioSpec({ seed: 11, vms: 4, hosts: 2, minPages: 64, sizeRatio: 8, pageMs: 4, channels, bytesPerSec: 20_000, transferMs: 4000 });
  const agent = { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 };

  it('records per VM rounds, downtime and flip time; sync-stop flips every VM inside a short window', async () => {
    const runs = [];
    for (const syncStop of [false, true]) {
      const target = new MemoryTarget();
      const r = await runEnvironment({
        spec: spec('drop'),
        target,
        epochs: 1,
        firstAtMs: 300,
        gapMs: 0,
        syncStop,
        timeoutMs: 60_000,
        agent,
        limitMs: 120_000,
      });
      expect(r.reports[0].outcome).toBe('committed');
      expect([...(target.groups.get(r.reports[0].group) as Map<string, Uint8Array>).keys()].sort()).toEqual([
        'vm0',
        'vm0.disk',
        'vm1',
        'vm1.disk',
        'vm2',
        'vm2.disk',
        'vm3',
        'vm3.disk',
      ]);
      for (const v of r.reports[0].vms) {
        expect(v.rounds).toBeGreaterThanOrEqual(1);
        expect(v.downtimeMs).toBeGreaterThan(agent.pauseOverheadMs);
        expect(v.durationMs).toBeGreaterThanOrEqual(v.flipAtMs + v.downtimeMs);
      }
      runs.push(r.reports[0]);
    }
    expect(runs[1].skewMs).toBeLessThanOrEqual(3); // control latency 1 ms + jitter up to 2 ms
    expect(runs[0].skewMs).toBeGreaterThan(500); // 64 to 512 pages at 4 ms a page
    expect(runs[0].framesDropped).toBeGreaterThan(0);
  });

  for (const channels of ['drop', 'hold'] as const) {
    it(`${channels}: a crashed agent, a hung agent or a failed commit aborts the whole epoch; the next one commits`, async () => {
      for (const fault of ['crash', 'hang', 'commit'] as const) {
        const target = new MemoryTarget();
        const r = await runEnvironment({
          spec: spec(channels),
          target,
          epochs: 2,
          firstAtMs: 300,
          gapMs: 200,
          syncStop: fault === 'hang',
          timeoutMs: 8000,
          agent,
          faults: fault === 'commit' ? undefined : { 1: { vm2: { kind: fault, atMs: 150 } } },
          failCommit: fault === 'commit' ? [1] : undefined,
          limitMs: 120_000,
        });
        expect(r.reports.map((x) => x.outcome)).toEqual(['aborted', 'committed']);
        expect(r.reports[0].reason).toMatch(
          fault === 'crash' ? /vm2: agent crashed/ : fault === 'hang' ? /timed out/ : /injected commit failure/,
        );
        expect([...target.groups.keys()]).toEqual([r.reports[1].group]);
        expect(target.openSessions).toBe(0);
        // the aborted epoch closed its colours: every VM is at epoch 2 now, none left behind
        for (const sw of r.env.switches.values()) for (const vm of sw.localVms) expect(sw.colourOf(vm)).toBe(2);
        expect(r.outcome.transfers.every((t) => t.checksum === t.expected && t.received === t.bytes)).toBe(true);
      }
    });
  }
});
