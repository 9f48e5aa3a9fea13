/**
 * The simulated VMs' NICs over real `vnstore switch` processes (src/switch/udp.ts): each VM has a UDP
 * socket at the address its switch's port table names, and sends its frames to its host's switch,
 * so colours, tunnels, held frames and channel state are the relay's, in another process.
 *
 * Simulated time stands still while real datagrams travel: before the clock moves on (and before a
 * VM pauses for its cut) the environment waits until the network is quiet, that is until every
 * switch has read every datagram sent to it and every VM socket every datagram a switch sent it,
 * counted by the switches' STATUS answers against what this side sent and received. Frames crossing
 * hosts therefore take no simulated time. A switch that does not answer is taken as down: frames to
 * it are lost (TCP repairs them), and its counts are taken afresh when it (or a restarted process,
 * with a new incarnation) answers again. The coordinator's side: `openEpoch` raises every VM's colour
 * to the last closed epoch (refusing a switch already past it) and notes each switch's incarnation; `confirmEpoch` refuses the epoch if
 * a switch cannot be reached or was restarted since (its colours and held frames were lost), so a
 * cut judged by a switch that forgot it is never committed (docs/COORDINATION.md).
 */
import dgram from 'node:dgram';
import type { Endpoint, SwitchStatus } from '../switch/udp.js';
import type { ChannelFrame, PairCounters } from '../switch/core.js';
import { requestChannelState, requestFlip, requestStatus } from '../switch/flip-client.js';
import { VnstoreError } from '../util/errors.js';

export interface SwitchAddresses {
  /** Where the host's VMs send their frames, and where its tunnel and control messages go. */
  vm: Endpoint;
  tunnel: Endpoint;
}

export interface UdpNetworkOptions {
  /** Each host's switch. */
  switches: Map<string, SwitchAddresses>;
  /** Each VM's own address (the switch's `--port VM=HOST:PORT`) and its host. */
  vms: Map<string, { host: string; addr: Endpoint }>;
  /** Give up waiting for a quiet network after this long (real ms): late frames arrive later. */
  settleBudgetMs?: number;
}

interface Seen {
  incarnation: string;
  status: SwitchStatus;
  /** Counts when this incarnation was first seen: only what happened since is compared. */
  base: { sent: number; vmIn: number; recv: Record<string, number>; vmOut: Record<string, number> };
}

export class UdpNetwork {
  private readonly sockets = new Map<string, dgram.Socket>();
  private readonly inbox: { vm: string; frame: Uint8Array }[] = [];
  private readonly sent = new Map<string, number>();
  private readonly recv = new Map<string, number>();
  private readonly seen = new Map<string, Seen>();
  private readonly pairBase = new Map<string, { key: string; out: number; in: number }>();
  private readonly order: string[];
  private deliver: (vm: string, frame: Uint8Array) => void = () => undefined;
  private quiet = true;
  private epochIncarnations = new Map<string, string>();

  private constructor(private readonly o: UdpNetworkOptions) {
    this.order = [...o.vms.keys()];
  }

