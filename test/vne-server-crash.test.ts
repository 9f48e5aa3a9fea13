/**
 * The coordinator process (`vnstore snapshot --env --server`) SIGKILLed during its run, at points
 * spread over pre-copy rounds, prepares and group commits: the server shows only whole groups,
 * numbered without gaps; the members the dead coordinator had prepared but not committed are
 * never committed, and the server aborts them at its prepared timeout (none is left held in the
 * store); the next run takes the next epoch, commits it and verifies it. With the agents in the
 * coordinator's process, and in `vnstore agent serve` processes that outlive it.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkStore } from '../src/maintenance/check.js';
import { Store } from '../src/store/store.js';
import { CLI, makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { groupsOn } from './helpers/vne-groups.js';
import { startServe, type ServeProcess } from './helpers/serve-process.js';
import { scenarioSpec } from '../src/sim/scenario.js';
import { startAgentProcesses, type AgentProcesses } from '../src/sim/agent-processes.js';

const MEMBERS = ['envk.channels', 'vm0', 'vm0.disk', 'vm1', 'vm1.disk', 'vm2', 'vm2.disk'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const SCENARIO = { vms: 3, hosts: 2, minPages: 128, sizeRatio: 3, pageMs: 1, bytesPerSec: 40_000, transferMs: 6000 };

// `env`: each host's agent in a `vnstore agent serve` process of the test's (which the file names), so
// the coordinator's death leaves agents that must drop what they began for it.
// The two forms run at once: each has its own store, server and agents, and most of its time is
// spent waiting for the coordinators it kills.
describe('coordinator killed during a --server run', () => {
  it.concurrent.each(['in-process', 'env'] as const)(
    'agents %s: leaves every prepared member committed in a whole group or aborted; the next epoch commits',
    { timeout: 300_000 },
    async (agentsForm) => {
      // removed by this test itself: a file-wide afterEach would remove the other running test's
      const root = makeTempDir('vne-srv-coord');
      try {
        const store = path.join(root, 'store');
        const init = await runCli(['init', '--store', store, '--json']);
        expect(init.code).toBe(0);
        const tokenFile = (JSON.parse(init.stdout.toString()) as { tokenFile: string }).tokenFile;
        const token = readFileSync(tokenFile, 'utf8').trim();
        const env = path.join(root, 'env.json');
        const spec = scenarioSpec({ name: 'envk', seed: 4, channels: 'hold', ...SCENARIO });
        const agents: { procs?: AgentProcesses } = {};
        // The environment file; with agent processes, spelled out with each host's agent, started for `server`.
        const writeEnv = async (server: string) => {
          if (agentsForm === 'in-process') return writeFileSync(env, JSON.stringify({ name: 'envk', seed: 4, scenario: SCENARIO }));
          await agents.procs?.stop();
          agents.procs = await startAgentProcesses(spec, CLI, ['--server', server, '--token-file', tokenFile]);
          const hosts = spec.hosts.map((h) => ({ ...h, agent: `127.0.0.1:${agents.procs?.addresses.get(h.name)?.port}` }));
          writeFileSync(
            env,
            JSON.stringify({ name: 'envk', seed: 4, hosts, vms: spec.vms, transfers: spec.transfers, datagrams: spec.datagrams }),
          );
        };
        const stopAgents = async () => {
          await agents.procs?.stop();
          agents.procs = undefined;
        };
        const agentArgs = agentsForm === 'env' ? ['--agents', 'env'] : [];
        let srv: ServeProcess = await startServe(store, ['--prepared-timeout', '2']);
        await writeEnv(srv.address);
        let committed = 0;
        const check = async (label: string) => {
          const groups = await groupsOn(srv.address, token);
          for (const [g, members] of groups) expect(members, `${label}: group ${g}`).toEqual(MEMBERS);
          expect(
            [...groups.keys()].sort((a, b) => Number(a.slice(6)) - Number(b.slice(6))),
            label,
          ).toEqual(Array.from({ length: groups.size }, (_, i) => `envk-e${i + 1}`));
          expect(groups.size, label).toBeGreaterThanOrEqual(committed);
          committed = groups.size;
        };
        try {
          // Fixed points early in a run, then kills timed from a commit seen on the server, so that
          // some land after a commit, in the next epoch's rounds or prepares.
          const points: ({ afterMs: number } | { afterCommitMs: number })[] = [
            { afterMs: 300 },
            { afterMs: 900 },
            { afterCommitMs: 30 },
            { afterCommitMs: 150 },
            { afterCommitMs: 400 },
          ];
          for (const p of points) {
            const child = spawn(
              process.execPath,
              [
                CLI,
                'snapshot',
                '--env',
                env,
                '--server',
                srv.address,
                '--token-file',
                tokenFile,
                '--epochs',
                '6',
                '--interval',
                '50',
                ...agentArgs,
              ],
              { stdio: 'ignore' },
            );
            const exited = new Promise<void>((r) => child.once('exit', () => r()));
            if ('afterMs' in p) await sleep(p.afterMs);
            else {
              const before = committed;
              for (let i = 0; i < 600 && (await groupsOn(srv.address, token)).size <= before; i++) await sleep(25);
              await sleep(p.afterCommitMs);
            }
            child.kill('SIGKILL');
            await exited;
            await check(`killed ${JSON.stringify(p)}`);
          }
          expect(committed, 'no kill came after a commit: the test did not test it').toBeGreaterThan(0);
          await sleep(3000); // past the prepared timeout: the server aborts what the dead coordinators left prepared
        } finally {
          await stopAgents();
          await srv.stop();
        }
        const s = await Store.open(store, { workers: 0 });
        try {
          expect(
            (await s.heldPrepared()).map((h) => h.prepared.record.vm),
            'prepared members left neither committed nor aborted',
          ).toEqual([]);
          expect((await checkStore(s)).problems).toEqual([]);
        } finally {
          await s.close();
        }
        srv = await startServe(store);
        try {
          await writeEnv(srv.address);
          await check('after the server restarted');
          const next = await runCli([
            'snapshot',
            '--env',
            env,
            '--server',
            srv.address,
            '--token-file',
            tokenFile,
            '--verify-restore',
            '--json',
            ...agentArgs,
          ]);
          expect(next.stderr.toString()).toBe('');
          expect(next.code).toBe(0);
          const out = JSON.parse(next.stdout.toString());
          expect(out.epochs.map((e: { group: string; outcome: string }) => [e.group, e.outcome])).toEqual([
            [`envk-e${committed + 1}`, 'committed'],
          ]);
          expect(out.verified[0]).toMatchObject({ transfersOk: true, check: { violations: [], lost: 0 } });
        } finally {
          await stopAgents();
          await srv.stop();
        }
      } finally {
        removeDir(root);
      }
    },
  );
});
