/**
 * A whole simulated run: an environment under traffic, coordinated snapshots at set times (with
 * injected faults), the run to the end of its transfers; and a group restore: the environment
 * resumed from a committed group's images (and its channel state), checked and run to the end.
 */
import { runEpoch, type AgentFactory, type EpochReport } from './executor.js';
import type { AgentOptions } from './agent.js';
import { channelMemberName, decodeChannelState } from './channel-state.js';
import { checkDisks, checkGroup, type ConsistencyReport } from './consistency.js';
import type { GroupReader, SnapshotTarget } from './target.js';
import { SimEnv, type EnvSpec } from '../sim/env.js';
import type { UdpNetwork } from '../sim/udp-network.js';
import { decodeGuestState, diskMemberName, type GuestState } from '../sim/vm.js';
import { outcomeOf, type Outcome } from '../sim/outcome.js';

export interface RunOptions<P> {
  spec: EnvSpec;
  target: SnapshotTarget<P>;
  epochs: number;
  /** Number of the first epoch (default 1): after the environment's last committed one. */
  firstEpoch?: number;
  /** First epoch starts here; each next one `gapMs` after the previous one ended. */
  firstAtMs: number;
  gapMs: number;
  syncStop: boolean;
  timeoutMs: number;
  agent: AgentOptions;
  controlMs?: number;
  controlJitterMs?: number;
  /** Fault injection: epoch number → VM → agent fault; epochs whose group commit fails. */
  faults?: Record<number, Record<string, AgentOptions['fault']>>;
  failCommit?: number[];
  /** Give up (transfers unfinished) at this simulated time. */
  limitMs: number;
  /** Called with the environment once it exists (tests observe its VMs). */
  onEnv?: (env: SimEnv) => void;
  /** Called as each epoch starts (tests schedule faults relative to it). */
  onEpoch?: (epoch: number, env: SimEnv) => void;
  /** The VMs' frames go through real switch processes (udp-network.ts) instead of in-process switches. */
  network?: UdpNetwork;
  /** Each VM's agent (default: in this process); control-link.ts's `remoteAgents` for agent processes. */
  agents?: AgentFactory<P>;
  /** Start from a committed group (a group restore) instead of afresh: its images, its channel state re-delivered. */
  from?: { images: Map<string, Uint8Array>; epoch: number };
  /** After the last epoch, run on until the transfers finish (default true; false: a run that cannot finish, such as one whose VM died). */
  tail?: boolean;
}

export async function runEnvironment<P>(o: RunOptions<P>): Promise<{ reports: EpochReport[]; outcome: Outcome; env: SimEnv }> {
  const first = o.firstEpoch ?? 1;
  const env = o.from
    ? restoredEnvironment(o.spec, o.from.images, o.from.epoch, { epoch: first - 1, network: o.network })
    : new SimEnv(o.spec, { epoch: first - 1, network: o.network });
  o.onEnv?.(env);
  const reports: EpochReport[] = [];
  let at = o.firstAtMs;
  for (let e = first; e < first + o.epochs; e++) {
    await env.clock.runUntil(() => false, at);
    const failing = o.failCommit?.includes(e);
    o.onEpoch?.(e, env);
    reports.push(
      await runEpoch(env, o.target, {
        epoch: e,
        syncStop: o.syncStop,
        timeoutMs: o.timeoutMs,
        agent: o.agent,
        faults: o.faults?.[e],
        agents: o.agents,
        controlMs: o.controlMs ?? 1,
        controlJitterMs: o.controlJitterMs ?? 2,
        beforeCommit: failing
          ? () => {
              throw new Error('injected commit failure');
            }
          : undefined,
      }),
    );
    at = env.clock.now + o.gapMs;
  }
  if (o.tail ?? true) await env.clock.runUntil(() => env.transfersDone(), o.limitMs);
  return { reports, outcome: outcomeOf(env), env };
}

export interface GroupRestore {
  images: Map<string, Uint8Array>;
  check: ConsistencyReport;
  outcome: Outcome;
}

/**
 * Resumes the whole environment from a committed group: every VM from its memory and disk images, the group's
 * channel state re-delivered (hold mode), every VM's colour at the group's epoch; then checks the
 * group's consistency and runs the environment until its transfers finish.
 */
export async function resumeGroup(
  spec: EnvSpec,
  reader: GroupReader,
  group: string,
  epoch: number,
  limitMs: number,
): Promise<GroupRestore> {
  const images = await reader.readGroup(group);
  if (!images) throw new Error(`no committed group ${group}`);
  const names = spec.vms.map((v) => v.name);
  const missing = names.filter((n) => !images.has(n));
  if (missing.length > 0) throw new Error(`group ${group} lacks ${missing.join(', ')}: a partial group was committed`);
  const channel = channelStateOf(spec, images, epoch);
  const states = new Map<string, GuestState>(names.map((n) => [n, decodeGuestState(images.get(n) as Uint8Array)]));
  const check = checkGroup(states, channel, names);
  check.violations.push(...checkDisks(states, new Map(names.map((n) => [n, images.get(diskMemberName(n))])), spec.transfers));
  const env = restoredEnvironment(spec, images, epoch);
  await env.clock.runUntil(() => env.transfersDone(), limitMs);
  return { images, check, outcome: outcomeOf(env) };
}

function channelStateOf(spec: EnvSpec, images: Map<string, Uint8Array>, epoch: number) {
  const image = images.get(channelMemberName(spec.name));
  return image ? decodeChannelState(image, epoch) : [];
}

/**
 * The environment as a committed group of epoch `groupEpoch` left it: every VM from its images, the
 * group's channel state re-delivered before anything runs (a finished environment must still get it).
 * `options.epoch`: the colours it starts at (default the group's; higher after aborted epochs).
 */
export function restoredEnvironment(
  spec: EnvSpec,
  images: Map<string, Uint8Array>,
  groupEpoch: number,
  options: { epoch?: number; network?: UdpNetwork } = {},
): SimEnv {
  const env = new SimEnv(spec, { epoch: options.epoch ?? groupEpoch, images, network: options.network });
  env.redeliver(channelStateOf(spec, images, groupEpoch));
  return env;
}
