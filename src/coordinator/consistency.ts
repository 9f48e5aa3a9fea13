/**
 * The consistency checker for a committed group: every receipt a VM's saved state records has its
 * send in the sender's saved state (no message from the future), and every frame of the channel
 * state was sent before its sender's cut and received after its receiver's. Frames sent before the
 * cut and neither received nor in the channel state are lost across the cut: counted, so drop mode
 * (TCP repairs them, datagrams stay lost) can be compared with hold mode (none lost).
 */
import type { ChannelFrame } from '../switch/core.js';
import { decodeSimFrame, inRuns, type GuestState } from '../sim/vm.js';
import { fnv1a, FNV_OFFSET } from '../sim/transport.js';
import type { TransferSpec } from '../sim/vm.js';

export interface ConsistencyReport {
  violations: string[];
  receipts: number;
  channelFrames: number;
  /** Sent before the sender's cut, not received before the receiver's, not in the channel state. */
  lost: number;
}

/** `names[i - 1]` is the VM with index i (the sender index in simulated frames). */
export function checkGroup(states: Map<string, GuestState>, channel: ChannelFrame[], names: string[]): ConsistencyReport {
  const violations: string[] = [];
  let receipts = 0;
  const inChannel = new Map<string, Set<number>>();
  for (const c of channel) {
    const f = decodeSimFrame(c.frame);
    if (!f || names[f.from - 1] !== c.src) {
      violations.push(`channel frame ${c.src}->${c.dst} is not a frame of ${c.src}`);
      continue;
    }
    const sent = states.get(c.src)?.sentFrames[c.dst] ?? 0;
    if (f.frameId >= sent) violations.push(`channel frame ${c.src}->${c.dst} #${f.frameId} was sent after ${c.src}'s cut (${sent} sent)`);
    if (inRuns(states.get(c.dst)?.recvFrames[c.src], f.frameId))
      violations.push(`channel frame ${c.src}->${c.dst} #${f.frameId} is also received in ${c.dst}'s state`);
    const key = `${c.src}>${c.dst}`;
    const set = inChannel.get(key) ?? new Set<number>();
    if (set.has(f.frameId)) violations.push(`channel frame ${key} #${f.frameId} recorded twice`);
    set.add(f.frameId);
    inChannel.set(key, set);
  }
  let lost = 0;
  for (const [dst, st] of states) {
    for (const [src, runs] of Object.entries(st.recvFrames)) {
      const sent = states.get(src)?.sentFrames[dst] ?? 0;
      for (let i = 0; i < runs.length; i += 2) {
        receipts += runs[i + 1] - runs[i];
        if (runs[i + 1] > sent) violations.push(`${dst} received ${src}'s frame #${runs[i + 1] - 1} but ${src}'s state sent only ${sent}`);
      }
    }
  }
  for (const [src, st] of states) {
    for (const [dst, sent] of Object.entries(st.sentFrames)) {
      const runs = states.get(dst)?.recvFrames[src];
      const ch = inChannel.get(`${src}>${dst}`);
      for (let id = 0; id < sent; id++) if (!inRuns(runs, id) && !ch?.has(id)) lost++;
    }
  }
  return { violations, receipts, channelFrames: channel.length, lost };
}

/**
 * Memory and disk of one cut agree: every file a VM's memory says it has received in order (the
 * receiver's offset and running checksum) is on its disk image, at its offset, with that checksum,
 * and nothing past that offset is (the file is written in order onto a zeroed disk).
 * Files are laid out on a receiver's disk one after another in the order of `transfers`.
 */
export function checkDisks(
  states: Map<string, GuestState>,
  disks: Map<string, Uint8Array | undefined>,
  transfers: TransferSpec[],
): string[] {
  const violations: string[] = [];
  const base = new Map<string, number>();
  for (const t of transfers) {
    const at = base.get(t.to) ?? 0;
    base.set(t.to, at + t.bytes);
    const r = states.get(t.to)?.tcpIn[t.from];
    const disk = disks.get(t.to);
    if (!r) continue;
    if (!disk || disk.length < at + t.bytes) {
      violations.push(`${t.to} has no disk image holding the file from ${t.from}`);
      continue;
    }
    if (fnv1a(FNV_OFFSET, disk.subarray(at, at + r.expected)) !== r.checksum)
      violations.push(`${t.to}'s disk does not hold the ${r.expected} bytes from ${t.from} its memory says it received`);
    // and nothing more: bytes past that offset would come from after the cut
    if (disk.subarray(at + r.expected, at + t.bytes).some((b) => b !== 0))
      violations.push(`${t.to}'s disk holds bytes from ${t.from} past the ${r.expected} its memory says it received`);
  }
  return violations;
}
