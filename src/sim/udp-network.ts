/**
 * The simulated VMs' NICs over real `vnstore switch` processes (src/switch/udp.ts): each VM has a UDP
 * socket at the address its switch's port table names, and sends its frames to its host's switch,
 * so colours, tunnels, held frames and channel state are the relay's, in another process.
 *
 * Simulated time stands still while real datagrams travel: before the clock moves on (and before a
 * VM pauses for its cut) the environment waits until the network is quiet, that is until every
 * switch has read every datagram sent to it and every VM socket every datagram a switch sent it,
 * counted by the switches' STATUS answers against what this side sent and received. Frames crossing
 * hosts therefore take no simulated time. A switch is taken as down only when its host says nobody
 * listens at its port (a killed process): frames to it are lost (TCP repairs them), and its counts
 * are taken afresh when a restarted process (a new incarnation) answers. A switch that is merely slow
 * (a loaded machine) is asked again, backing off, until it answers or the settle budget is spent; a
 * settle that could not confirm a quiet network fails the flip that waits for it, so the epoch aborts
 * rather than judge a frame against the wrong side of a cut. The coordinator's side: `openEpoch` raises every VM's colour
 * to the last closed epoch (refusing a switch already past it) and notes each switch's incarnation; `confirmEpoch` refuses the epoch if
 * a switch cannot be reached or was restarted since (its colours and held frames were lost), so a
 * cut judged by a switch that forgot it is never committed (docs/COORDINATION.md).
 */
import dgram from 'node:dgram';
import type { Endpoint, SwitchStatus } from '../switch/udp.js';
import type { ChannelFrame, PairCounters } from '../switch/core.js';
import { isRefused, requestChannelState, requestFlip, requestStatus, type FlipOptions } from '../switch/flip-client.js';
import { destinationMac, isGroupMac, sourceMac } from '../switch/ethernet.js';
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
  /**
   * Give up waiting for a quiet network (or a switch's answer) after this long, real ms (default
   * 2000): late frames then arrive later, and a flip waiting for the network fails.
   */
  settleBudgetMs?: number;
}

/** A switch's answer to one STATUS round: its status; or `refused`, nobody listens at its port; or neither, no answer in time. */
interface Probe {
  host: string;
  status?: SwitchStatus;
  refused?: boolean;
}

/** A switch silent through a whole settle is asked only this long in the next ones, until it answers. */
const UNRESPONSIVE_PROBE_MS = 100;
/**
 * How long a settle waits for the frames it can account for by their arrival (below) before it asks
 * the switches instead: a frame dropped or held by a switch never arrives, and costs this once.
 */
const ARRIVAL_WAIT_MS = 20;

