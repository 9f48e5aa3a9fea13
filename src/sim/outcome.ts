/** What a simulated run achieved, read from its VMs' states: transfers, datagrams, back-off, the longest gap. */
import type { SimEnv } from './env.js';
import { expectedChecksum, fnv1a, FNV_OFFSET } from './transport.js';
import type { GuestState, SimVm } from './vm.js';

export interface Outcome {
  /** `checksum`: the receiver's running checksum; `diskChecksum`: of what its disk holds. */
  transfers: { from: string; to: string; bytes: number; received: number; checksum: number; diskChecksum: number; expected: number }[];
  datagrams: { from: string; to: string; sent: number; received: number }[];
  longestRtoMs: number;
  timeouts: number;
  /**
   * The longest gap between two in-order progresses of a transfer (not its first byte). Raw: it holds
   * the application's own cadence too; the stall a snapshot adds is progress.ts's `addedStall`.
   */
  longestGapMs: number;
  finishedAtMs: number;
  done: boolean;
}

export function outcomeOf(env: SimEnv): Outcome {
  const states = [...env.vms.values()].map((v) => ({ name: v.spec.name, s: v.state }));
  const get = (n: string) => states.find((x) => x.name === n)?.s as GuestState;
  return {
    transfers: env.spec.transfers.map((t) => ({
      from: t.from,
      to: t.to,
      bytes: t.bytes,
      received: get(t.to).tcpIn[t.from].expected,
      checksum: get(t.to).tcpIn[t.from].checksum,
      diskChecksum: fnv1a(FNV_OFFSET, (env.vms.get(t.to) as SimVm).diskRegion(t.from, t.bytes)),
      expected: expectedChecksum(env.spec.seed, t.bytes),
    })),
    datagrams: env.spec.datagrams.map((d) => ({
      from: d.from,
      to: d.to,
      sent: get(d.from).udpOut[d.to].sent,
      received: get(d.to).udpIn[d.from].received,
    })),
    longestRtoMs: Math.max(0, ...states.flatMap((x) => Object.values(x.s.tcpOut).map((t) => t.longestRto))),
    timeouts: states.reduce((n, x) => n + Object.values(x.s.tcpOut).reduce((m, t) => m + t.timeouts, 0), 0),
    longestGapMs: Math.max(0, ...states.flatMap((x) => Object.values(x.s.tcpIn).map((r) => r.longestStall))),
    finishedAtMs: env.clock.now,
    done: env.transfersDone(),
  };
}
