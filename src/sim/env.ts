/**
 * A simulated virtual networked environment: VMs on several hosts, one SwitchCore per host (the
 * switch the real relay runs), tunnels with a fixed delay between hosts, all on one simulated clock.
 * A VM and its switch share a host, so a frame reaches its switch as it is sent and a VM receives a
 * frame as its switch decides to deliver it: the colour a frame is tagged with and the colour it is
 * judged against are the VMs' colours at those very moments (docs/COORDINATION.md).
 */
import { EventQueue } from './events.js';
import { diskMemberName, SimVm, type AppSpec, type DatagramSpec, type TransferSpec, type VmSpec } from './vm.js';
import { SwitchCore, type ChannelFrame, type PairCounters, type SwitchOutput } from '../switch/core.js';
import type { ChannelMode } from '../switch/colour.js';
import { destinationMac } from '../switch/ethernet.js';
import type { UdpNetwork } from './udp-network.js';
import type { Endpoint } from '../switch/udp.js';
import { VnstoreError } from '../util/errors.js';

export interface HostSpec {
  name: string;
  /** Simulated ms to copy one page from this host to the store (its snapshot bandwidth and load). */
  pageMs: number;
  /** A running `vnstore switch` for this host (its --vm-listen and --tunnel-listen), for `snapshot --switches env`. */
  switch?: { vm: Endpoint; tunnel: Endpoint };
  /** A running `vnstore agent serve` for this host's VMs, for `snapshot --agents env`. */
  agent?: Endpoint;
}

export interface EnvSpec {
  name: string;
  seed: number;
  hosts: HostSpec[];
  vms: Omit<VmSpec, 'index'>[];
  transfers: TransferSpec[];
  datagrams: DatagramSpec[];
  tickMs: number;
  mss: number;
  windowBytes: number;
  tunnelMs: number;
  /**
   * Each VM's path to each VM on another host as a link of this many bytes per simulated second
   * (the tunnel shared fairly between pairs, so an ack does not wait behind its sender's own bulk
   * data to someone else): a pair's frames queue and leave one after another. Undefined or 0: no
   * serialisation, only `tunnelMs`. Frames between VMs of one host are not limited.
   */
  linkBytesPerSec?: number;
  channels: ChannelMode;
  holdFrames: number;
}

export class SimEnv {
  readonly clock = new EventQueue();
  readonly vms = new Map<string, SimVm>();
  readonly switches = new Map<string, SwitchCore>();
  readonly specs = new Map<string, VmSpec>();
  readonly app: AppSpec;
  private readonly tickGen = new Map<string, number>();
  /** Tunnel frames on their way, by the colour they carry. */
  private readonly inTransit = new Map<number, number>();
  /** When each VM pair's link is free again (simulated ms). */
  private readonly linkFreeAt = new Map<string, number>();
  /** VMs whose hypervisor process died (`killVm`). */
  private readonly gone = new Set<string>();
  private readonly net = {
    emit: (vm: SimVm, frame: Uint8Array) =>
      this.network
        ? this.network.send(vm.spec.name, frame)
        : this.route(vm.spec.host, this.switchOf(vm.spec.name).fromLocal(vm.spec.name, frame)),
  };
  /** Real switch processes instead of the in-process SwitchCores (udp-network.ts); those then stay unused. */
  private readonly network?: UdpNetwork;

  /** `images`: resume each VM from a memory image and its disk image (a group restore) instead of starting fresh. */
  constructor(
    readonly spec: EnvSpec,
    options: { epoch?: number; images?: Map<string, Uint8Array>; network?: UdpNetwork } = {},
  ) {
    this.network = options.network;
    if (this.network) {
      this.network.connect((vm, frame) => this.receive(vm, frame));
      const network = this.network;
      // Unconfirmed (a switch silent past the budget): time moves on and late frames arrive later.
      this.clock.settle = async () => void (await network.settle());
    }
    this.app = {
      seed: spec.seed,
      tickMs: spec.tickMs,
      mss: spec.mss,
      windowBytes: spec.windowBytes,
      transfers: spec.transfers,
      datagrams: spec.datagrams,
    };
    const peers = spec.vms.map((v, i) => ({ name: v.name, index: i + 1 }));
    for (const h of spec.hosts) {
      const local = spec.vms.filter((v) => v.host === h.name).map((v) => v.name);
      this.switches.set(
        h.name,
        new SwitchCore({
          localVms: local,
          peers: spec.hosts.filter((o) => o.name !== h.name).map((o) => o.name),
          channels: spec.channels,
          holdFrames: spec.holdFrames,
          epoch: options.epoch ?? 0,
        }),
      );
    }
    spec.vms.forEach((v, i) => {
      const vs: VmSpec = { ...v, index: i + 1 };
      this.specs.set(v.name, vs);
      const image = options.images?.get(v.name);
      this.vms.set(
        v.name,
        image
          ? SimVm.fromImage(vs, this.app, peers, image, 0, options.images?.get(diskMemberName(v.name)))
          : new SimVm(vs, this.app, peers),
      );
      this.scheduleTick(v.name, 0);
    });
  }

  host(name: string): HostSpec {
    return this.spec.hosts.find((h) => h.name === name) as HostSpec;
  }

  switchOf(vm: string): SwitchCore {
    return this.switches.get((this.specs.get(vm) as VmSpec).host) as SwitchCore;
  }

  /**
   * The VM's hypervisor process dies: the VM stops for good (no ticks; frames for it are lost) and
   * every call its agent makes on it fails. Its memory is gone with it: the environment is brought
   * back by a group restore.
   */
  killVm(vm: string): void {
    this.gone.add(vm);
    this.pause(vm);
  }

