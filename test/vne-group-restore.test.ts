/**
 * Group snapshots of the simulated environment through real store sessions: three coordinated
 * epochs under traffic (hold mode, synchronised stop) into a Store, each committed as one group;
 * the images a group restore gives back are exactly the VMs' memory and disks at their pauses, the group
 * (with its channel state) resumes to the undisturbed checksums, and an aborted epoch leaves
 * nothing visible in the store.
 */
import { describe, expect, it } from 'vitest';
import { runEnvironment, resumeGroup } from '../src/coordinator/environment-run.js';
import { storeTarget, type SnapshotTarget } from '../src/coordinator/target.js';
import { channelMemberName } from '../src/coordinator/channel-state.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import { diskMemberName } from '../src/sim/vm.js';
import { Store } from '../src/store/store.js';
import { initStore, tempDirs } from './helpers/engine.js';
import type { PreparedSnapshot } from '../src/store/session.js';

const tempDir = tempDirs();

describe('group snapshots in the store', () => {
  it('stores three epochs as groups whose restore gives the exact images at the pauses and resumes the environment', async () => {
    const store = await Store.open(await initStore(tempDir('vne-group')), { workers: 0 });
    try {
      const spec = scenarioSpec({
        name: 'env7',
        seed: 21,
        vms: 4,
        hosts: 2,
        minPages: 96,
        sizeRatio: 4,
        pageMs: 2,
        channels: 'hold',
        bytesPerSec: 20_000,
        transferMs: 6000,
      });
      const inner = storeTarget(store);
      // Record each VM's image at its pause, as the agent saw it, to compare with what the store gives back.
      const atPause = new Map<string, Uint8Array>();
      let env: import('../src/sim/env.js').SimEnv | undefined;
      const target: SnapshotTarget<PreparedSnapshot> = {
        ...inner,
        async beginSession(o) {
          const s = await inner.beginSession(o);
          return {
            ...s,
            // the agent writes the state pages during the pause (simulated time stands still
            // while it does): the whole image now is the image at the pause
            async writePages(first, bytes) {
              const vm = env?.vms.get(o.vm);
              if (vm?.paused) {
                atPause.set(`${o.group}/${o.vm}`, vm.image((env as NonNullable<typeof env>).clock.now));
                atPause.set(`${o.group}/${diskMemberName(o.vm)}`, vm.disk.slice());
              }
              return s.writePages(first, bytes);
            },
          };
        },
      };
      const r = await runEnvironment({
        spec,
        target,
        epochs: 3,
        firstAtMs: 300,
        gapMs: 400,
        syncStop: true,
        timeoutMs: 60_000,
        agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
        limitMs: 600_000,
        onEnv: (e) => (env = e),
      });
      expect(r.reports.map((x) => x.reason ?? x.outcome)).toEqual(['committed', 'committed', 'committed']);
      const snaps = await store.listSnapshots();
      expect(snaps).toHaveLength(3 * 9); // 4 VMs' memory and disk, and the channel state, per epoch
      for (const rep of r.reports) {
        expect(
          snaps
            .filter((x) => x.group === rep.group)
            .map((x) => x.vm)
            .sort(),
        ).toEqual([channelMemberName('env7'), 'vm0', 'vm0.disk', 'vm1', 'vm1.disk', 'vm2', 'vm2.disk', 'vm3', 'vm3.disk']);
        const g = await resumeGroup(spec, inner, rep.group, rep.epoch, 600_000);
        for (const m of spec.vms.flatMap((v) => [v.name, diskMemberName(v.name)])) {
          expect(
            Buffer.from(g.images.get(m) as Uint8Array).equals(Buffer.from(atPause.get(`${rep.group}/${m}`) as Uint8Array)),
            `${rep.group}/${m}`,
          ).toBe(true);
        }
        expect(g.check.violations).toEqual([]);
        expect(g.check.lost).toBe(0);
        expect(g.outcome.done).toBe(true);
        for (const t of g.outcome.transfers) expect([t.received, t.checksum, t.diskChecksum]).toEqual([t.bytes, t.expected, t.expected]);
      }
      // later epochs share most pages with earlier ones: the store added far less than it holds
      const later = snaps.filter((x) => x.group === r.reports[2].group && /^vm\d$/.test(x.vm));
      expect(later.reduce((n, x) => n + x.addedBytes, 0)).toBeLessThan(later.reduce((n, x) => n + x.byteLength, 0) / 4);
    } finally {
      await store.close();
    }
  });

  it('an aborted epoch (an agent crashed) leaves no snapshot visible, and the next epoch commits', async () => {
    const dir = await initStore(tempDir('vne-abort'));
    let store = await Store.open(dir, { workers: 0 });
    const spec = scenarioSpec({
      name: 'env8',
      seed: 5,
      vms: 3,
      hosts: 2,
      minPages: 64,
      sizeRatio: 2,
      pageMs: 2,
      channels: 'drop',
      bytesPerSec: 20_000,
      transferMs: 3000,
    });
    try {
      const r = await runEnvironment({
        spec,
        target: storeTarget(store),
        epochs: 2,
        firstAtMs: 200,
        gapMs: 200,
        syncStop: false,
        timeoutMs: 60_000,
        agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
        faults: { 1: { vm1: { kind: 'crash', atMs: 100 } } },
        limitMs: 600_000,
      });
      expect(r.reports.map((x) => x.outcome)).toEqual(['aborted', 'committed']);
    } finally {
      await store.close();
    }
    store = await Store.open(dir, { workers: 0 });
    try {
      const snaps = await store.listSnapshots();
      expect(snaps.map((x) => x.group)).toEqual(Array(6).fill('env8-e2')); // 3 VMs' memory and disk
    } finally {
      await store.close();
    }
  });
});
