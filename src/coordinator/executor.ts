/**
 * Runs one epoch of the protocol (protocol.ts) on a simulated environment: starts the agents,
 * delivers the coordinator's stop orders over a control channel with a small latency, collects the
 * switches' channel state, commits the group through the target or aborts every member. An aborted
 * epoch closes its colours (every VM flips to it), so the next epoch starts from one colour.
 */
import { localVm, SimAgent, type AgentOptions, type EpochAgent } from './agent.js';
import { channelMemberName, encodeChannelState } from './channel-state.js';
import { epochFigures, isFinal, startEpoch, step, type CoordinatorCommand, type CoordinatorEvent, type EpochState } from './protocol.js';
import type { SnapshotTarget } from './target.js';
import type { SimEnv } from '../sim/env.js';
import { Rng } from '../sim/events.js';

export type AgentFactory<P> = (env: SimEnv, vm: string, options: AgentOptions, report: (ev: CoordinatorEvent) => void) => EpochAgent<P>;

export interface EpochOptions<P = unknown> {
  epoch: number;
  syncStop: boolean;
  timeoutMs: number;
  agent: AgentOptions;
  /** Per-VM agent faults (fault injection), by VM name. */
  faults?: Record<string, AgentOptions['fault']>;
  /** Control message latency, ms, plus up to `controlJitterMs` more per VM. */
  controlMs: number;
  controlJitterMs: number;
  /** Makes each VM's agent (default: a SimAgent in this process; control-link.ts: one in an agent process). */
  agents?: AgentFactory<P>;
  /** Injected before the group commit (tests): throw to make the commit fail. */
  beforeCommit?: () => void;
}

export interface EpochReport {
  epoch: number;
  group: string;
  outcome: 'committed' | 'aborted';
  reason?: string;
  vms: { vm: string; rounds: number; durationMs: number; downtimeMs: number; flipAtMs: number }[];
  skewMs: number;
  startedAt: number;
  /** Frames of this epoch's post-snapshot senders dropped, and held, at the switches. */
  framesDropped: number;
  framesHeld: number;
  /** Frames delivered across the cut (pre-snapshot sender, post-snapshot receiver). */
  framesCrossing: number;
  channelFrames: number;
}

export function groupId(env: string, epoch: number): string {
  return `${env}-e${epoch}`;
}

export async function runEpoch<P>(env: SimEnv, target: SnapshotTarget<P>, o: EpochOptions<P>): Promise<EpochReport> {
  const names = env.spec.vms.map((v) => v.name);
  const config = { vms: names, syncStop: o.syncStop, timeoutMs: o.timeoutMs, settleMs: 2 * env.spec.tunnelMs + env.spec.tickMs };
  const group = groupId(env.spec.name, o.epoch);
  const clock = env.clock;
  const jitter = new Rng(env.spec.seed ^ (o.epoch * 7919));
  let state: EpochState;
  const agents = new Map<string, EpochAgent<P>>();
  let channelFrames = 0;
  let channelPrepared: P | undefined;

  const feed = (ev: CoordinatorEvent) => {
    const r = step(config, state, ev);
    state = r.state;
    apply(r.commands);
  };
  const apply = (commands: CoordinatorCommand[]) => {
    for (const c of commands) {
      if (c.type === 'precopy') {
        const a = agents.get(c.vm) as EpochAgent<P>;
        clock.after(0, () => a.start(group, o.epoch, o.syncStop));
      } else if (c.type === 'stop') {
        const a = agents.get(c.vm) as EpochAgent<P>;
        clock.after(o.controlMs + jitter.next() * o.controlJitterMs, () => a.stop(o.epoch));
      } else if (c.type === 'commit') {
        clock.after(0, () => commit());
      }
      // 'abort': the state is final, so the run below stops and aborts before the clock moves on
    }
  };
  const commit = async () => {
    try {
      const prepared = names.flatMap((n) => (agents.get(n) as EpochAgent<P>).preparedMembers);
      // Switch processes: one restarted since the epoch opened forgot the colours it judged the cut by.
      await env.confirmEpoch(o.epoch);
      if (env.spec.channels === 'hold') {
        const frames = await env.takeChannelState(o.epoch);
        channelFrames = frames.length;
        const image = encodeChannelState(frames);
        const s = await target.beginSession({ vm: channelMemberName(env.spec.name), group, epoch: o.epoch, memoryBytes: image.length });
        await s.writePages(0, image); // its last page short: the image is exactly the encoding
        channelPrepared = await s.prepare({ byteLength: image.length });
        prepared.push(channelPrepared);
      }
      o.beforeCommit?.();
      await target.commitGroup(group, prepared);
      feed({ type: 'committed', now: clock.now });
    } catch (err) {
      feed({ type: 'commit-failed', now: clock.now, reason: (err as Error).message });
    }
  };
  const abort = async () => {
    for (const a of agents.values()) await a.abort();
    if (channelPrepared !== undefined) await target.abortPrepared([channelPrepared]).catch(() => undefined);
    // Close the aborted epoch's colours (best effort: a switch that is down gets them when the next epoch opens).
    for (const n of names) await env.flip(n, o.epoch).catch(() => undefined);
    env.discardChannelState(o.epoch);
  };

  const first = startEpoch(config, o.epoch, clock.now);
  state = first.state;
  const make: AgentFactory<P> = o.agents ?? ((e, n, options, report) => new SimAgent(localVm(e, n), target, options, report));
  for (const n of names) agents.set(n, make(env, n, { ...o.agent, fault: o.faults?.[n] }, feed));
  // Every colour at the last closed epoch (a restarted switch process starts lower); a switch that
  // cannot be reached fails the epoch before it starts: a flip it misses could not be confirmed.
  const opened = await env.openEpoch(o.epoch - 1).then(
    () => undefined,
    (err: Error) => err.message,
  );
  if (opened === undefined) apply(first.commands);
  else feed({ type: 'failed', vm: 'network', now: clock.now, reason: opened });
  const tick = () => {
    if (isFinal(state)) return;
    feed({ type: 'tick', now: clock.now, cutInFlight: env.framesInFlightBefore(o.epoch) });
    clock.after(env.spec.tickMs, tick);
  };
  clock.after(env.spec.tickMs, tick);
  await clock.runUntil(() => isFinal(state), Infinity);
  if (state.phase === 'aborted') await abort();
  const figures = epochFigures(state);
  const all = await env.epochCounters(o.epoch);
  const counters = all.filter((c) => c.epoch === o.epoch);
  return {
    epoch: o.epoch,
    group,
    outcome: state.phase === 'committed' ? 'committed' : 'aborted',
    reason: state.reason,
    ...figures,
    startedAt: state.startedAt,
    framesDropped: counters.reduce((s, c) => s + c.dropped, 0),
    framesHeld: counters.reduce((s, c) => s + c.held, 0),
    framesCrossing: all.filter((c) => c.epoch === o.epoch - 1).reduce((s, c) => s + c.crossing, 0),
    channelFrames,
  };
}
