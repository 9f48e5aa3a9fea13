/**
 * One `vnstore switch` process per simulated host, on loopback, for an environment whose VMs' frames
 * go through real relays (udp-network.ts): ports chosen up front so that every switch knows its peers'
 * tunnel addresses and a restarted switch comes back on the same ones.
 */
import type { EnvSpec } from './env.js';
import type { Endpoint } from '../switch/udp.js';
import type { SwitchAddresses, UdpNetworkOptions } from './udp-network.js';
import { ChildProcesses } from './children.js';
import { freeLoopbackPorts } from './ports.js';

export interface SwitchProcesses {
  network: UdpNetworkOptions;
  /** SIGKILLs a host's switch and waits for it to be gone. */
  kill(host: string): Promise<void>;
  /** Starts a host's switch again (a fresh process: colours at `epoch`, nothing held). */
  start(host: string, epoch?: number): Promise<void>;
  /** Sends a signal to a host's switch (SIGSTOP, SIGCONT: a switch that is slow, not dead). */
  signal(host: string, signal: NodeJS.Signals): void;
  /** Stops every switch (SIGTERM). */
  stop(): Promise<void>;
}

/** `cli`: the vnstore command's script (dist/cli/bin.cjs). */
export async function startSwitchProcesses(spec: EnvSpec, cli: string, epoch = 0): Promise<SwitchProcesses> {
  const ports = await freeLoopbackPorts(spec.vms.length + 2 * spec.hosts.length, 'udp');
  const lo = (port: number): Endpoint => ({ host: '127.0.0.1', port });
  const vms = new Map(spec.vms.map((v, i) => [v.name, { host: v.host, addr: lo(ports[i]) }]));
  const switches = new Map<string, SwitchAddresses>(
    spec.hosts.map((h, i) => [h.name, { vm: lo(ports[spec.vms.length + 2 * i]), tunnel: lo(ports[spec.vms.length + 2 * i + 1]) }]),
  );
  const children = new ChildProcesses();
  const addr = (e: Endpoint) => `${e.host}:${e.port}`;

  const start = async (host: string, at = epoch): Promise<void> => {
    const sw = switches.get(host) as SwitchAddresses;
    const args = [
      cli,
      'switch',
      '--vm-listen',
      addr(sw.vm),
      '--tunnel-listen',
      addr(sw.tunnel),
      '--channels',
      spec.channels,
      '--hold-frames',
      String(spec.holdFrames),
      '--epoch',
      String(at),
    ];
    for (const [vm, v] of vms) if (v.host === host) args.push('--port', `${vm}=${addr(v.addr)}`);
    for (const [peer, p] of switches) if (peer !== host) args.push('--peer', `${peer}=${addr(p.tunnel)}`);
    await children.start(`vnstore switch for ${host}`, args, /VMs on udp port \d+/, 'stderr');
  };
  const kill = (host: string) => children.kill(`vnstore switch for ${host}`);
  const processes: SwitchProcesses = {
    network: { switches, vms },
    kill,
    start,
    signal: (host, signal) => children.signal(`vnstore switch for ${host}`, signal),
    stop: () => children.stop(),
  };
  try {
    // together: each is a node process start, the most of a run's set-up
    await Promise.all(spec.hosts.map((h) => start(h.name)));
  } catch (err) {
    for (const h of spec.hosts) await kill(h.name);
    throw err;
  }
  return processes;
}
