/**
 * vnstore as a real QEMU's migration target and restore source (issue 13), with qemu-system-x86_64
 * under TCG and a tiny guest (a Debian kernel package unpacked with dpkg -x, a busybox initramfs:
 * test/qemu/build-guest.sh) that counts on its console and checks an 8 MiB random buffer it keeps in
 * RAM. One guest is snapshotted live twice while it runs, then a fresh QEMU starts from the store and
 * its count goes on from the snapshot with every check passing; three guests in one store share
 * pages across VMs. Needs qemu-system-x86 and busybox-static (.ci/run installs them).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuest, lastTick, migrate, qemuAvailable, startGuest, ticks, vnstoreBin, waitFor, type Guest } from './qemu/harness.mjs';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';

let dir: string;
let store: string;
let guest: { kernel: string; initrd: string };
const running: Guest[] = [];
// Outside CI a machine without QEMU skips this suite, saying so; under CI=true (.ci/run installs
// qemu-system-x86 and busybox-static) a missing QEMU fails it.
const inCi = /^(1|true)$/i.test(process.env.CI ?? '');
const haveQemu = qemuAvailable();
if (!haveQemu && !inCi)
  console.warn(
    'qemu-live tests skipped: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 busybox-static); under CI=true they fail instead',
  );

interface Received {
  id: string;
  stateId: string;
  group: string;
  addedBytes: number;
  logicalBytes: number;
}

async function boot(name: string, incoming?: string): Promise<Guest> {
  const g = await startGuest({ dir, name, guest, memMiB: 96, incoming });
  running.push(g);
  return g;
}

/** Live snapshot: migrate into `vnstore qemu receive`, resume the guest, wait for the receiver's answer. */
async function snapshot(
  g: Guest,
  vm: string,
  tag: string,
): Promise<{ received: Received; tickAtSnapshot: number; totalMs: number; downtimeMs: number }> {
  const out = `${dir}/${tag}.json`;
  const err = `${dir}/${tag}.err`;
  const info = await migrate(
    g,
    `exec:${process.execPath} ${vnstoreBin} qemu receive --vm ${vm} --store ${store} --json > ${out} 2> ${err}`,
    { resume: false },
  );
  expect(info.status, g.stderr()).toBe('completed');
  // Paused now: the last tick on the console is the last one the snapshot can hold.
  const tickAtSnapshot = lastTick(g.consolePath);
  await g.qmp.cmd('cont');
  const text = await waitFor(`${tag}: receive's answer`, () => {
    const e = existsSync(err) ? readFileSync(err, 'utf8') : '';
    if (e) throw new Error(`${tag}: receive failed: ${e}`);
    const t = existsSync(out) ? readFileSync(out, 'utf8') : '';
    return t.endsWith('\n') ? t : undefined;
  });
  return { received: JSON.parse(text) as Received, tickAtSnapshot, totalMs: info['total-time'] ?? 0, downtimeMs: info.downtime ?? 0 };
}

beforeAll(async () => {
  if (!haveQemu && !inCi) return;
  if (!haveQemu) throw new Error('qemu-system-x86_64 is not installed: apt-get install qemu-system-x86 busybox-static (.ci/run does)');
  guest = buildGuest();
  dir = makeTempDir('qemu-live');
  store = `${dir}/store`;
  expect((await runCli(['init', '--store', store])).code).toBe(0);
}, 300_000);

afterAll(async () => {
  for (const g of running) await g.stop();
  if (dir) removeDir(dir);
});

describe.skipIf(!haveQemu && !inCi)('QEMU live migration into vnstore and back', () => {
  it('snapshots a running guest twice, then a fresh QEMU started from the store continues its count with its memory intact', async () => {
    const g1 = await boot('g1');
    await waitFor('g1 counting', () => lastTick(g1.consolePath) >= 2, 90_000);
    const first = await snapshot(g1, 'g1', 's1');
    await waitFor('g1 counting on after the first snapshot', () => lastTick(g1.consolePath) >= first.tickAtSnapshot + 3, 60_000);
    const second = await snapshot(g1, 'g1', 's2');
    expect(second.tickAtSnapshot).toBeGreaterThan(first.tickAtSnapshot);
    // The second snapshot's parent is the first: most pages are stored already.
    expect(second.received.addedBytes).toBeLessThan(first.received.addedBytes / 2);
    await waitFor('g1 counting on after the second snapshot', () => lastTick(g1.consolePath) >= second.tickAtSnapshot + 2, 60_000);
    expect(ticks(g1.consolePath).every((t) => t.ok)).toBe(true);
    await g1.stop();

    const info = await runCli(['qemu', 'info', second.received.id, '--json', '--store', store]);
    expect(info.code, info.stderr).toBe(0);
    const meta = JSON.parse(info.stdout.toString()) as {
      machine: string;
      qemuVersion: string;
      commandLine: string[];
      blocks: { name: string }[];
    };
    expect(meta.machine).toBe('pc-i440fx-7.2');
    expect(meta.qemuVersion).toBe(execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0].trim());
    expect(meta.commandLine).toEqual(g1.argv.map((a, i) => (i === 0 ? meta.commandLine[0] : a)));
    expect(meta.blocks.map((b) => b.name)).toContain('pc.ram');

    const restored = await boot('g1-restored', `exec:${process.execPath} ${vnstoreBin} qemu send ${second.received.id} --store ${store}`);
    await waitFor('the restored guest counting', () => ticks(restored.consolePath).length >= 3, 90_000);
    const after = ticks(restored.consolePath);
    // The count goes on from the snapshot (a line cut by the pause may be finished first, so +1 or +2).
    expect([second.tickAtSnapshot + 1, second.tickAtSnapshot + 2]).toContain(after[0].n);
    after.forEach((t, k) => expect(t).toEqual({ n: after[0].n + k, ok: true }));
    const status = await restored.qmp.cmd<{ status: string }>('query-status');
    expect(status.status).toBe('running');
    await restored.stop();
  }, 300_000);

  it('deduplicates pages across three guests (vnstore stats shows the sharing)', async () => {
    const [g2, g3] = await Promise.all([boot('g2'), boot('g3')]);
    await waitFor('g2 and g3 counting', () => lastTick(g2.consolePath) >= 2 && lastTick(g3.consolePath) >= 2, 90_000);
    const s2 = await snapshot(g2, 'g2', 's3');
    const s3 = await snapshot(g3, 'g3', 's4');
    await Promise.all([g2.stop(), g3.stop()]);
    const stats = await runCli(['stats', '--detail', '--json', '--store', store]);
    expect(stats.code, stats.stderr).toBe(0);
    const { sharing, summary } = JSON.parse(stats.stdout.toString()) as {
      sharing: { vms: string[]; sharedChunks: number[][] };
      summary: { dedupRatio: number };
    };
    const at = (a: string, b: string) => sharing.sharedChunks[sharing.vms.indexOf(a)][sharing.vms.indexOf(b)];
    // The kernel, initramfs and firmware pages are the same in every guest.
    for (const [a, b] of [
      ['g1', 'g2'],
      ['g1', 'g3'],
      ['g2', 'g3'],
    ])
      expect(at(a, b), `${a}/${b}`).toBeGreaterThan(1000);
    expect(summary.dedupRatio).toBeGreaterThan(1.5);
    for (const s of [s2, s3]) expect(s.received.addedBytes).toBeLessThan(s.received.logicalBytes / 3);
  }, 300_000);
});
