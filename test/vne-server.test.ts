/**
 * Coordinated snapshots through a real `vnstore serve` child process: each VM's agent stores through
 * its own connection, the coordinator commits the group by id (GROUP_COMMIT). The groups are byte for
 * byte those of the same seeded run into an in-memory target; an agent's connection or the server
 * killed mid-epoch aborts that epoch whole and the next one commits. `vnstore snapshot --server`
 * and `vnstore restore --group --server` from the command line.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runEnvironment, resumeGroup, type RunOptions } from '../src/coordinator/environment-run.js';
import { MemoryTarget, type GroupReader, type SnapshotTarget } from '../src/coordinator/target.js';
import type { EpochReport } from '../src/coordinator/executor.js';
import { serverTarget } from '../src/coordinator/server-target.js';
import { channelMemberName } from '../src/coordinator/channel-state.js';
import { AgentClient } from '../src/agent/client.js';
import { readGroupImages, storeGroupSource } from '../src/coordinator/group-source.js';
import { Store } from '../src/store/store.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import { diskMemberName } from '../src/sim/vm.js';
import { runCli, tempDirs } from './helpers/engine.js';
import { groupsOn } from './helpers/vne-groups.js';
import { startServe, type ServeProcess } from './helpers/serve-process.js';

const tempDir = tempDirs();

const spec = scenarioSpec({
  name: 'envs',
  seed: 5,
  vms: 3,
  hosts: 2,
  minPages: 64,
  sizeRatio: 3,
  pageMs: 2,
  channels: 'hold',
  bytesPerSec: 20_000,
  transferMs: 4000,
});
const MEMBERS = [channelMemberName('envs'), ...spec.vms.flatMap((v) => [v.name, diskMemberName(v.name)])].sort();

function runOptions<P>(target: SnapshotTarget<P>): RunOptions<P> {
  return {
    spec,
    target,
    epochs: 3,
    firstAtMs: 300,
    gapMs: 400,
    syncStop: true,
    timeoutMs: 60_000,
    agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
    limitMs: 600_000,
  };
}

async function initCli(root: string): Promise<{ store: string; token: string; tokenFile: string }> {
  const store = path.join(root, 'store');
  const r = await runCli(['init', '--store', store, '--json']);
  expect(r.code).toBe(0);
  const tokenFile = (JSON.parse(r.stdout.toString()) as { tokenFile: string }).tokenFile;
  return { store, tokenFile, token: readFileSync(tokenFile, 'utf8').trim() };
}

/** Epoch 2 aborted and left nothing; epochs 1 and 3 are whole groups that resume consistently. */
async function expectEpoch2Aborted(reports: EpochReport[], address: string, token: string, reader: GroupReader): Promise<void> {
  expect(reports.map((x) => `${x.group} ${x.outcome}`)).toEqual(['envs-e1 committed', 'envs-e2 aborted', 'envs-e3 committed']);
  const groups = await groupsOn(address, token);
  expect([...groups.keys()].sort()).toEqual(['envs-e1', 'envs-e3']);
  for (const g of ['envs-e1', 'envs-e3']) {
    expect(groups.get(g)).toEqual(MEMBERS);
    const resumed = await resumeGroup(spec, reader, g, Number(g.slice(-1)), 600_000);
    expect(resumed.check.violations).toEqual([]);
    expect(resumed.outcome.done).toBe(true);
  }
}

/** After the server has stopped: no prepared member of an aborted epoch is left held in the store. */
async function expectNothingHeld(dir: string): Promise<void> {
  const store = await Store.open(dir, { workers: 0 });
  try {
    expect((await store.heldPrepared()).map((h) => h.prepared.record.vm)).toEqual([]);
  } finally {
    await store.close();
  }
}

