/** `vnstore switch`: run one host's virtual switch (src/switch/udp.ts) until SIGINT/SIGTERM. */
import type { Command } from 'commander';
import type { Endpoint } from '../switch/udp.js';
import { action, usage } from './common.js';

interface SwitchCliOptions {
  vmListen: string;
  tunnelListen: string;
  port: string[];
  peer: string[];
  channels: string;
  holdFrames: string;
  epoch: string;
  json?: boolean;
}

const collect = (v: string, all: string[]) => [...all, v];

export function parseEndpoint(s: string, what: string): Endpoint {
  const m = /^(.+):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw usage(`${what}: expected HOST:PORT, got ${JSON.stringify(s)}`);
  return { host: m[1], port };
}

function parseNamed(s: string, what: string): { name: string; addr: Endpoint } {
  const i = s.indexOf('=');
  if (i < 1) throw usage(`${what}: expected NAME=HOST:PORT, got ${JSON.stringify(s)}`);
  return { name: s.slice(0, i), addr: parseEndpoint(s.slice(i + 1), what) };
}

/** A decimal integer option of at least `min` (also used by `snapshot`). */
export function parseCount(s: string, what: string, min: number): number {
  if (!/^\d+$/.test(s) || Number(s) < min) throw usage(`${what}: expected an integer >= ${min}, got ${JSON.stringify(s)}`);
  return Number(s);
}

export function registerSwitch(program: Command): void {
  program
    .command('switch')
    .description("run a host's virtual switch: a layer-2 relay for VMs attached over UDP, with snapshot colours")
    .option('--vm-listen <host:port>', 'where VMs send their frames', '127.0.0.1:7000')
    .option('--tunnel-listen <host:port>', 'where peer switches and flip requests arrive', '127.0.0.1:7100')
    .option('--port <vm=host:port>', 'a local VM and its own address (repeat per VM)', collect, [])
    .option('--peer <name=host:port>', "a peer switch's tunnel address (repeat per peer)", collect, [])
    .option(
      '--channels <mode>',
      'frames from a post-snapshot to a pre-snapshot VM: drop (the paper) or hold until the receiver flips',
      'drop',
    )
    .option('--hold-frames <n>', 'hold buffer size in frames; beyond it frames are dropped and counted', '4096')
    .option('--epoch <n>', 'initial colour of every local VM (the last committed epoch)', '0')
    .option(
      '--json',
      'on exit, print the counters as JSON: {pairs: [{src, dst, epoch, delivered, deliveredBytes, dropped, droppedBytes, held, crossing}], unknownSource, badTunnelDatagrams, sendErrors}',
    )
    .addHelpText(
      'after',
      `
A guest attaches with QEMU's datagram netdev, one Ethernet frame per datagram, e.g. for VM web1 at
127.0.0.1:5001 and a switch at the defaults:
  qemu-system-x86_64 ... -netdev dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=5001,\\
      remote.type=inet,remote.host=127.0.0.1,remote.port=7000 -device virtio-net-pci,netdev=n0
  vnstore switch --port web1=127.0.0.1:5001 --peer hostB=10.0.0.2:7100 --channels hold

Frames to VMs on other hosts go through the peer switch's tunnel port with a header carrying the
sender's epoch (docs/COORDINATION.md); a FLIP datagram on the tunnel port sets a local VM's colour.
Counters are printed when the switch stops (SIGINT or SIGTERM).
`,
    )
    .action(
      action(async (opts: SwitchCliOptions) => {
        if (opts.channels !== 'drop' && opts.channels !== 'hold')
          throw usage(`--channels takes drop or hold, got ${JSON.stringify(opts.channels)}`);
        if (opts.port.length === 0) throw usage('at least one --port VM=HOST:PORT is needed');
        const ports = opts.port.map((p) => parseNamed(p, '--port')).map((p) => ({ vm: p.name, addr: p.addr }));
        if (new Set(ports.map((p) => p.vm)).size !== ports.length) throw usage('a VM is named by two --port options');
        const { UdpSwitch } = await import('../switch/udp.js');
        const sw = await UdpSwitch.start({
          vmListen: parseEndpoint(opts.vmListen, '--vm-listen'),
          tunnelListen: parseEndpoint(opts.tunnelListen, '--tunnel-listen'),
          ports,
          peers: opts.peer.map((p) => parseNamed(p, '--peer')),
          channels: opts.channels,
          holdFrames: parseCount(opts.holdFrames, '--hold-frames', 0),
          epoch: parseCount(opts.epoch, '--epoch', 0),
        });
        process.stderr.write(
          `vnstore switch: VMs on udp port ${sw.vmPort}, tunnel on udp port ${sw.tunnelPort}, ${ports.length} VM(s), channels ${opts.channels}\n`,
        );
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        await sw.close();
        const report = {
          pairs: sw.core.counters(),
          unknownSource: sw.core.unknownSource,
          badTunnelDatagrams: sw.badTunnelDatagrams,
          sendErrors: sw.sendErrors,
        };
        if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
        else {
          for (const c of report.pairs)
            process.stdout.write(
              `${c.src} -> ${c.dst} epoch ${c.epoch}: delivered ${c.delivered} (${c.deliveredBytes} B), dropped ${c.dropped} (${c.droppedBytes} B), held ${c.held}, across the cut ${c.crossing}\n`,
            );
          process.stdout.write(
            `unknown sources ${report.unknownSource}, bad tunnel datagrams ${report.badTunnelDatagrams}, send errors ${report.sendErrors}\n`,
          );
        }
      }),
    );
}
