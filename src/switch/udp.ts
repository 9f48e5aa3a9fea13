/**
 * The virtual switch as a process: a user-level layer-2 relay over UDP.
 *
 * VMs attach with one Ethernet frame per datagram, the framing of QEMU's `-netdev dgram` (and
 * `-netdev socket,udp=`): the guest sends to the switch's VM port and receives at its own address,
 * which the port table names, so the switch knows which VM a datagram came from by its source
 * address. Peer switches exchange frames through a second socket, each datagram carrying the tunnel
 * header (tunnel.ts). The same socket takes the coordinator's messages: FLIP (a VM passed its cut,
 * answered FLIP_ACK), STATUS (answered with this process's incarnation, datagram counts, colours and
 * pair counters) and CHANNEL_GET (answered with a part of an epoch's channel state).
 */
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { SwitchCore, type PairCounters, type SwitchOutput } from './core.js';
import { encodeChannelState } from '../coordinator/channel-state.js';
import { decodeTunnel, encodeTunnel, TunnelKind, type TunnelKindValue } from './tunnel.js';
import type { ChannelMode } from './colour.js';
import { VnstoreError } from '../util/errors.js';

export interface Endpoint {
  host: string;
  port: number;
}

export interface UdpSwitchOptions {
  /** Where VMs send their frames. */
  vmListen: Endpoint;
  /** Where peer switches (and flip requests) arrive. */
  tunnelListen: Endpoint;
  /** Each local VM's own address: frames for it go there, frames from it are recognised by it. */
  ports: { vm: string; addr: Endpoint }[];
  /** Peer switches' tunnel addresses, by name. */
  peers: { name: string; addr: Endpoint }[];
  channels: ChannelMode;
  holdFrames: number;
  epoch?: number;
}

/** What STATUS_ACK carries (JSON): enough for a coordinator to tell a restarted switch and a quiet network. */
export interface SwitchStatus {
  /** Random per process: a switch restarted since a coordinator last asked has lost its colours and held frames. */
  incarnation: string;
  /** Datagrams read from local VMs, sent to each local VM, and FRAME datagrams read from and sent to each peer. */
  vmIn: number;
  vmOut: Record<string, number>;
  tunnelIn: Record<string, number>;
  tunnelOut: Record<string, number>;
  colours: Record<string, number>;
  /** Pair counters of the asked epoch and the one before it. */
  pairs: PairCounters[];
}

/** Channel-state frames per CHANNEL_PART datagram stay under this many bytes (a UDP datagram holds 65507). */
const CHANNEL_PART_BYTES = 48 * 1024;

const key = (e: { address?: string; host?: string; port: number }) => `${e.address ?? e.host}:${e.port}`;

export class UdpSwitch {
  readonly core: SwitchCore;
  /** Tunnel datagrams refused (foreign, truncated, unsupported version). */
  badTunnelDatagrams = 0;
  /** Datagrams the system refused to send (a peer or VM address unreachable): counted, the switch runs on. */
  sendErrors = 0;
  readonly incarnation = randomBytes(8).toString('hex');
  private vmIn = 0;
  private readonly vmOut = new Map<string, number>();
  private readonly tunnelIn = new Map<string, number>();
  private readonly tunnelOut = new Map<string, number>();
  private readonly vmByAddr = new Map<string, string>();
  private readonly vmAddr = new Map<string, Endpoint>();
  private readonly peerByAddr = new Map<string, string>();
  private readonly peerAddr = new Map<string, Endpoint>();

  private constructor(
    options: UdpSwitchOptions,
    private readonly vmSocket: dgram.Socket,
    private readonly tunnelSocket: dgram.Socket,
  ) {
    this.core = new SwitchCore({
      localVms: options.ports.map((p) => p.vm),
      peers: options.peers.map((p) => p.name),
      channels: options.channels,
      holdFrames: options.holdFrames,
      epoch: options.epoch,
    });
    for (const p of options.ports) {
      this.vmByAddr.set(key(p.addr), p.vm);
      this.vmAddr.set(p.vm, p.addr);
    }
    for (const p of options.peers) {
      this.peerByAddr.set(key(p.addr), p.name);
      this.peerAddr.set(p.name, p.addr);
    }
    // An 'error' with no listener would end the process: one unreachable peer must not stop the switch.
    vmSocket.on('error', () => this.sendErrors++);
    tunnelSocket.on('error', () => this.sendErrors++);
    vmSocket.on('message', (msg, rinfo) => this.onVmDatagram(msg, rinfo));
    tunnelSocket.on('message', (msg, rinfo) => this.onTunnelDatagram(msg, rinfo));
  }