interface Seen {
  incarnation: string;
  /** Counts when this incarnation was first seen still: only what happened since is compared. */
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
  private readonly unresponsive = new Set<string>();
  private lastFailure: string[] = [];
  /** The counts of the last STATUS round of this settle: a round equal to it saw nothing move. */
  private lastRound = '';
  /**
   * Frames sent since the network was last known quiet, each awaited at its addressee's socket (by
   * VM and frame bytes; every frame carries its own id, so none repeats). When each has arrived,
   * nothing this side sent is still travelling, and no STATUS round is needed. `unaccounted`: some
   * frame cannot be awaited so (its addressee not known here yet, a broadcast, or frames a FLIP
   * released), so only the switches' counts can tell.
   */
  private readonly awaited = new Map<string, number>();
  private awaitedCount = 0;
  private unaccounted = false;
  private readonly macs = new Map<number, string>();
  private arrived: (() => void) | undefined;

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
        n.noteArrival(vm, frame);
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', (err) =>
          reject(new VnstoreError('E_IO', `cannot bind VM ${vm}'s NIC to udp ${addr.host}:${addr.port}: ${err.message}`, { cause: err })),
        );
        s.bind(addr.port, addr.host, () => resolve());
      });
      n.sockets.set(vm, s);
    }
    // Every switch's counts as they are before any VM sends: the base the quiet network is judged by.
    n.quiet = false;
    n.unaccounted = true;
    await n.settle();
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
    this.await(vm, frame);
    this.sent.set(host, (this.sent.get(host) ?? 0) + 1);
    (this.sockets.get(vm) as dgram.Socket).send(frame, sw.vm.port, sw.vm.host, () => undefined);
  }

  /**
   * Delivers what arrived and waits until the network is quiet; false if that could not be confirmed
   * within the budget (a switch silent, or counts that never balanced: datagrams lost).
   */
  async settle(): Promise<boolean> {
    if (this.quiet && this.inbox.length === 0) return true;
    if (await this.allArrived()) return true;
    const deadline = Date.now() + this.budgetMs;
    this.lastRound = '';
    for (;;) {
      this.deliverInbox();
      const probes = await this.statuses(0, deadline);
      if (this.isQuiet(probes) && this.inbox.length === 0) {
        this.quiet = true;
        // everything sent so far has been judged: delivered, dropped or held
        this.awaited.clear();
        this.awaitedCount = 0;
        this.unaccounted = false;
        return true;
      }
      if (Date.now() >= deadline) {
        this.giveUp(probes);
        this.deliverInbox();
        return false; // not quiet: the next settle asks again
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Settles, or rejects if the network's quiet could not be confirmed. */
  async quiesce(what = 'a pause'): Promise<void> {
    if (!(await this.settle()))
      throw new VnstoreError('E_IO', `the network was not quiet within ${this.budgetMs} ms before ${what}: ${this.lastFailure.join('; ')}`);
  }

  /** Sets `vm`'s colour at its switch once every frame it sent has been judged; rejects if that or the flip is not confirmed. */
  async flip(vm: string, epoch: number): Promise<void> {
    await this.quiesce(`the flip of ${vm}`);
    await requestFlip(this.controlAddress(vm), vm, epoch, this.asking());
    this.expectFrames(); // frames held for it went out
  }

  /** The control (tunnel) port of the switch `vm` is attached to: where its FLIP goes. */
  controlAddress(vm: string): Endpoint {
    return (this.o.switches.get((this.o.vms.get(vm) as { host: string }).host) as SwitchAddresses).tunnel;
  }

  /** Frames may be on their way that this side did not send (a FLIP from an agent process released held ones). */
  expectFrames(): void {
    this.quiet = false;
    this.unaccounted = true;
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
    // Frames of one pair keep their order; pairs are put in one order, not the order two senders' frames happened to reach a switch.
    return frames.sort((a, b) => (a.src < b.src ? -1 : a.src > b.src ? 1 : a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0));
  }

  /** Pair counters of `epoch` and the one before from every switch that answers (a restarted one's are lost). */
  async counters(epoch: number): Promise<PairCounters[]> {
    return (await this.statuses(epoch, Date.now() + this.budgetMs)).flatMap((p) => p.status?.pairs ?? []);
  }

  async close(): Promise<void> {
    for (const s of this.sockets.values()) await new Promise<void>((r) => s.close(() => r()));
    this.sockets.clear();
  }

  /** Notes a frame as awaited at its addressee, if the addressee is known by its MAC (it has sent before). */
  private await(vm: string, frame: Uint8Array): void {
    this.macs.set(sourceMac(frame), vm);
    const to = isGroupMac(frame) ? undefined : this.macs.get(destinationMac(frame));
    if (to === undefined) {
      this.unaccounted = true;
      return;
    }
    const key = `${to}\0${Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).toString('latin1')}`;
    this.awaited.set(key, (this.awaited.get(key) ?? 0) + 1);
    this.awaitedCount++;
  }

  private noteArrival(vm: string, frame: Buffer): void {
    if (this.awaitedCount === 0) return;
    const key = `${vm}\0${frame.toString('latin1')}`;
    const n = this.awaited.get(key);
    if (n === undefined) return; // a copy flooded to a VM it is not addressed to, or a frame a FLIP released
    if (n > 1) this.awaited.set(key, n - 1);
    else this.awaited.delete(key);
    if (--this.awaitedCount === 0) this.arrived?.();
  }

  /**
   * The quick settle: every frame sent since the network was last quiet has reached its addressee,
   * and what they sent in answer too (delivering may make VMs answer), within ARRIVAL_WAIT_MS each
   * time. Then nothing this side sent is travelling; the copies a switch flooded to other VMs may
   * be, and are ignored by those VMs' NICs. False (ask the switches) when a frame cannot be accounted
   * for this way, or did not arrive: a switch dropped or held it, or is slow or down.
   */
  private async allArrived(): Promise<boolean> {
    for (;;) {
      if (this.unaccounted) return false;
      if (this.awaitedCount > 0) {
        const arrived = new Promise<void>((r) => (this.arrived = r));
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((r) => (timer = setTimeout(r, ARRIVAL_WAIT_MS)));
        await Promise.race([arrived, late]);
        clearTimeout(timer);
        this.arrived = undefined;
        if (this.awaitedCount > 0) return false;
      }
      if (this.inbox.length === 0) {
        this.quiet = true;
        return true;
      }
      this.deliverInbox();
    }
  }

  private async statusOf(host: string, epoch: number): Promise<SwitchStatus> {
    try {
      return await requestStatus((this.o.switches.get(host) as SwitchAddresses).tunnel, epoch, this.asking());
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

  private get budgetMs(): number {
    return this.o.settleBudgetMs ?? 2000;
  }

  /** How a request to a switch is resent: soon at first, backing off, until `deadline`; a refused port fails it at once. */
  private asking(deadline = Date.now() + this.budgetMs): FlipOptions {
    return { retryMs: 5, maxRetryMs: 100, attempts: Infinity, deadline, refusedFails: true };
  }

  /**
   * One STATUS round to every switch, each asked until it answers this round (a fresh socket per
   * round, so an answer is never one to an older question), nobody listens at its port, or `deadline`.
   */
  private async statuses(epoch: number, deadline: number): Promise<Probe[]> {
    return Promise.all(
      [...this.o.switches].map(async ([host, sw]): Promise<Probe> => {
        const until = this.unresponsive.has(host) ? Math.min(deadline, Date.now() + UNRESPONSIVE_PROBE_MS) : deadline;
        try {
          const status = await requestStatus(sw.tunnel, epoch, this.asking(until));
          this.unresponsive.delete(host);
          return { host, status };
        } catch (err) {
          if (!isRefused(err)) return { host };
          this.seen.delete(host); // down: what was sent to it is lost; a restarted process is counted afresh
          return { host, refused: true };
        }
      }),
    );
  }

  /**
   * A settle ran out of time. A silent switch is asked only briefly from now on (until it answers)
   * and every count is kept, since what it holds may yet arrive; if every switch answered, what
   * never balanced was lost on the way, and the bases are taken afresh at the next still round.
   */
  private giveUp(probes: Probe[]): void {
    const silent = probes.filter((p) => !p.status && !p.refused).map((p) => p.host);
    for (const host of silent) this.unresponsive.add(host);
    this.lastFailure = silent.map((host) => `switch ${host} did not answer STATUS`);
    if (silent.length > 0) return; // its frames may yet come: every count is kept
    this.lastFailure = ["datagrams were lost (the switches' counts never balanced)"];
    this.seen.clear();
    this.pairBase.clear();
  }

  /**
   * Every switch answered or is down; every live one has read what was sent to it; every VM what its
   * switch sent; every tunnel is empty. Counts are compared from a base per switch incarnation (and
   * per pair of them), taken only in a round in which nothing moved since the round before: a base
   * taken with a frame in flight would forget that frame, or wait forever for one already counted.
   */
  private isQuiet(probes: Probe[]): boolean {
    let quiet = true;
    const live = new Map<string, SwitchStatus>();
    for (const { host, status, refused } of probes) {
      if (status) live.set(host, status);
      else if (!refused) quiet = false; // slow, or gone without a word: its frames cannot be counted
    }
    const round = JSON.stringify([
      [...live].map(([h, st]) => [h, st.incarnation, st.vmIn, st.vmOut, st.tunnelIn, st.tunnelOut]),
      [...this.sent],
      [...this.recv],
      this.inbox.length,
    ]);
    const still = round === this.lastRound;
    this.lastRound = round;
    const pairKey = (a: string, b: string) => `${(live.get(a) as SwitchStatus).incarnation}>${(live.get(b) as SwitchStatus).incarnation}`;
    const pairs = [...live.keys()].flatMap((a) => [...live.keys()].filter((b) => b !== a).map((b) => [a, b] as const));
    const newHosts = [...live].filter(([h, st]) => this.seen.get(h)?.incarnation !== st.incarnation);
    const newPairs = pairs.filter(([a, b]) => this.pairBase.get(`${a}>${b}`)?.key !== pairKey(a, b));
    if (newHosts.length > 0 || newPairs.length > 0) {
      if (!still) return false;
      for (const [host, st] of newHosts) {
        const recv: Record<string, number> = {};
        for (const vm of Object.keys(st.colours)) recv[vm] = this.recv.get(vm) ?? 0;
        this.seen.set(host, {
          incarnation: st.incarnation,
          base: { sent: this.sent.get(host) ?? 0, vmIn: st.vmIn, recv, vmOut: { ...st.vmOut } },
        });
      }
      for (const [a, b] of newPairs)
        this.pairBase.set(`${a}>${b}`, {
          key: pairKey(a, b),
          out: (live.get(a) as SwitchStatus).tunnelOut[b] ?? 0,
          in: (live.get(b) as SwitchStatus).tunnelIn[a] ?? 0,
        });
    }
    for (const [host, st] of live) {
      const { base } = this.seen.get(host) as Seen;
      if (st.vmIn - base.vmIn < (this.sent.get(host) ?? 0) - base.sent) quiet = false;
      for (const vm of Object.keys(st.colours))
        if ((this.recv.get(vm) ?? 0) - (base.recv[vm] ?? 0) < (st.vmOut[vm] ?? 0) - (base.vmOut[vm] ?? 0)) quiet = false;
    }
    for (const [a, b] of pairs) {
      const base = this.pairBase.get(`${a}>${b}`) as { out: number; in: number };
      if (((live.get(b) as SwitchStatus).tunnelIn[a] ?? 0) - base.in < ((live.get(a) as SwitchStatus).tunnelOut[b] ?? 0) - base.out)
        quiet = false;
    }
    return quiet;
  }
}
