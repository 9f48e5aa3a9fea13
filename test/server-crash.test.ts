/**
 * Crashes around the server: an agent killed mid-session leaves nothing visible; the server
 * SIGKILLed at 50 random points during ingest restarts, and every acknowledged snapshot restores
 * exactly, and each group's members are committed all or none.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { Store } from '../src/store/store.js';
import { checkStore } from '../src/maintenance/check.js';
import { CLI, REPO_ROOT, prng, restoreToBuffer, runCli, tempDirs } from './helpers/engine.js';
import { makeImage, restoreRemote, startServer, TEST_TOKEN } from './helpers/server.js';
import { startServe } from './helpers/serve-process.js';
import { readTokenFile, tokenPath } from '../src/server/token.js';

const tempDir = tempDirs();

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('server crash safety', () => {
  it('an agent killed mid-session leaves nothing visible, and the server goes on', async () => {
    const root = tempDir('agentkill');
    const r = await startServer(root);
    try {
      const img = path.join(root, 'big.mem');
      writeFileSync(img, makeImage(8192, 3)); // 32 MiB: many batches
      const child = spawn(process.execPath, [CLI, 'agent', 'push', '--server', r.address, '--vm', 'victim', img], {
        cwd: REPO_ROOT,
        env: { ...process.env, VNSTORE_TOKEN: TEST_TOKEN },
        stdio: 'ignore',
      });
      const exited = new Promise((res) => child.on('exit', res));
      await waitFor(async () => (await r.server.metrics.pagesReceived.get()).values[0]?.value > 0, 'pages from the agent');
      child.kill('SIGKILL');
      await exited;
      await waitFor(() => r.store.sessions.size === 0, 'the session to be aborted');
      expect(r.server.prepared.size).toBe(0);
      expect(await r.store.listSnapshots()).toEqual([]);
      // The server goes on serving others.
      const c = await r.connect();
      const s = await c.beginSession({ vm: 'other' });
      await s.writePages(0, makeImage(16, 4));
      const rec = await s.commit();
      expect((await restoreRemote(c, rec.id)).equals(makeImage(16, 4))).toBe(true);
    } finally {
      await r.stop();
    }
    const dir = path.join(root, 'store');
    const store = await Store.open(dir, { workers: 0 });
    try {
      expect((await store.listSnapshots()).map((x) => x.vm)).toEqual(['other']);
      expect((await checkStore(store, { readData: true })).ok).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('the server SIGKILLed at 50 random points during ingest: acknowledged snapshots restore exactly, groups all or none', async () => {
    const root = tempDir('srvkill');
    const store = path.join(root, 'store');
    expect((await runCli(['init', '--store', store])).code).toBe(0);
    const token = await readTokenFile(tokenPath(store));
    const seed = Number(process.env.VNSTORE_CRASH_SEED ?? Date.now() % 100_000);
    const rand = prng(seed);
    const acked = new Map<string, Buffer>(); // committed and acknowledged: must restore exactly
    const groups = new Map<string, string[]>(); // group id → members whose prepare was acknowledged
    const groupSize = new Map<string, number>();
    const images = new Map<string, Buffer>();
    const POINTS = Number(process.env.VNSTORE_CRASH_POINTS ?? 50);
    for (let point = 0; point < POINTS; point++) {
      if (process.env.VNSTORE_CRASH_TRACE) console.error(`point ${point} acked ${acked.size}`);
      const srv = await startServe(store, [], {});
      const clients: AgentClient[] = [];
      let stop = false;
      const agent = async (a: number) => {
        const c = await AgentClient.connect({ server: srv.address, token });
        clients.push(c);
        for (let round = 0; !stop; round++) {
          const vm = `p${a}`;
          const image = makeImage(24 + (rand() % 40), point * 100 + a * 10 + round);
          if (a === 0) {
            // A group of two VMs on two connections, committed by this agent as coordinator.
            const group = `g${point}-${round}`;
            groupSize.set(group, 2);
            const c2 = await AgentClient.connect({ server: srv.address, token });
            clients.push(c2);
            const members = await Promise.all(
              [c, c2].map(async (cl, k) => {
                const s = await cl.beginSession({ vm: `grp${k}`, group });
                const img = makeImage(20 + k, point * 100 + round * 3 + k + 50);
                await s.writePages(0, img);
                const p = await s.prepare();
                images.set(p.id, img);
                (groups.get(group) ?? groups.set(group, []).get(group)!).push(p.id);
                return p;
              }),
            );
            const recs = await c.commitPrepared(members, { id: group });
            for (const rec of recs) acked.set(rec.id, images.get(rec.id)!);
          } else {
            const s = await c.beginSession({ vm });
            await s.writePages(0, image);
            const rec = await s.commit({ byteLength: image.length });
            acked.set(rec.id, image);
          }
        }
      };
      const errors: string[] = [];
      // Agents stop at the kill (their requests fail with E_IO); any other error is a finding.
      const work = Promise.all(
        [0, 1, 2].map((a) =>
          agent(a).catch((err: Error & { code?: string }) => void (err.code === 'E_IO' || errors.push(`${err.code}: ${err.message}`))),
        ),
      );
      // A random point during ingest: after a random number of acknowledged commits (0-2), plus a
      // random delay, so kills land before, inside and after commits.
      const before = acked.size;
      const want = before + (rand() % 3);
      await waitFor(
        () => errors.length > 0 || (acked.size >= want && clients.length >= 3),
        'agents connected and commits before the kill',
        30_000,
      ).catch(async (err: Error) => {
        await srv.stop('SIGKILL');
        throw new Error(`${err.message} (point ${point}, seed ${seed}); server log:\n${srv.stderr().slice(-3000)}`);
      });
      await new Promise((r) => setTimeout(r, rand() % 150));
      const exit = await srv.stop('SIGKILL');
      stop = true;
      expect(exit.signal).toBe('SIGKILL');
      await work;
      for (const c of clients) await c.close().catch(() => undefined);
      expect(errors, `point ${point}, seed ${seed}; server log:\n${srv.stderr().slice(-3000)}`).toEqual([]);
    }
    // Restart once more and verify everything acknowledged, through the server and each group's state.
    const srv = await startServe(store);
    try {
      if (process.env.VNSTORE_CRASH_TRACE) console.error('verifying');
      const c = await AgentClient.connect({ server: srv.address, token });
      const listed = new Set((await c.listSnapshots()).map((x) => x.id));
      for (const id of acked.keys()) expect(listed.has(id), `acknowledged snapshot ${id} (seed ${seed})`).toBe(true);
      for (const [group, members] of groups) {
        const committed = members.filter((id) => listed.has(id)).length;
        // A group commit is one batch: never some of its members.
        expect([0, groupSize.get(group)], `group ${group} (seed ${seed})`).toContain(
          committed === members.length ? groupSize.get(group) : committed,
        );
        if (committed > 0) expect(committed).toBe(groupSize.get(group));
      }
      for (const [id, image] of acked) expect((await restoreRemote(c, id)).equals(image), `snapshot ${id} (seed ${seed})`).toBe(true);
      // Groups whose members all prepared but were not committed are still held: commit them now.
      for (const [group, members] of groups) {
        if (members.length !== groupSize.get(group) || members.some((id) => listed.has(id))) continue;
        const recs = await c.commitPrepared(members, { id: group });
        for (const rec of recs) expect((await restoreRemote(c, rec.id)).equals(images.get(rec.id)!)).toBe(true);
      }
      await c.close();
      if (process.env.VNSTORE_CRASH_TRACE) console.error('verified; stopping');
    } finally {
      expect(await srv.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    }
    expect(acked.size).toBeGreaterThan(POINTS);
    const s = await Store.open(store, { workers: 0 });
    try {
      const report = await checkStore(s, { readData: true });
      expect(report.problems, `seed ${seed}`).toEqual([]);
      for (const id of [...acked.keys()].slice(-5))
        expect((await restoreToBuffer(s, await s.resolveSnapshot(id))).equals(acked.get(id)!)).toBe(true);
    } finally {
      await s.close();
    }
  }, 600_000);
});