  static async start(options: UdpSwitchOptions): Promise<UdpSwitch> {
    const bind = async (e: Endpoint) => {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        s.once('error', (err) =>
          reject(new VnstoreError('E_IO', `cannot listen on udp ${e.host}:${e.port}: ${err.message}`, { cause: err })),
        );
        s.bind(e.port, e.host, () => resolve());
      });
      return s;
    };
    const vm = await bind(options.vmListen);
    const tunnel = await bind(options.tunnelListen).catch((err) => {
      vm.close();
      throw err;
    });
    return new UdpSwitch(options, vm, tunnel);
  }

  get vmPort(): number {
    return this.vmSocket.address().port;
  }

  get tunnelPort(): number {
    return this.tunnelSocket.address().port;
  }

  /** Sets a local VM's colour (in-process callers; remote ones send a FLIP datagram). */
  flip(vm: string, epoch: number): void {
    this.send(this.core.flip(vm, epoch));
  }

  async close(): Promise<void> {
    await Promise.all([
      new Promise<void>((r) => this.vmSocket.close(() => r())),
      new Promise<void>((r) => this.tunnelSocket.close(() => r())),
    ]);
  }

  private onVmDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const vm = this.vmByAddr.get(key(rinfo));
    if (vm === undefined) {
      this.core.unknownSource++;
      return;
    }
    this.vmIn++;
    this.send(this.core.fromLocal(vm, msg));
  }

  private onTunnelDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    let m;
    try {
      m = decodeTunnel(msg);
    } catch {
      this.badTunnelDatagrams++;
      return;
    }
    if (m.kind === TunnelKind.FRAME) {
      const peer = this.peerByAddr.get(key(rinfo));
      if (peer === undefined) {
        this.core.unknownSource++;
        return;
      }
      bump(this.tunnelIn, peer);
      this.send(this.core.fromTunnel(peer, m.vm, m.epoch, m.payload));
    } else if (m.kind === TunnelKind.FLIP && this.core.colourOf(m.vm) !== undefined) {
      this.send(this.core.flip(m.vm, m.epoch));
      this.answer(rinfo, TunnelKind.FLIP_ACK, this.core.colourOf(m.vm) as number, m.vm, new Uint8Array(0));
    } else if (m.kind === TunnelKind.STATUS) {
      this.answer(rinfo, TunnelKind.STATUS_ACK, m.epoch, m.vm, Buffer.from(JSON.stringify(this.status(m.epoch)), 'utf8'));
    } else if (m.kind === TunnelKind.CHANNEL_GET && m.payload.length >= 4) {
      this.answer(rinfo, TunnelKind.CHANNEL_PART, m.epoch, m.vm, this.channelPart(m.epoch, Buffer.from(m.payload).readUInt32BE(0)));
    }
  }

  status(epoch: number): SwitchStatus {
    const colours: Record<string, number> = {};
    for (const vm of this.core.localVms) colours[vm] = this.core.colourOf(vm) as number;
    return {
      incarnation: this.incarnation,
      vmIn: this.vmIn,
      vmOut: Object.fromEntries(this.vmOut),
      tunnelIn: Object.fromEntries(this.tunnelIn),
      tunnelOut: Object.fromEntries(this.tunnelOut),
      colours,
      pairs: this.core.counters().filter((c) => c.epoch === epoch || c.epoch === epoch - 1),
    };
  }

  /** u32 total, u32 first, then the channel-state image of the frames from `first` that fit one datagram. */
  private channelPart(epoch: number, first: number): Buffer {
    const all = this.core.channelState(epoch);
    let end = Math.min(first, all.length);
    let bytes = 0;
    while (end < all.length && (end === first || bytes + all[end].frame.length + 140 <= CHANNEL_PART_BYTES))
      bytes += all[end++].frame.length + 140;
    const head = Buffer.alloc(8);
    head.writeUInt32BE(all.length, 0);
    head.writeUInt32BE(Math.min(first, all.length), 4);
    return Buffer.concat([head, encodeChannelState(all.slice(Math.min(first, all.length), end))]);
  }

  private answer(to: dgram.RemoteInfo, kind: TunnelKindValue, epoch: number, vm: string, payload: Uint8Array): void {
    this.tunnelSocket.send(encodeTunnel({ kind, epoch, vm, payload }), to.port, to.address, (err) => void (err && this.sendErrors++));
  }

  private send(outputs: SwitchOutput[]): void {
    for (const o of outputs) {
      if (o.kind === 'local') {
        const a = this.vmAddr.get(o.vm) as Endpoint;
        bump(this.vmOut, o.vm);
        this.vmSocket.send(o.frame, a.port, a.host, (err) => void (err && this.sendErrors++));
      } else {
        const a = this.peerAddr.get(o.peer) as Endpoint;
        bump(this.tunnelOut, o.peer);
        this.tunnelSocket.send(
          encodeTunnel({ kind: TunnelKind.FRAME, epoch: o.epoch, vm: o.srcVm, payload: o.frame }),
          a.port,
          a.host,
          (err) => void (err && this.sendErrors++),
        );
      }
    }
  }
}

function bump(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}