  /** Throws if the VM's hypervisor process died (`killVm`): what its agent asks of it cannot be answered. */
  hypervisorOf(vm: string): SimVm {
    if (this.gone.has(vm)) throw new VnstoreError('E_IO', `VM ${vm} is gone: its hypervisor process died`);
    return this.vms.get(vm) as SimVm;
  }

  /** Pauses a VM (its ticks stop; frames for it wait in its NIC). */
  pause(vm: string): void {
    (this.vms.get(vm) as SimVm).pause();
    this.tickGen.set(vm, (this.tickGen.get(vm) ?? 0) + 1);
  }

  resume(vm: string): void {
    if (this.gone.has(vm)) return;
    const v = this.vms.get(vm) as SimVm;
    v.resume(this.clock.now, this.net);
    this.scheduleTick(vm, this.spec.tickMs);
  }

  /**
   * Sets a VM's colour at its switch; frames held for it are delivered (or queued, if it is paused).
   * Over switch processes it rejects when the switch does not acknowledge the flip.
   */
  async flip(vm: string, epoch: number): Promise<void> {
    if (this.network) await this.network.flip(vm, epoch);
    else this.route(this.specs.get(vm)?.host as string, this.switchOf(vm).flip(vm, epoch));
  }

  /**
   * Every frame sent so far has been judged by its switches and handed to its receiver (a VM about
   * to pause); rejects if that cannot be confirmed, since a frame the VM took after its cut, or one
   * its switch judged after it, would be lost across the cut.
   */
  async quiesce(): Promise<void> {
    if (this.network) await this.network.quiesce();
  }

  /** Where an agent sends its VM's FLIP itself: its switch process's control port (undefined: in-process switches). */
  switchControl(vm: string): Endpoint | undefined {
    return this.network?.controlAddress(vm);
  }

  /** A FLIP sent by someone else (an agent process) may release held frames: settle before time moves on. */
  expectFrames(): void {
    this.network?.expectFrames();
  }

  /** Before an epoch: every VM's colour at least `previous`; over switch processes, each switch's identity noted. */
  async openEpoch(previous: number): Promise<void> {
    await this.network?.openEpoch(previous);
  }

  /** Before a commit: rejects if a switch cannot be reached or was restarted since `openEpoch`. */
  async confirmEpoch(epoch: number): Promise<void> {
    await this.network?.confirmEpoch(epoch);
  }

  /** Frames that crossed the cut of `epoch`, from every switch. */
  async takeChannelState(epoch: number): Promise<ChannelFrame[]> {
    if (this.network) return this.network.channelState(epoch);
    return [...this.switches.values()].flatMap((s) => s.takeChannelState(epoch));
  }

  /** An aborted epoch's channel state is dropped (switch processes drop it at the next epoch's flips). */
  discardChannelState(epoch: number): void {
    for (const s of this.switches.values()) s.takeChannelState(epoch);
  }

  /** The switches' pair counters of `epoch` and the one before it. */
  async epochCounters(epoch: number): Promise<PairCounters[]> {
    return this.network ? this.network.counters(epoch) : this.counters();
  }

  /** Re-delivers a group's channel state to the receivers (a group restore in hold mode). */
  redeliver(frames: ChannelFrame[]): void {
    for (const c of frames) this.receive(c.dst, c.frame);
  }

  private receive(vm: string, frame: Uint8Array): void {
    if (!this.gone.has(vm)) (this.vms.get(vm) as SimVm).receive(frame, this.clock.now, this.net);
  }

  counters(): PairCounters[] {
    return [...this.switches.values()].flatMap((s) => s.counters());
  }

  transfersDone(): boolean {
    return [...this.vms.values()].every((v) => v.transfersDone());
  }

  /**
   * Frames between hosts still on their way that carry a colour older than `epoch` (sent before
   * their sender's cut). Over switch processes none: simulated time stands still until they arrive.
   */
  framesInFlightBefore(epoch: number): number {
    let n = 0;
    for (const [e, count] of this.inTransit) if (e < epoch) n += count;
    return n;
  }

  /** Time from now until a frame of `bytes` has left the link `key` (after those queued before it). */
  private linkDelay(key: string, bytes: number): number {
    const rate = this.spec.linkBytesPerSec ?? 0;
    if (rate <= 0) return 0;
    const now = this.clock.now;
    const done = Math.max(now, this.linkFreeAt.get(key) ?? 0) + (bytes * 1000) / rate;
    this.linkFreeAt.set(key, done);
    return done - now;
  }

  private scheduleTick(vm: string, delay: number): void {
    const gen = this.tickGen.get(vm) ?? 0;
    const run = () => {
      if ((this.tickGen.get(vm) ?? 0) !== gen) return; // the VM was paused since
      const v = this.vms.get(vm) as SimVm;
      v.tick(this.clock.now, this.net);
      this.clock.after(this.spec.tickMs, run);
    };
    this.clock.after(delay, run);
  }

  private route(fromHost: string, outputs: SwitchOutput[]): void {
    for (const o of outputs) {
      if (o.kind === 'local') this.receive(o.vm, o.frame);
      else {
        const frame = o.frame;
        this.inTransit.set(o.epoch, (this.inTransit.get(o.epoch) ?? 0) + 1);
        // The colour travels with the frame (tagged now), and the peer judges it when it arrives.
        this.clock.after(this.linkDelay(`${o.srcVm}>${destinationMac(frame)}`, frame.length) + this.spec.tunnelMs, () => {
          this.inTransit.set(o.epoch, (this.inTransit.get(o.epoch) as number) - 1);
          this.route(o.peer, (this.switches.get(o.peer) as SwitchCore).fromTunnel(fromHost, o.srcVm, o.epoch, frame));
        });
      }
    }
  }
}