  /** Binds every VM's socket. */
  static async open(o: UdpNetworkOptions): Promise<UdpNetwork> {
    const n = new UdpNetwork(o);
    for (const [vm, { addr }] of o.vms) {
      const s = dgram.createSocket('udp4');
      s.on('error', () => undefined); // an unreachable switch: the frame is lost, as on a wire
      s.on('message', (frame) => {
        n.inbox.push({ vm, frame });
        n.recv.set(vm, (n.recv.get(vm) ?? 0) + 1);
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', (err) =>
          reject(new VnstoreError('E_IO', `cannot bind VM ${vm}'s NIC to udp ${addr.host}:${addr.port}: ${err.message}`, { cause: err })),
        );
        s.bind(addr.port, addr.host, () => resolve());
      });
      n.sockets.set(vm, s);
    }
    return n;
  }

  /** How delivered frames reach the VMs (set by the environment). */
  connect(deliver: (vm: string, frame: Uint8Array) => void): void {
    this.deliver = deliver;
  }

  send(vm: string, frame: Uint8Array): void {
    const { host } = this.o.vms.get(vm) as { host: string };
    const sw = this.o.switches.get(host) as SwitchAddresses;
    this.quiet = false;
    this.sent.set(host, (this.sent.get(host) ?? 0) + 1);
    (this.sockets.get(vm) as dgram.Socket).send(frame, sw.vm.port, sw.vm.host, () => undefined);
  }

  /** Delivers what arrived and waits until the network is quiet (or the budget is spent). */
  async settle(): Promise<void> {
    if (this.quiet && this.inbox.length === 0) return;
    const deadline = Date.now() + (this.o.settleBudgetMs ?? 2000);
    for (;;) {
      this.deliverInbox();
      const statuses = await this.statuses(0);
      if (this.inbox.length === 0 && this.isQuiet(statuses)) break;
      if (Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 1));
    }
    this.deliverInbox();
    this.quiet = this.inbox.length === 0;
  }

  async flip(vm: string, epoch: number): Promise<void> {
    await this.settle();
    const { host } = this.o.vms.get(vm) as { host: string };
    await requestFlip((this.o.switches.get(host) as SwitchAddresses).tunnel, vm, epoch, { retryMs: 20, attempts: 10 });
    this.quiet = false; // frames held for it went out
  }

  /** The control (tunnel) port of the switch `vm` is attached to: where its FLIP goes. */
  controlAddress(vm: string): Endpoint {
    return (this.o.switches.get((this.o.vms.get(vm) as { host: string }).host) as SwitchAddresses).tunnel;
  }

  /** Frames may be on their way that this side did not send (a FLIP from an agent process released held ones). */
  expectFrames(): void {
    this.quiet = false;
  }

  /** Raises every VM to the last closed epoch and notes each switch's incarnation; throws if one cannot be reached. */
  async openEpoch(previous: number): Promise<void> {
    for (const vm of this.order) await this.flip(vm, previous);
    this.epochIncarnations = new Map();
    for (const host of this.o.switches.keys()) {
      const st = await this.statusOf(host, previous + 1);
      // A switch never lowers a colour: one already past this epoch would apply no cut at all.
      const ahead = Object.entries(st.colours).find(([, c]) => c > previous);
      if (ahead)
        throw new VnstoreError(
          'E_IO',
          `switch ${host} has ${ahead[0]} at colour ${ahead[1]}, past this environment's last epoch ${previous}: restart it with --epoch ${previous}`,
        );
      this.epochIncarnations.set(host, st.incarnation);
    }
  }

  /** Throws unless every switch answers as the same process that was there when the epoch opened. */
  async confirmEpoch(epoch: number): Promise<SwitchStatus[]> {
    const out: SwitchStatus[] = [];
    for (const [host, incarnation] of this.epochIncarnations) {
      const st = await this.statusOf(host, epoch);
      if (st.incarnation !== incarnation)
        throw new VnstoreError('E_IO', `switch ${host} was restarted during epoch ${epoch}: the colours it judged the cut by are lost`);
      out.push(st);
    }
    return out;
  }

  /** Every switch's channel state of `epoch`, confirmed to come from the processes that judged the cut. */
  async channelState(epoch: number): Promise<ChannelFrame[]> {
    const frames: ChannelFrame[] = [];
    for (const host of this.o.switches.keys())
      frames.push(
        ...(await requestChannelState((this.o.switches.get(host) as SwitchAddresses).tunnel, epoch, { retryMs: 50, attempts: 6 })),
      );
    await this.confirmEpoch(epoch);
    return frames;
  }

  /** Pair counters of `epoch` and the one before from every switch that answers (a restarted one's are lost). */
  async counters(epoch: number): Promise<PairCounters[]> {
    return (await this.statuses(epoch)).flatMap(([, st]) => st?.pairs ?? []);
  }

  async close(): Promise<void> {
    for (const s of this.sockets.values()) await new Promise<void>((r) => s.close(() => r()));
    this.sockets.clear();
  }

  private async statusOf(host: string, epoch: number): Promise<SwitchStatus> {
    try {
      return await requestStatus((this.o.switches.get(host) as SwitchAddresses).tunnel, epoch, { retryMs: 50, attempts: 6 });
    } catch (err) {
      throw new VnstoreError('E_IO', `switch ${host} is unreachable: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Frames in arrival order per VM, VMs in the environment's order: the same batch is handled the same way. */
  private deliverInbox(): void {
    while (this.inbox.length > 0) {
      const batch = this.inbox.splice(0);
      for (const vm of this.order) for (const f of batch) if (f.vm === vm) this.deliver(vm, f.frame);
    }
  }

  /** One STATUS round to every switch; an unanswered one is undefined (down, or too slow this time). */
  private async statuses(epoch: number): Promise<[string, SwitchStatus | undefined][]> {
    return Promise.all(
      [...this.o.switches].map(async ([host, sw]): Promise<[string, SwitchStatus | undefined]> => {
        const known = this.seen.has(host);
        const st = await requestStatus(sw.tunnel, epoch, known ? { retryMs: 100, attempts: 1 } : { retryMs: 10, attempts: 1 }).catch(
          () => undefined,
        );
        if (!st) this.seen.delete(host);
        return [host, st];
      }),
    );
  }

  /** Every live switch has read what was sent to it; every VM what its switch sent; every tunnel is empty. */
  private isQuiet(statuses: [string, SwitchStatus | undefined][]): boolean {
    let quiet = true;
    const live = new Map<string, SwitchStatus>();
    for (const [host, st] of statuses) {
      if (!st) continue;
      live.set(host, st);
      let s = this.seen.get(host);
      if (!s || s.incarnation !== st.incarnation) {
        const recv: Record<string, number> = {};
        for (const vm of Object.keys(st.colours)) recv[vm] = this.recv.get(vm) ?? 0;
        s = {
          incarnation: st.incarnation,
          status: st,
          base: { sent: this.sent.get(host) ?? 0, vmIn: st.vmIn, recv, vmOut: { ...st.vmOut } },
        };
        this.seen.set(host, s);
      }
      s.status = st;
      if (st.vmIn - s.base.vmIn < (this.sent.get(host) ?? 0) - s.base.sent) quiet = false;
      for (const vm of Object.keys(st.colours))
        if ((this.recv.get(vm) ?? 0) - (s.base.recv[vm] ?? 0) < (st.vmOut[vm] ?? 0) - (s.base.vmOut[vm] ?? 0)) quiet = false;
    }
    for (const [a, sa] of live) {
      for (const [b, sb] of live) {
        if (a === b) continue;
        const key = `${sa.incarnation}>${sb.incarnation}`;
        let base = this.pairBase.get(`${a}>${b}`);
        if (!base || base.key !== key) {
          base = { key, out: sa.tunnelOut[b] ?? 0, in: sb.tunnelIn[a] ?? 0 };
          this.pairBase.set(`${a}>${b}`, base);
        }
        if ((sb.tunnelIn[a] ?? 0) - base.in < (sa.tunnelOut[b] ?? 0) - base.out) quiet = false;
      }
    }
    return quiet;
  }
}
