/**
 * One virtual switch's forwarding state, without I/O: MAC learning, each local VM's colour, the hold
 * buffer, per-pair counters and the channel state of `hold` mode. The UDP relay (udp.ts) and the
 * simulated environment (src/sim) both drive it, so the simulation exercises the same decisions.
 *
 * Colours are decided at the receiving switch (it knows its own VMs' colours); a frame leaving for a
 * peer switch carries its sender's colour in the tunnel header.
 */
import { forwardDecision, type ChannelMode } from './colour.js';
import { destinationMac, ETH_HEADER_BYTES, isGroupMac, sourceMac } from './ethernet.js';

export type SwitchOutput =
  { kind: 'local'; vm: string; frame: Uint8Array } | { kind: 'tunnel'; peer: string; srcVm: string; epoch: number; frame: Uint8Array };

export interface PairCounters {
  src: string;
  dst: string;
  /** The sender's colour the frames carried. */
  epoch: number;
  delivered: number;
  deliveredBytes: number;
  /** Post-snapshot sender, pre-snapshot receiver: dropped (drop mode, or hold buffer full). */
  dropped: number;
  droppedBytes: number;
  /** Held until the receiver flipped (each is also counted delivered when released). */
  held: number;
  /** Pre-snapshot sender, post-snapshot receiver: delivered across the cut (channel state in hold mode). */
  crossing: number;
}

/** A frame sent before its sender's cut and received after its receiver's: part of the cut's channel state. */
export interface ChannelFrame {
  epoch: number;
  src: string;
  dst: string;
  frame: Uint8Array;
}

export interface SwitchCoreOptions {
  localVms: string[];
  peers: string[];
  channels: ChannelMode;
  /** Frames the hold buffer keeps at most (all receivers together); beyond it frames are dropped. */
  holdFrames: number;
  /** Initial colour of every VM (the epoch of the store's last committed group). */
  epoch?: number;
}

interface HeldFrame {
  src: string;
  epoch: number;
  frame: Uint8Array;
}

type Place = { local: string } | { peer: string; vm: string };

export class SwitchCore {
  readonly channels: ChannelMode;
  private readonly holdLimit: number;
  private readonly colours = new Map<string, number>();
  private readonly peers: string[];
  private readonly macs = new Map<number, Place>();
  private readonly held = new Map<string, HeldFrame[]>();
  private heldCount = 0;
  private readonly pairs = new Map<string, PairCounters>();
  private readonly channel: ChannelFrame[] = [];
  /** Frames from addresses or tunnels the switch does not know (counted, never forwarded). */
  unknownSource = 0;

  constructor(options: SwitchCoreOptions) {
    this.channels = options.channels;
    this.holdLimit = options.holdFrames;
    this.peers = [...options.peers];
    for (const vm of options.localVms) this.colours.set(vm, options.epoch ?? 0);
  }

  get localVms(): string[] {
    return [...this.colours.keys()];
  }

  colourOf(vm: string): number | undefined {
    return this.colours.get(vm);
  }

  /** A frame a local VM sent. */
  fromLocal(vm: string, frame: Uint8Array): SwitchOutput[] {
    const epoch = this.colours.get(vm);
    if (epoch === undefined || frame.length < ETH_HEADER_BYTES) {
      this.unknownSource++;
      return [];
    }
    this.macs.set(sourceMac(frame), { local: vm });
    const out: SwitchOutput[] = [];
    const dst = isGroupMac(frame) ? undefined : this.macs.get(destinationMac(frame));
    if (dst && 'peer' in dst) {
      out.push({ kind: 'tunnel', peer: dst.peer, srcVm: vm, epoch, frame });
    } else if (dst) {
      if (dst.local !== vm) this.toLocal(vm, epoch, dst.local, frame, out);
    } else {
      // Broadcast, multicast or not yet learned: every other local VM and every peer switch (a
      // full mesh of tunnels: frames from a tunnel are never sent on, so nothing loops).
      for (const other of this.colours.keys()) if (other !== vm) this.toLocal(vm, epoch, other, frame, out);
      for (const peer of this.peers) out.push({ kind: 'tunnel', peer, srcVm: vm, epoch, frame });
    }
    return out;
  }