describe('coordinated snapshots through vnstore serve', () => {
  it('commits three epochs as groups that restore exactly the images of the same run in memory', async () => {
    const { store, token } = await initCli(tempDir('vne-srv'));
    const srv = await startServe(store);
    const target = serverTarget(() => AgentClient.connect({ server: srv.address, token }));
    try {
      const viaServer = await runEnvironment(runOptions(target));
      const memory = new MemoryTarget();
      const inMemory = await runEnvironment(runOptions(memory));
      expect(viaServer.reports.map((r) => `${r.group} ${r.reason ?? r.outcome}`)).toEqual([
        'envs-e1 committed',
        'envs-e2 committed',
        'envs-e3 committed',
      ]);
      expect(viaServer.reports).toEqual(inMemory.reports);
      const groups = await groupsOn(srv.address, token);
      expect([...groups.keys()].sort()).toEqual(['envs-e1', 'envs-e2', 'envs-e3']);
      for (const r of viaServer.reports) {
        expect(groups.get(r.group)).toEqual(MEMBERS);
        const got = (await target.readGroup(r.group)) as Map<string, Uint8Array>;
        const want = memory.groups.get(r.group) as Map<string, Uint8Array>;
        expect([...got.keys()].sort()).toEqual(MEMBERS);
        for (const m of MEMBERS)
          expect(Buffer.from(got.get(m) as Uint8Array).equals(Buffer.from(want.get(m) as Uint8Array)), `${r.group}/${m}`).toBe(true);
        const resumed = await resumeGroup(spec, target, r.group, r.epoch, 600_000);
        expect(resumed.check.violations).toEqual([]);
        expect(resumed.outcome.done).toBe(true);
      }
      expect(await target.readGroup('envs-e9')).toBeUndefined();
    } finally {
      await target.close();
      await srv.stop();
    }
  });

  it('an agent whose connection dies mid-epoch aborts that epoch whole; the next one commits', async () => {
    const { store, token } = await initCli(tempDir('vne-srv-agent'));
    const srv = await startServe(store);
    const clients: { vm: string; client: AgentClient }[] = [];
    let opening = '';
    const target = serverTarget(async () => {
      const client = await AgentClient.connect({ server: srv.address, token });
      clients.push({ vm: opening, client });
      return client;
    });
    // The agent of vm1 dies at its third round of epoch 2: its connection closes under it.
    let writes = 0;
    const killing: SnapshotTarget<string> = {
      ...target,
      async beginSession(o) {
        opening = o.vm;
        const s = await target.beginSession(o);
        return {
          ...s,
          async writeScattered(i, b) {
            if (o.group === 'envs-e2' && o.vm === 'vm1' && ++writes === 3) {
              for (const c of clients.filter((x) => x.vm === 'vm1')) await c.client.close();
            }
            return s.writeScattered(i, b);
          },
        };
      },
    };
    try {
      const r = await runEnvironment(runOptions(killing));
      expect(r.reports[1].reason).toMatch(/vm1.*storing failed: .*closed the connection/);
      await expectEpoch2Aborted(r.reports, srv.address, token, target);
    } finally {
      await target.close();
      await srv.stop();
    }
    await expectNothingHeld(store);
  });

  it('a server killed mid-epoch leaves no partial group; restarted, the next epoch commits', async () => {
    const { store, token } = await initCli(tempDir('vne-srv-kill'));
    let srv: ServeProcess = await startServe(store);
    const target = serverTarget(() => AgentClient.connect({ server: srv.address, token }));
    // Mid-epoch 2, at vm2's fourth write: SIGKILL the server, then start it again on the same store.
    let writes = 0;
    let killed = false;
    const killing: SnapshotTarget<string> = {
      ...target,
      async beginSession(o) {
        const s = await target.beginSession(o);
        return {
          ...s,
          async writeScattered(i, b) {
            if (o.group === 'envs-e2' && o.vm === 'vm2' && ++writes === 4) {
              expect((await srv.stop('SIGKILL')).signal).toBe('SIGKILL');
              killed = true;
              srv = await startServe(store);
            }
            return s.writeScattered(i, b);
          },
        };
      },
    };
    try {
      const r = await runEnvironment(runOptions(killing));
      expect(killed).toBe(true);
      await expectEpoch2Aborted(r.reports, srv.address, token, target);
    } finally {
      await target.close();
      await srv.stop();
    }
    await expectNothingHeld(store);
  });

  it('prepared members outlive a server restart; an epoch aborted after it leaves none of them held', async () => {
    const { store, token } = await initCli(tempDir('vne-srv-held'));
    let srv: ServeProcess = await startServe(store);
    const target = serverTarget(() => AgentClient.connect({ server: srv.address, token }));
    // Epoch 2: every VM has prepared when the coordinator opens the channel-state member. Kill the
    // server there and start it again; then make that epoch's group commit fail.
    let restarted = false;
    const killing: SnapshotTarget<string> = {
      ...target,
      async beginSession(o) {
        if (o.group === 'envs-e2' && o.vm === channelMemberName('envs')) {
          await srv.stop('SIGKILL');
          srv = await startServe(store);
          restarted = true;
        }
        return target.beginSession(o);
      },
      async commitGroup(group, ids) {
        if (group === 'envs-e2') {
          // The restarted server adopted the VMs' prepared members: they are still there to commit.
          expect(ids).toHaveLength(MEMBERS.length);
          throw new Error('injected commit failure');
        }
        return target.commitGroup(group, ids);
      },
    };
    try {
      const r = await runEnvironment(runOptions(killing));
      expect(restarted).toBe(true);
      expect(r.reports[1].reason).toMatch(/injected commit failure/);
      await expectEpoch2Aborted(r.reports, srv.address, token, target);
    } finally {
      await target.close();
      await srv.stop();
    }
    await expectNothingHeld(store);
  });

  it('vnstore snapshot --server takes and verifies three epochs, and numbers on from the last group', async () => {
    const root = tempDir('vne-srv-cli');
    const { store, tokenFile } = await initCli(root);
    const env = path.join(root, 'env.json');
    writeFileSync(
      env,
      JSON.stringify({
        name: 'envc',
        seed: 3,
        scenario: { vms: 3, hosts: 2, minPages: 64, sizeRatio: 3, pageMs: 1, bytesPerSec: 40_000, transferMs: 4000 },
      }),
    );
    const srv = await startServe(store);
    try {
      const r = await runCli([
        'snapshot',
        '--env',
        env,
        '--server',
        srv.address,
        '--token-file',
        tokenFile,
        '--epochs',
        '3',
        '--verify-restore',
        '--json',
      ]);
      expect(r.stderr.toString()).toBe('');
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout.toString());
      expect(out.epochs.map((e: { group: string; outcome: string }) => `${e.group} ${e.outcome}`)).toEqual([
        'envc-e1 committed',
        'envc-e2 committed',
        'envc-e3 committed',
      ]);
      expect(
        out.verified.map((v: { group: string; transfersOk: boolean; check: { violations: string[] } }) => [
          v.group,
          v.transfersOk,
          v.check.violations.length,
        ]),
      ).toEqual([
        ['envc-e1', true, 0],
        ['envc-e2', true, 0],
        ['envc-e3', true, 0],
      ]);
      const again = await runCli(['snapshot', '--env', env, '--server', srv.address, '--token-file', tokenFile, '--json']);
      expect(again.code).toBe(0);
      expect(JSON.parse(again.stdout.toString()).epochs.map((e: { group: string }) => e.group)).toEqual(['envc-e4']);
      // The group restore of one epoch through the server: one file per member.
      const rg = await runCli([
        'restore',
        '--group',
        'envc-e2',
        '-o',
        path.join(root, 'e2'),
        '--server',
        srv.address,
        '--token-file',
        tokenFile,
        '--json',
      ]);
      expect(rg.stderr).toBe('');
      expect(rg.code).toBe(0);
    } finally {
      await srv.stop();
    }
    // Its files are exactly what the store itself gives back for the group.
    const store2 = await Store.open(store, { workers: 0 });
    try {
      const images = (await readGroupImages(storeGroupSource(store2), 'envc-e2')) as Map<string, Uint8Array>;
      expect([...images.keys()].sort()).toEqual(['envc.channels', 'vm0', 'vm0.disk', 'vm1', 'vm1.disk', 'vm2', 'vm2.disk']);
      expect(readdirSync(path.join(root, 'e2')).sort()).toEqual([...images.keys()].map((m) => `${m}.img`).sort());
      for (const [m, image] of images) expect(readFileSync(path.join(root, 'e2', `${m}.img`)).equals(Buffer.from(image)), m).toBe(true);
    } finally {
      await store2.close();
    }
  });
});
