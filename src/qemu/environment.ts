/**
 * A coordinated snapshot of a QEMU environment: every VM's agent migrates its VM into the store
 * and flips its colour at the pause (vm-agent.ts), all at once; when every VM's members are
 * prepared they are committed as one group `<env>-e<epoch>`, all or none. If any VM fails the epoch
 * is aborted: the members prepared are dropped and every VM is flipped to the epoch, so frames
 * between VMs that did and did not flip are not judged against a cut that no longer exists
 * (docs/COORDINATION.md, "Aborted epochs").
 */
import type { SnapshotRecord } from '../store/db.js';
import type { MigrationStore } from './migration-store.js';
import type { QemuMember, QemuVmAgent } from './vm-agent.js';
import { StopBarrier } from './stop-barrier.js';
import { channelMemberName, encodeChannelState } from '../coordinator/channel-state.js';
import type { ChannelFrame } from '../switch/core.js';
import { VnstoreError } from '../util/errors.js';

export interface EnvironmentSnapshot {
  group: string;
  epoch: number;
  members: (QemuMember & { ram: SnapshotRecord; state: SnapshotRecord })[];
  /** Milliseconds between the first and the last flip acknowledged. */
  flipSkewMs: number;
  /** Milliseconds between the first and the last guest paused (QMP STOP events seen). */
  stopSkewMs?: number;
  /** Frames stored as the group's channel state (member `<env>.channels`), when it was fetched. */
  channelFrames?: number;
}

const spread = (xs: number[]) => Math.max(...xs) - Math.min(...xs);

export function groupId(env: string, epoch: number): string {
  return `${env}-e${epoch}`;
}

/**
 * The next epoch of `env`: one past both the highest `<env>-e<N>` group the store holds and the
 * VMs' colours at their switches (an aborted epoch stores no group but leaves its colour, and a
 * cut must raise every colour).
 */
export async function nextEpoch(store: MigrationStore, env: string, agents: QemuVmAgent[]): Promise<number> {
  const pattern = new RegExp(`^${env.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-e(\\d+)$`);
  let last = 0;
  for (const s of await store.listSnapshots()) {
    const m = s.group ? pattern.exec(s.group) : null;
    if (m) last = Math.max(last, Number(m[1]));
  }
  for (const colour of await Promise.all(agents.map((a) => a.colour()))) last = Math.max(last, colour);
  return last + 1;
}

/** The channel state as the group member `<env>.channels` (docs/COORDINATION.md), prepared. */
async function prepareChannelState(store: MigrationStore, env: string, group: string, frames: ChannelFrame[]): Promise<string> {
  const image = encodeChannelState(frames);
  const session = await store.beginSession({ vm: channelMemberName(env), group, memoryBytes: image.length });
  try {
    await session.writePages(0, image);
    return await session.prepare({ byteLength: image.length, unwritten: 'zero' });
  } catch (err) {
    await session.abort().catch(() => undefined);
    throw err;
  }
}

/**
 * With `syncStop`, the guests are paused together once every migration is nearly done (StopBarrier,
 * vm-agent.ts); without it, each when its own migration converges.
 */
export async function snapshotEnvironment(
  store: MigrationStore,
  agents: QemuVmAgent[],
  env: string,
  epoch: number,
  options: {
    syncStop?: boolean;
    /** The frames that crossed the cut, from the switch (hold mode): stored as one more member. */
    channelState?: () => Promise<ChannelFrame[]>;
  } = {},
): Promise<EnvironmentSnapshot> {
  const group = groupId(env, epoch);
  const barrier = options.syncStop ? new StopBarrier(agents.length) : undefined;
  const results = await Promise.allSettled(agents.map((a) => a.snapshot(group, epoch, barrier)));
  const members = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const ids = members.flatMap((m) => m.prepared.ids);
  const failures = results.flatMap((r, k) => (r.status === 'rejected' ? [`${agents[k].vm}: ${(r.reason as Error).message}`] : []));
  if (failures.length === 0) {
    try {
      // Every VM has flipped: no more frames cross this cut.
      const frames = options.channelState ? await options.channelState() : undefined;
      if (frames) ids.push(await prepareChannelState(store, env, group, frames));
      const records = await store.commitGroup(group, ids);
      const stops = members.flatMap((m) => (m.stoppedAt === undefined ? [] : [m.stoppedAt]));
      return {
        group,
        epoch,
        members: members.map((m, k) => ({ ...m, ram: records[2 * k], state: records[2 * k + 1] })),
        flipSkewMs: spread(members.map((m) => m.flippedAt)),
        stopSkewMs: stops.length === members.length ? spread(stops) : undefined,
        channelFrames: frames?.length,
      };
    } catch (err) {
      failures.push(`commit: ${(err as Error).message}`);
    }
  }
  await store.abortPrepared(ids).catch(() => undefined);
  await Promise.all(agents.map((a) => a.flip(epoch).catch(() => undefined)));
  throw new VnstoreError('E_SESSION', `epoch ${epoch} of ${env} aborted, no group stored: ${failures.join('; ')}`);
}