  /** A frame a peer switch tunnelled here, tagged with its sender's colour. */
  fromTunnel(peer: string, srcVm: string, epoch: number, frame: Uint8Array): SwitchOutput[] {
    if (!this.peers.includes(peer) || frame.length < ETH_HEADER_BYTES) {
      this.unknownSource++;
      return [];
    }
    this.macs.set(sourceMac(frame), { peer, vm: srcVm });
    const out: SwitchOutput[] = [];
    const dst = isGroupMac(frame) ? undefined : this.macs.get(destinationMac(frame));
    if (dst && 'local' in dst) this.toLocal(srcVm, epoch, dst.local, frame, out);
    else if (!dst) for (const vm of this.colours.keys()) this.toLocal(srcVm, epoch, vm, frame, out);
    return out;
  }

  /** A local VM passed its cut for `epoch` (or an aborted epoch is closed): frames held for it go out. */
  flip(vm: string, epoch: number): SwitchOutput[] {
    const was = this.colours.get(vm);
    if (was === undefined) throw new Error(`flip of a VM not on this switch: ${vm}`);
    if (epoch <= was) return [];
    this.colours.set(vm, epoch);
    // A newer cut has begun here, so older epochs' channel state was committed or dropped: forget it.
    if (this.channel.some((c) => c.epoch < epoch)) this.keepChannel((c) => c.epoch >= epoch);
    const queue = this.held.get(vm) ?? [];
    const stay: HeldFrame[] = [];
    const out: SwitchOutput[] = [];
    for (const h of queue) {
      if (h.epoch > epoch) {
        stay.push(h);
        continue;
      }
      this.heldCount--;
      this.deliver(h.src, h.epoch, vm, h.frame, out);
    }
    this.held.set(vm, stay);
    return out;
  }

  /** Removes and returns the channel state recorded for `epoch` (frames that crossed its cut). */
  takeChannelState(epoch: number): ChannelFrame[] {
    const taken = this.channelState(epoch);
    this.keepChannel((c) => c.epoch !== epoch);
    return taken;
  }

  /** The channel state recorded for `epoch`, left in place (a switch process answers it remotely). */
  channelState(epoch: number): ChannelFrame[] {
    return this.channel.filter((c) => c.epoch === epoch);
  }

  private keepChannel(keep: (c: ChannelFrame) => boolean): void {
    const kept = this.channel.filter(keep);
    this.channel.length = 0;
    this.channel.push(...kept);
  }

  heldFrames(): number {
    return this.heldCount;
  }

  counters(): PairCounters[] {
    return [...this.pairs.values()].map((c) => ({ ...c }));
  }

  private toLocal(src: string, epoch: number, dst: string, frame: Uint8Array, out: SwitchOutput[]): void {
    const receiver = this.colours.get(dst) as number;
    const decision = forwardDecision(epoch, receiver, this.channels, this.heldCount < this.holdLimit);
    const c = this.pair(src, dst, epoch);
    switch (decision) {
      case 'deliver':
        this.deliver(src, epoch, dst, frame, out);
        return;
      case 'deliver-crossing':
        c.crossing++;
        if (this.channels === 'hold') this.channel.push({ epoch: receiver, src, dst, frame: Uint8Array.from(frame) });
        this.deliver(src, epoch, dst, frame, out);
        return;
      case 'hold': {
        c.held++;
        this.heldCount++;
        const q = this.held.get(dst) ?? [];
        q.push({ src, epoch, frame: Uint8Array.from(frame) });
        this.held.set(dst, q);
        return;
      }
      case 'drop':
        c.dropped++;
        c.droppedBytes += frame.length;
    }
  }

  private deliver(src: string, epoch: number, dst: string, frame: Uint8Array, out: SwitchOutput[]): void {
    const c = this.pair(src, dst, epoch);
    c.delivered++;
    c.deliveredBytes += frame.length;
    out.push({ kind: 'local', vm: dst, frame });
  }

  private pair(src: string, dst: string, epoch: number): PairCounters {
    const key = `${src}\u0000${dst}\u0000${epoch}`;
    let c = this.pairs.get(key);
    if (!c) {
      c = { src, dst, epoch, delivered: 0, deliveredBytes: 0, dropped: 0, droppedBytes: 0, held: 0, crossing: 0 };
      this.pairs.set(key, c);
    }
    return c;
  }
}
