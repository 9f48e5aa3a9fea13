/**
 * The simulated VMs' NICs over real `vnstore switch` processes (src/sim/udp-network.ts): how the
 * environment tells a quiet network, a slow switch and a dead one apart. A switch stopped with
 * SIGSTOP is a switch starved of CPU on a loaded host, made exact: it reads nothing and answers
 * nothing until SIGCONT.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { UdpNetwork } from '../src/sim/udp-network.js';
import { startSwitchProcesses, type SwitchProcesses } from '../src/sim/switch-processes.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import { buildFrame } from '../src/switch/ethernet.js';
import { CLI } from './helpers/engine.js';

const spec = scenarioSpec({
  name: 'net',
  seed: 1,
  vms: 2,
  hosts: 2,
  minPages: 16,
  sizeRatio: 1,
  pageMs: 1,
  channels: 'hold',
  bytesPerSec: 0,
  transferMs: 0,
});
// A broadcast from vm0: its switch floods it through the tunnel to the other host's VM.
const frame = buildFrame('ff:ff:ff:ff:ff:ff', '02:00:00:00:00:01', 0x88b5, Buffer.from('across the tunnel'));
const [vm0, vm1] = spec.vms;

let open: { switches: SwitchProcesses; network: UdpNetwork } | undefined;

async function start(settleBudgetMs?: number) {
  const switches = await startSwitchProcesses(spec, CLI);
  const network = await UdpNetwork.open({ ...switches.network, settleBudgetMs });
  const got: { vm: string; frame: Buffer }[] = [];
  network.connect((vm, f) => got.push({ vm, frame: Buffer.from(f) }));
  open = { switches, network };
  return { switches, network, got };
}

afterEach(async () => {
  if (!open) return;
  for (const h of spec.hosts) open.switches.signal(h.name, 'SIGCONT');
  await open.network.close();
  await open.switches.stop();
  open = undefined;
});

describe('the simulated VMs over switch processes: a slow switch is not a dead one', () => {
  it('waits for a switch stopped for 400 ms while a frame is on its way, and hands the frame over before it returns', async () => {
    expect(vm0.host).not.toBe(vm1.host);
    const { switches, network, got } = await start();
    switches.signal(vm0.host, 'SIGSTOP'); // it can neither read the frame nor answer STATUS
    network.send(vm0.name, frame);
    const t0 = Date.now();
    const resumed = new Promise<void>((r) =>
      setTimeout(() => {
        switches.signal(vm0.host, 'SIGCONT');
        r();
      }, 400),
    );
    const quiet = await network.settle();
    const waited = Date.now() - t0;
    const handed = got.map((g) => [g.vm, g.frame.equals(frame)]);
    await resumed;
    // the frame went through both switches and reached the VM on the other host within this settle
    expect(handed).toEqual([[vm1.name, true]]);
    expect(waited).toBeGreaterThanOrEqual(390);
    expect(quiet).toBe(true);
  });

  it('learns a killed switch at once (port unreachable): the settle does not wait for it, its flip fails fast', async () => {
    const { switches, network, got } = await start();
    await switches.kill(vm1.host);
    network.send(vm0.name, frame); // flooded towards the dead switch: lost, as on a cut wire
    let t0 = Date.now();
    expect(await network.settle()).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(got).toEqual([]);
    t0 = Date.now();
    await expect(network.flip(vm1.name, 1)).rejects.toThrow(/is not running \(port unreachable\)/);
    expect(Date.now() - t0).toBeLessThan(1000);
    // restarted (a new incarnation, counted from its own start): frames pass again
    await switches.start(vm1.host);
    network.send(vm0.name, frame);
    expect(await network.settle()).toBe(true);
    expect(got.map((g) => g.vm)).toEqual([vm1.name]);
    await network.flip(vm1.name, 1);
  });

  it('stopped past the settle budget: the settle is unconfirmed, a pause or flip refuses, and nothing is forgotten once it runs', async () => {
    const { switches, network, got } = await start(300);
    switches.signal(vm0.host, 'SIGSTOP');
    network.send(vm0.name, frame);
    let t0 = Date.now();
    expect(await network.settle()).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    await expect(network.quiesce()).rejects.toThrow(
      `the network was not quiet within 300 ms before a pause: switch ${vm0.host} did not answer STATUS`,
    );
    t0 = Date.now();
    await expect(network.flip(vm1.name, 1)).rejects.toThrow(`before the flip of ${vm1.name}: switch ${vm0.host} did not answer STATUS`);
    expect(got).toEqual([]);
    switches.signal(vm0.host, 'SIGCONT');
    expect(await network.settle()).toBe(true);
    // the frame it read late is still counted: handed over by the settle that confirmed quiet
    expect(got.map((g) => [g.vm, g.frame.equals(frame)])).toEqual([[vm1.name, true]]);
    await network.flip(vm1.name, 1);
  });
});

describe('the simulated VMs over switch processes: a settle that needs no STATUS round', () => {
  const mac0 = '02:00:00:00:00:01';
  const mac1 = '02:00:00:00:00:02';
  const unicast = (dst: string, src: string, text: string) => buildFrame(dst, src, 0x88b5, Buffer.from(text));

  it('is quiet once every frame sent reached its addressee: answered with both switches stopped', async () => {
    const { switches, network, got } = await start();
    // each VM sends once, so each one's MAC is known here (the first frames are settled by STATUS)
    network.send(vm0.name, unicast(mac1, mac0, 'hello 1'));
    network.send(vm1.name, unicast(mac0, mac1, 'hello 0'));
    expect(await network.settle()).toBe(true);
    const a = unicast(mac1, mac0, 'a');
    const b = unicast(mac0, mac1, 'b');
    network.send(vm0.name, a);
    network.send(vm1.name, b);
    await new Promise((r) => setTimeout(r, 300)); // both cross the tunnel into the VMs' sockets
    for (const h of spec.hosts) switches.signal(h.name, 'SIGSTOP'); // a STATUS round would wait out the budget
    const t0 = Date.now();
    expect(await network.settle()).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(got.slice(2).map((g) => [g.vm, g.frame.toString('hex')])).toEqual([
      [vm0.name, b.toString('hex')],
      [vm1.name, a.toString('hex')],
    ]);
  });

  it('asks the switches when a frame it awaits does not arrive (held for a pre-snapshot VM), and hands it over once released', async () => {
    const { network, got } = await start();
    network.send(vm0.name, unicast(mac1, mac0, 'hello 1'));
    network.send(vm1.name, unicast(mac0, mac1, 'hello 0'));
    expect(await network.settle()).toBe(true);
    await network.flip(vm0.name, 1); // vm0 past its cut, vm1 not: vm0's frames to vm1 are held
    expect(await network.settle()).toBe(true);
    const held = unicast(mac1, mac0, 'held');
    network.send(vm0.name, held);
    const t0 = Date.now();
    expect(await network.settle()).toBe(true); // confirmed by the switches' counts: judged and held
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(got.length).toBe(2);
    await network.flip(vm1.name, 1);
    expect(await network.settle()).toBe(true);
    expect(got.slice(2).map((g) => [g.vm, g.frame.toString('hex')])).toEqual([[vm1.name, held.toString('hex')]]);
  });
});
