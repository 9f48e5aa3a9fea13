/**
 * A QEMU environment (issue 13, part 2): two real QEMU guests (TCG, test/qemu/build-guest.sh's
 * guest with virtio-net) on one `vnstore switch` through `-netdev dgram`, pinging each other at
 * static addresses. `vnstore qemu snapshot` takes one coordinated group snapshot of both while they
 * run: each VM migrated into the store by its agent, its colour flipped at the switch while QEMU
 * pauses it, both VMs' members committed as one group. The switch's counters show the frames of
 * both colours; two fresh QEMUs started from the group go on counting and pinging each other.
 * Needs qemu-system-x86 and busybox-static (.ci/run installs them); skipped outside CI without them.
 * The snapshots and sends under test are the executable (`vnstore qemu snapshot`, QEMU's `exec:`
 * receivers); set-up and the checks after them (init, ls, qemu info, restore) run in-process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildGuest,
  lastTick,
  pingReplies,
  qemuAvailable,
  qmpProxy,
  startGuest,
  ticks,
  vnstoreBin,
  waitFor,
  type Guest,
} from './qemu/harness.mjs';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { runCliInProcess } from './helpers/cli.js';
import { startServe } from './helpers/serve-process.js';
import { decodeChannelState } from '../src/coordinator/channel-state.js';

const inCi = /^(1|true)$/i.test(process.env.CI ?? '');
const haveQemu = qemuAvailable();
if (!haveQemu && !inCi)
  console.warn(
    'qemu-env tests skipped: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 busybox-static); under CI=true they fail instead',
  );

let dir: string;
let store: string;
let guest: { kernel: string; initrd: string };
const running: Guest[] = [];
const switches: ChildProcess[] = [];

interface PairCounters {
  src: string;
  dst: string;
  epoch: number;
  delivered: number;
  dropped: number;
  held: number;
  crossing: number;
}

/** Free UDP ports on loopback for the guests' own addresses (the switch must know them up front). */
async function freeUdpPorts(n: number): Promise<number[]> {
  const socks = await Promise.all(
    Array.from({ length: n }, () => {
      const s = dgram.createSocket('udp4');
      return new Promise<dgram.Socket>((resolve) => s.bind(0, '127.0.0.1', () => resolve(s)));
    }),
  );
  const ports = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

/** `vnstore switch` on ephemeral ports; stop() ends it and returns its counters. */
async function startSwitch(ports: Record<string, number>, epoch: number) {
  const args = [
    vnstoreBin,
    'switch',
    '--vm-listen',
    '127.0.0.1:0',
    '--tunnel-listen',
    '127.0.0.1:0',
    '--channels',
    'hold',
    '--epoch',
    String(epoch),
    '--json',
  ];
  for (const [vm, port] of Object.entries(ports)) args.push('--port', `${vm}=127.0.0.1:${port}`);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  switches.push(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const [vmPort, tunnelPort] = await waitFor('the switch to listen', () => {
    const m = /VMs on udp port (\d+), tunnel on udp port (\d+)/.exec(err);
    if (child.exitCode !== null) throw new Error(`switch exited: ${err}`);
    return m ? [Number(m[1]), Number(m[2])] : undefined;
  });
  return {
    vmPort,
    tunnelPort,
    async stop(): Promise<PairCounters[]> {
      child.kill('SIGTERM');
      expect(await exited, err).toBe(0);
      return (JSON.parse(out) as { pairs: PairCounters[] }).pairs;
    },
  };
}

/** QEMU arguments attaching a guest to the switch, plus a QMP socket of its own for the agent. */
function nicArgs(k: number, ownPort: number, switchPort: number, qmpName = `vm${k}.agent`): string[] {
  return [
    '-netdev',
    `dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${ownPort},remote.type=inet,remote.host=127.0.0.1,remote.port=${switchPort}`,
    '-device',
    `virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0${k},romfile=`,
    '-qmp',
    `unix:${dir}/${qmpName}.qmp,server=on,wait=off`,
  ];
}

const ADDRS = { vm1: ['10.0.0.1', '10.0.0.2'], vm2: ['10.0.0.2', '10.0.0.1'] } as const;

/**
 * Guest RAM sizes 8 KiB past a whole number of MiB. Under TCG, QEMU before 9.0 can lose a guest
 * write from its migration dirty bitmap when a RAM block is a whole number of 64-page bitmap words
 * (256 KiB): that fast path clears dirty bits without resetting the TLB entries that bypass dirty
 * tracking. Any other size takes the exact path, so these tests see vnstore's exactness and not
 * QEMU's bug (docs/QEMU.md, "Synchronised stop", has the runs that found it).
 */
const MEM_96 = '98312K';
const MEM_256 = '262152K';

async function boot(
  vm: 'vm1' | 'vm2',
  k: number,
  ownPort: number,
  switchPort: number,
  incoming?: string,
  suffix = '',
  memMiB: string = MEM_96,
): Promise<Guest> {
  const [ip, peer] = ADDRS[vm];
  const g = await startGuest({
    dir,
    name: vm + suffix,
    guest,
    memMiB,
    incoming,
    append: `vnip=${ip} vnpeer=${peer}`,
    extraArgs: nicArgs(k, ownPort, switchPort, `${vm}${suffix}.agent`),
  });
  running.push(g);
  return g;
}

/** `vnstore qemu snapshot --json` of vm1 and vm2 (their agent QMP sockets named by `suffix`) on a switch. */
function snapshotArgs(env: string, suffix: string, tunnelPort: number, ...more: string[]): string[] {
  const vm = (name: string) => ['--vm', `${name}=${dir}/${name}${suffix}.agent.qmp`];
  return ['qemu', 'snapshot', '--env', env, ...vm('vm1'), ...vm('vm2'), '--switch', `127.0.0.1:${tunnelPort}`, '--json', ...more];
}

const sum = (pairs: PairCounters[], f: (p: PairCounters) => boolean, field: 'delivered' | 'dropped') =>
  pairs.filter(f).reduce((a, p) => a + p[field], 0);

beforeAll(async () => {
  if (!haveQemu && !inCi) return;
  if (!haveQemu) throw new Error('qemu-system-x86_64 is not installed: apt-get install qemu-system-x86 busybox-static (.ci/run does)');
  guest = buildGuest();
  dir = makeTempDir('qemu-env');
  store = `${dir}/store`;
  expect((await runCliInProcess(['init', '--store', store])).code).toBe(0);
}, 300_000);

afterAll(async () => {
  for (const g of running) await g.stop();
  for (const s of switches) if (s.exitCode === null) s.kill('SIGKILL');
  if (dir) removeDir(dir);
});

describe.skipIf(!haveQemu && !inCi)('a QEMU environment on the vnstore switch', () => {
  it('snapshots two pinging guests as one group with their colours flipped, and restores both to go on', async () => {
    const [p1, p2] = await freeUdpPorts(2);
    const sw = await startSwitch({ vm1: p1, vm2: p2 }, 0);
    const [g1, g2] = await Promise.all([boot('vm1', 1, p1, sw.vmPort), boot('vm2', 2, p2, sw.vmPort)]);
    await waitFor(
      'both guests pinging each other',
      () => pingReplies(g1.consolePath).length >= 3 && pingReplies(g2.consolePath).length >= 3,
      120_000,
    );
    const snapshotArgs = [
      'qemu',
      'snapshot',
      '--env',
      'lab',
      '--vm',
      `vm1=${dir}/vm1.agent.qmp`,
      '--vm',
      `vm2=unix:${dir}/vm2.agent.qmp`,
      '--switch',
      `127.0.0.1:${sw.tunnelPort}`,
      '--sync-stop',
      'on',
      '--json',
      '--store',
      store,
    ];

    // Epoch 1 fails: vm2 migrates with compression, which the receiver refuses. vm1's migration
    // completes and is prepared, but nothing is committed, and both VMs are flipped to epoch 1.
    await g2.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'compress', state: true }] });
    const failed = await runCli(snapshotArgs);
    expect(failed.code, failed.stderr).toBe(12);
    // QEMU may see the refusal (the receiver closing) or finish writing first: either way it is named.
    expect(failed.stderr.toString()).toMatch(
      /^vnstore: error: epoch 1 of lab aborted, no group stored: vm2: (migration of vm2 failed|migration stream uses compressed pages)/,
    );
    expect(failed.stderr.toString().trim().split('\n')).toHaveLength(1);
    expect(JSON.parse((await runCliInProcess(['ls', '--json', '--store', store])).stdout.toString())).toEqual([]);
    await g2.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'compress', state: false }] });
    for (const g of [g1, g2]) expect((await g.qmp.cmd<{ status: string }>('query-status')).status).toBe('running');

    const before = {
      tick: [lastTick(g1.consolePath), lastTick(g2.consolePath)],
      seq: [pingReplies(g1.consolePath).at(-1) as number, pingReplies(g2.consolePath).at(-1) as number],
    };
    // Epoch 2 (numbered past the colours the aborted epoch left at the switch) commits.
    const snap = await runCli(snapshotArgs);
    expect(snap.code, snap.stderr).toBe(0);
    const after = { tick: [lastTick(g1.consolePath), lastTick(g2.consolePath)] };
    const result = JSON.parse(snap.stdout.toString()) as {
      group: string;
      epoch: number;
      syncStop: boolean;
      members: { vm: string; id: string; stateId: string; downtimeMs: number }[];
    };
    expect(result.group).toBe('lab-e2');
    expect(result.syncStop).toBe(true);
    expect(result.epoch).toBe(2);
    expect(result.members.map((m) => m.vm)).toEqual(['vm1', 'vm2']);

    // Both VMs' RAM and state snapshots, committed in the one group, and nothing else in the store.
    const ls = await runCliInProcess(['ls', '--json', '--store', store]);
    const listed = JSON.parse(ls.stdout.toString()) as { id: string; vm: string; group: string }[];
    expect(listed.map((s) => `${s.vm}@${s.group}`).sort()).toEqual(['vm1.qemu@lab-e2', 'vm1@lab-e2', 'vm2.qemu@lab-e2', 'vm2@lab-e2']);
    expect(new Set(listed.map((s) => s.id))).toEqual(new Set(result.members.flatMap((m) => [m.id, m.stateId])));

    // The guests ran on after the snapshot, and still reach each other.
    await waitFor(
      'pings after the snapshot',
      () =>
        (pingReplies(g1.consolePath).at(-1) as number) > before.seq[0] + 5 &&
        (pingReplies(g2.consolePath).at(-1) as number) > before.seq[1] + 5,
      60_000,
    );
    const lastSeq = [pingReplies(g1.consolePath).at(-1) as number, pingReplies(g2.consolePath).at(-1) as number];
    await Promise.all([g1.stop(), g2.stop()]);

    // The switch saw the colours in both directions: frames of epoch 0 before the first flips and of
    // epoch 2 after the second. In hold mode a frame from a flipped VM to one not yet flipped waits:
    // none dropped.
    const pairs = await sw.stop();
    for (const [src, dst] of [
      ['vm1', 'vm2'],
      ['vm2', 'vm1'],
    ]) {
      for (const epoch of [0, 2])
        expect(
          sum(pairs, (p) => p.src === src && p.dst === dst && p.epoch === epoch, 'delivered'),
          `${src}->${dst} epoch ${epoch}`,
        ).toBeGreaterThan(0);
    }
    expect(sum(pairs, () => true, 'dropped')).toBe(0);
    expect(pairs.every((p) => p.epoch <= 2)).toBe(true);

    // Group restore: a fresh switch at the group's epoch, two fresh QEMUs from the group's members.
    const sw2 = await startSwitch({ vm1: p1, vm2: p2 }, 2);
    const id = (vm: string) => (result.members.find((m) => m.vm === vm) as { id: string }).id;
    // One local store serves one process at a time: the second send waits for the first.
    const send = (vm: string) => `exec:${process.execPath} ${vnstoreBin} qemu send ${id(vm)} --store ${store} --lock-wait 120`;
    const [r1, r2] = await Promise.all([
      boot('vm1', 1, p1, sw2.vmPort, send('vm1'), '-restored'),
      boot('vm2', 2, p2, sw2.vmPort, send('vm2'), '-restored'),
    ]);
    await waitFor(
      'the restored guests counting and pinging',
      () =>
        ticks(r1.consolePath).length >= 3 &&
        ticks(r2.consolePath).length >= 3 &&
        pingReplies(r1.consolePath).length >= 3 &&
        pingReplies(r2.consolePath).length >= 3,
      120_000,
    );
    for (const [k, r] of [r1, r2].entries()) {
      const t = ticks(r.consolePath);
      // The count goes on from the snapshot, taken between `before` and `after`, every check passing.
      expect(t[0].n).toBeGreaterThan(before.tick[k]);
      expect(t[0].n).toBeLessThanOrEqual(after.tick[k] + 2);
      t.forEach((x, j) => expect(x).toEqual({ n: t[0].n + j, ok: true }));
      // The restored ping goes on numbering from the snapshot (below what the originals reached after
      // it), and its replies come back through the new switch.
      const seq = pingReplies(r.consolePath);
      expect(seq[0]).toBeGreaterThan(before.seq[k]);
      expect(seq[0]).toBeLessThan(lastSeq[k]);
      expect(seq).toEqual([...seq].sort((a, b) => a - b));
    }
    await Promise.all([r1.stop(), r2.stop()]);
    const pairs2 = await sw2.stop();
    for (const [src, dst] of [
      ['vm1', 'vm2'],
      ['vm2', 'vm1'],
    ])
      expect(sum(pairs2, (p) => p.src === src && p.dst === dst && p.epoch === 2, 'delivered')).toBeGreaterThan(0);
  }, 400_000);

  it('snapshots an environment through a vnstore serve (--server) and restores both guests from it', async () => {
    const srvStore = `${dir}/server-store`;
    const init = await runCliInProcess(['init', '--store', srvStore, '--json']);
    expect(init.code, init.stderr).toBe(0);
    const tokenFile = (JSON.parse(init.stdout.toString()) as { tokenFile: string }).tokenFile;
    const srv = await startServe(srvStore);
    try {
      const remote = ['--server', srv.address, '--token-file', tokenFile];
      const [p1, p2] = await freeUdpPorts(2);
      const sw = await startSwitch({ vm1: p1, vm2: p2 }, 0);
      const [g1, g2] = await Promise.all([
        boot('vm1', 1, p1, sw.vmPort, undefined, '-srv'),
        boot('vm2', 2, p2, sw.vmPort, undefined, '-srv'),
      ]);
      await waitFor(
        'both guests pinging each other',
        () => pingReplies(g1.consolePath).length >= 2 && pingReplies(g2.consolePath).length >= 2,
        120_000,
      );
      const before = [lastTick(g1.consolePath), lastTick(g2.consolePath)];
      const snap = await runCli(snapshotArgs('remote', '-srv', sw.tunnelPort, ...remote));
      expect(snap.code, snap.stderr).toBe(0);
      const after = [lastTick(g1.consolePath), lastTick(g2.consolePath)];
      const result = JSON.parse(snap.stdout.toString()) as {
        group: string;
        syncStop: boolean;
        syncStopReason: string;
        members: { vm: string; id: string; stateId: string }[];
      };
      expect(result.group).toBe('remote-e1');
      // --sync-stop auto, the default: these guests run under TCG, held only on QEMU 9.0 or later.
      const { qemu } = await g1.qmp.cmd<{ qemu: { major: number; minor: number; micro: number } }>('query-version');
      if (qemu.major < 9)
        expect([result.syncStop, result.syncStopReason]).toEqual([
          false,
          `TCG before QEMU 9.0 can lose a guest write from a held migration (docs/QEMU.md): vm1 (QEMU ${qemu.major}.${qemu.minor}.${qemu.micro}), vm2 (QEMU ${qemu.major}.${qemu.minor}.${qemu.micro})`,
        ]);
      else expect([result.syncStop, result.syncStopReason]).toEqual([true, 'every VM runs under KVM or on QEMU 9.0 or later']);
      // The group is on the server, all four members, and nothing went to the local store.
      const ls = await runCliInProcess(['ls', '--json', ...remote]);
      expect(ls.code, ls.stderr).toBe(0);
      const listed = JSON.parse(ls.stdout.toString()) as { id: string; vm: string; group: string }[];
      expect(listed.map((x) => `${x.vm}@${x.group}`).sort()).toEqual([
        'vm1.qemu@remote-e1',
        'vm1@remote-e1',
        'vm2.qemu@remote-e1',
        'vm2@remote-e1',
      ]);
      expect(new Set(listed.map((x) => x.id))).toEqual(new Set(result.members.flatMap((m) => [m.id, m.stateId])));
      const local = JSON.parse((await runCliInProcess(['ls', '--json', '--store', store])).stdout.toString()) as { group: string }[];
      expect(local.some((x) => x.group === 'remote-e1')).toBe(false);
      await Promise.all([g1.stop(), g2.stop()]);
      await sw.stop();

      // Both restored at once through the server (no store lock between them), on a switch at the epoch.
      const sw2 = await startSwitch({ vm1: p1, vm2: p2 }, 1);
      const send = (vm: string) =>
        `exec:${process.execPath} ${vnstoreBin} qemu send ${result.members.find((m) => m.vm === vm)!.id} ${remote.join(' ')}`;
      const [r1, r2] = await Promise.all([
        boot('vm1', 1, p1, sw2.vmPort, send('vm1'), '-srv-restored'),
        boot('vm2', 2, p2, sw2.vmPort, send('vm2'), '-srv-restored'),
      ]);
      await waitFor(
        'the guests restored from the server counting and pinging',
        () => [r1, r2].every((r) => ticks(r.consolePath).length >= 3 && pingReplies(r.consolePath).length >= 2),
        120_000,
      );
      for (const [k, r] of [r1, r2].entries()) {
        const t = ticks(r.consolePath);
        expect(t[0].n).toBeGreaterThan(before[k]);
        expect(t[0].n).toBeLessThanOrEqual(after[k] + 2);
        t.forEach((x, j) => expect(x).toEqual({ n: t[0].n + j, ok: true }));
      }
      await Promise.all([r1.stop(), r2.stop()]);
      await sw2.stop();
    } finally {
      await srv.stop();
    }
  }, 400_000);

  it('--sync-stop on pauses guests of different sizes together, where off pauses each as its migration converges', async () => {
    // About 96 and 256 MiB (MEM_96, MEM_256): their migrations take different times, so each converging on its own pauses
    // them far apart; the synchronised stop pauses both once both are nearly done.
    const [p1, p2] = await freeUdpPorts(2);
    const sw = await startSwitch({ vm1: p1, vm2: p2 }, 0);
    const [g1, g2] = await Promise.all([
      boot('vm1', 1, p1, sw.vmPort, undefined, '-sync', MEM_96),
      boot('vm2', 2, p2, sw.vmPort, undefined, '-sync', MEM_256),
    ]);
    await waitFor('both guests counting', () => lastTick(g1.consolePath) >= 2 && lastTick(g2.consolePath) >= 2, 120_000);
    // The synchronised snapshot's agents reach QEMU through proxies that hold their `cont` until the
    // paused guests' memory is saved: what each stored RAM snapshot must hold exactly.
    const proxies = await Promise.all(
      [g1, g2].map((g, k) => qmpProxy(`${dir}/vm${k + 1}-sync-held.agent.qmp`, `${dir}/vm${k + 1}-sync.agent.qmp`)),
    );
    const take = async (mode: 'on' | 'off', suffix: string, ...more: string[]) => {
      const r = await runCli(snapshotArgs('sync', suffix, sw.tunnelPort, '--sync-stop', mode, '--store', store, ...more));
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout.toString()) as {
        group: string;
        syncStop: boolean;
        flipSkewMs: number;
        stopSkewMs: number;
        channelFrames?: number;
        members: { vm: string; id: string }[];
      };
    };
    // With the guests paused seconds apart, pings cross the cut: their channel state is stored too.
    const off = await take('off', '-sync', '--channel-state', 'on');
    const before = lastTick(g1.consolePath);
    const paused: Record<string, string> = { vm1: `${dir}/vm1-sync.paused`, vm2: `${dir}/vm2-sync.paused` };
    for (const [k, g] of [g1, g2].entries())
      proxies[k].hooks.beforeCont = async () => {
        const { 'base-memory': bytes } = await g.qmp.cmd<{ 'base-memory': number }>('query-memory-size-summary');
        await g.qmp.cmd('pmemsave', { val: 0, size: bytes, filename: paused[`vm${k + 1}`] });
      };
    const on = await take('on', '-sync-held');
    const after = lastTick(g1.consolePath);
    for (const p of proxies) p.close();
    // Each stored pc.ram is the paused guest's memory, byte for byte, but for 0xa0000-0xfffff (the
    // VGA window and BIOS shadow in physical memory: not pc.ram there).
    for (const m of on.members) {
      const info = await runCliInProcess(['qemu', 'info', m.id, '--json', '--store', store]);
      const pcRam = (JSON.parse(info.stdout.toString()) as { blocks: { name: string; bytes: number; firstPage: number }[] }).blocks.find(
        (b) => b.name === 'pc.ram',
      )!;
      const image = `${dir}/${m.vm}-sync.restored`;
      expect((await runCliInProcess(['restore', m.id, '-o', image, '--store', store])).code).toBe(0);
      const stored = readFileSync(image).subarray(pcRam.firstPage * 4096, pcRam.firstPage * 4096 + pcRam.bytes);
      const truth = readFileSync(paused[m.vm]);
      expect(truth.length).toBe(pcRam.bytes);
      const differing: number[] = [];
      for (let page = 0; page * 4096 < truth.length; page++)
        if ((page < 0xa0 || page >= 0x100) && truth.compare(stored, page * 4096, (page + 1) * 4096, page * 4096, (page + 1) * 4096) !== 0)
          differing.push(page);
      expect(differing, `${m.vm}: pages of pc.ram unlike the paused guest's`).toEqual([]);
    }
    expect([off.group, off.syncStop, on.group, on.syncStop]).toEqual(['sync-e1', false, 'sync-e2', true]);
    const listed = JSON.parse((await runCliInProcess(['ls', '--json', '--store', store])).stdout.toString()) as {
      id: string;
      vm: string;
      group: string;
    }[];
    expect(
      listed
        .filter((x) => x.group === 'sync-e1')
        .map((x) => x.vm)
        .sort(),
    ).toEqual(['sync.channels', 'vm1', 'vm1.qemu', 'vm2', 'vm2.qemu']);
    expect(
      listed
        .filter((x) => x.group === 'sync-e2')
        .map((x) => x.vm)
        .sort(),
    ).toEqual(['vm1', 'vm1.qemu', 'vm2', 'vm2.qemu']);
    const image = await runCliInProcess(['restore', listed.find((x) => x.vm === 'sync.channels')!.id, '--store', store]);
    const frames = decodeChannelState(image.stdout, 1);
    expect(frames).toHaveLength(off.channelFrames!);
    for (const f of frames) expect([f.src, f.dst].sort()).toEqual(['vm1', 'vm2']);
    expect(on.channelFrames).toBeUndefined();
    console.log(
      `flip skew: --sync-stop off ${off.flipSkewMs} ms, on ${on.flipSkewMs} ms; stop skew: off ${off.stopSkewMs} ms, on ${on.stopSkewMs} ms`,
    );
    expect(on.stopSkewMs).toBeLessThan(off.stopSkewMs / 2);
    expect(on.flipSkewMs).toBeLessThan(off.flipSkewMs / 2);
    // QEMU's downtime limit and bandwidth, changed to hold the migrations for the stop, are back to their defaults.
    for (const g of [g1, g2]) {
      expect((await g.qmp.cmd<{ status: string }>('query-status')).status).toBe('running');
      const p = await g.qmp.cmd<{ 'downtime-limit': number; 'max-bandwidth': number }>('query-migrate-parameters');
      expect([p['downtime-limit'], p['max-bandwidth']]).toEqual([300, 134217728]);
    }
    // The synchronised snapshot restores: the small guest counts on from it, its checks passing.
    await Promise.all([g1.stop(), g2.stop()]);
    const id = on.members.find((m) => m.vm === 'vm1')!.id;
    const r1 = await boot(
      'vm1',
      1,
      p1,
      sw.vmPort,
      `exec:${process.execPath} ${vnstoreBin} qemu send ${id} --store ${store}`,
      '-sync-restored',
      MEM_96,
    );
    await waitFor('the restored guest counting', () => ticks(r1.consolePath).length >= 3, 120_000);
    const t = ticks(r1.consolePath);
    expect(t[0].n).toBeGreaterThan(before);
    expect(t[0].n).toBeLessThanOrEqual(after + 2);
    t.forEach((x, j) => expect(x).toEqual({ n: t[0].n + j, ok: true }));
    await r1.stop();
    await sw.stop();
  }, 400_000);

  it('refuses, in one line and storing nothing, a VM whose QMP socket cannot be reached', async () => {
    const [p1] = await freeUdpPorts(1);
    const sw = await startSwitch({ vm1: p1 }, 0);
    const r = await runCli([
      'qemu',
      'snapshot',
      '--env',
      'broken',
      '--vm',
      `vm1=${dir}/nowhere.qmp`,
      '--switch',
      `127.0.0.1:${sw.tunnelPort}`,
      '--store',
      store,
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.toString()).toMatch(/^vnstore: .*QMP .*nowhere\.qmp: cannot connect/);
    expect(r.stderr.toString().trim().split('\n')).toHaveLength(1);
    await sw.stop();
    const ls = await runCliInProcess(['ls', '--json', '--store', store]);
    expect((JSON.parse(ls.stdout.toString()) as { group: string }[]).some((x) => x.group.startsWith('broken'))).toBe(false);
  }, 60_000);
});
