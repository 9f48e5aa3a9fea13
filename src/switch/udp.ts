/**
 * The virtual switch as a process: a user-level layer-2 relay over UDP.
 *
 * VMs attach with one Ethernet frame per datagram, the framing of QEMU's `-netdev dgram` (and
 * `-netdev socket,udp=`): the guest sends to the switch's VM port and receives at its own address,
 * which the port table names, so the switch knows which VM a datagram came from by its source
 * address. Peer switches exchange frames through a second socket, each datagram carrying the tunnel
 * header (tunnel.ts). The same socket takes FLIP messages (a VM passed its cut) and answers FLIP_ACK.
 */
import dgram from 'node:dgram';
import { SwitchCore, type SwitchOutput } from './core.js';
import { decodeTunnel, encodeTunnel, TunnelKind } from './tunnel.js';
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

const key = (e: { address?: string; host?: string; port: number }) => `${e.address ?? e.host}:${e.port}`;

export class UdpSwitch {
  readonly core: SwitchCore;
  /** Tunnel datagrams refused (foreign, truncated, unsupported version). */
  badTunnelDatagrams = 0;
  /** Datagrams the system refused to send (a peer or VM address unreachable): counted, the switch runs on. */
  sendErrors = 0;
  private readonly vmByAddr = new Map<string, string>();
  private readonly vmAddr = new Map<string, Endpoint>();
  private readonly peerByAddr = new Map<string, string>();
  private readonly peerAddr = new Map<string, Endpoint>();

  private constructor(
    options: UdpSwitchOptions,
    private readonly vmSocket: dgram.Socket,
    private readonly tunnelSocket: dgram.Socket,
  ) {
    this.core = new SwitchCore({ localVms: options.ports.map((p) => p.vm), peers: options.peers.map((p) => p.name), channels: options.channels, holdFrames: options.holdFrames, epoch: options.epoch });
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
        s.once('error', (err) => reject(new VnstoreError('E_IO', `cannot listen on udp ${e.host}:${e.port}: ${err.message}`, { cause: err })));
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
    await Promise.all([new Promise<void>((r) => this.vmSocket.close(() => r())), new Promise<void>((r) => this.tunnelSocket.close(() => r()))]);
  }

  private onVmDatagram(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const vm = this.vmByAddr.get(key(rinfo));
    if (vm === undefined) {
      this.core.unknownSource++;
      return;
    }
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
      this.send(this.core.fromTunnel(peer, m.vm, m.epoch, m.payload));
    } else if (m.kind === TunnelKind.FLIP && this.core.colourOf(m.vm) !== undefined) {
      this.send(this.core.flip(m.vm, m.epoch));
      this.tunnelSocket.send(encodeTunnel({ kind: TunnelKind.FLIP_ACK, epoch: this.core.colourOf(m.vm) as number, vm: m.vm, payload: new Uint8Array(0) }), rinfo.port, rinfo.address);
    }
  }

  private send(outputs: SwitchOutput[]): void {
    for (const o of outputs) {
      if (o.kind === 'local') {
        const a = this.vmAddr.get(o.vm) as Endpoint;
        this.vmSocket.send(o.frame, a.port, a.host, (err) => void (err && this.sendErrors++));
      } else {
        const a = this.peerAddr.get(o.peer) as Endpoint;
        this.tunnelSocket.send(encodeTunnel({ kind: TunnelKind.FRAME, epoch: o.epoch, vm: o.srcVm, payload: o.frame }), a.port, a.host, (err) => void (err && this.sendErrors++));
      }
    }
  }
}
