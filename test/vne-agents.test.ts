/**
 * Agents in their own processes (`vnstore agent serve`, one per simulated host), driven over the
 * control protocol by the coordinator, which holds the simulated clock and plays the VMs'
 * hypervisor; the VMs' frames through real `vnstore switch` processes; every member stored through
 * the agents' own connections to a real `vnstore serve`, the group committed by the coordinator.
 * An epoch commits, is consistent and resumes to the transfers' checksums; two runs give the same
 * groups, byte for byte the groups of agents in the coordinator's process; an agent process
 * SIGKILLed at a seeded point of an epoch leaves no partial group, and once restarted the next
 * epoch commits.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import fc from 'fast-check';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { runEnvironment, resumeGroup } from '../src/coordinator/environment-run.js';
import { AgentLink, remoteAgents } from '../src/coordinator/control-link.js';
import { serverTarget } from '../src/coordinator/server-target.js';
import { MemoryTarget, type GroupReader, type SnapshotTarget } from '../src/coordinator/target.js';
import { serveAgents } from '../src/coordinator/agent-process.js';
import {
  checkHello,
  ControlReader,
  ControlType,
  decodeIndices,
  encodeControl,
  encodeIndices,
  helloHeader,
  type ControlFrame,
} from '../src/coordinator/control.js';
import { channelMemberName } from '../src/coordinator/channel-state.js';
import type { EpochReport } from '../src/coordinator/executor.js';
import { AgentClient } from '../src/agent/client.js';
import type { EnvSpec, SimEnv } from '../src/sim/env.js';
import { diskMemberName } from '../src/sim/vm.js';
import { Rng } from '../src/sim/events.js';
import type { Outcome } from '../src/sim/outcome.js';
import { UdpNetwork } from '../src/sim/udp-network.js';
import { startSwitchProcesses, type SwitchProcesses } from '../src/sim/switch-processes.js';
import { startAgentProcesses, type AgentProcesses } from '../src/sim/agent-processes.js';
import { CLI, initStore, makeTempDir, removeDir, runCli, singleErrorLine, tempDirs } from './helpers/engine.js';
import { parseEnv } from '../src/coordinator/env-file.js';
import { groupsOn } from './helpers/vne-groups.js';
import { startServe, type ServeProcess } from './helpers/serve-process.js';
import { KILL_RUN, killSpec } from './helpers/vne-kill.js';

const tempDir = tempDirs();

const spec = (name: string, seed: number, channels: 'drop' | 'hold'): EnvSpec => killSpec(name, seed, channels, 2000);
// The kill cases run two at a time: most of a case's real time is spent waiting for its agent and
// switch processes, each case has its own (and its own environment's groups on the shared server).
vi.setConfig({ maxConcurrency: 2 });
const RUN = KILL_RUN;

interface AgentRun {
  reports: EpochReport[];
  outcome: Outcome;
  groups: Map<string, Map<string, Uint8Array>>;
  reader: GroupReader;
  onServer: Map<string, string[]>;
  events: string[];
}

/**
 * The file's served store (sharedServe), a switch process and an agent process per host; `during`
 * may kill and restart agent processes at simulated times. Groups are read back at the end.
 */
async function agentRun(
  s: EnvSpec,
  o: {
    epochs: number;
    syncStop: boolean;
    during?: (epoch: number, env: SimEnv, agents: AgentProcesses, events: string[], switches: SwitchProcesses) => void;
    /** Then restore the environment from its last committed group and take this many more epochs (a VM died). */
    restoreEpochs?: number;
    /** A store and server of its own (a second run of the same environment, whose groups have the same names). */
    ownServer?: boolean;
  },
): Promise<AgentRun> {
  const own = o.ownServer ? await servedStore() : undefined;
  const { serve, token, tokenFile } = own ?? (await sharedServe());
  const switches = await startSwitchProcesses(s, CLI);
  const agents = await startAgentProcesses(s, CLI, ['--server', serve.address, '--token-file', tokenFile]);
  const network = await UdpNetwork.open(switches.network);
  const target = serverTarget(() => AgentClient.connect({ server: serve.address, token }));
  const links = new Map([...agents.addresses].map(([host, addr]) => [host, new AgentLink(host, addr)]));
  const events: string[] = [];
  try {
    const run = await runEnvironment({
      ...RUN,
      spec: s,
      target,
      network,
      epochs: o.epochs,
      syncStop: o.syncStop,
      agents: remoteAgents(links, target),
      onEpoch: (epoch, env) => o.during?.(epoch, env, agents, events, switches),
      tail: o.restoreEpochs === undefined,
    });
    if (o.restoreEpochs !== undefined) {
      const last = run.reports.filter((r) => r.outcome === 'committed').at(-1) as EpochReport;
      const restored = await runEnvironment({
        ...RUN,
        spec: s,
        target,
        network,
        epochs: o.restoreEpochs,
        firstEpoch: (run.reports.at(-1) as EpochReport).epoch + 1,
        syncStop: o.syncStop,
        agents: remoteAgents(links, target),
        from: { images: (await target.readGroup(last.group)) as Map<string, Uint8Array>, epoch: last.epoch },
      });
      run.reports.push(...restored.reports);
      run.outcome = restored.outcome;
    }
    const groups = new Map<string, Map<string, Uint8Array>>();
    for (const r of run.reports.filter((x) => x.outcome === 'committed'))
      groups.set(r.group, (await target.readGroup(r.group)) as Map<string, Uint8Array>);
    return {
      reports: run.reports,
      outcome: run.outcome,
      groups,
      reader: new MapReader(groups),
      onServer: new Map([...(await groupsOn(serve.address, token))].filter(([g]) => g.startsWith(`${s.name}-e`))),
      events,
    };
  } finally {
    for (const l of links.values()) l.close();
    await target.close();
    await network.close();
    await agents.stop();
    await switches.stop();
    if (own) await stopServed(own);
  }
}

/**
 * One store served by one `vnstore serve` for the whole file (a process start per run saved): every
 * run's environment has a name of its own, so its groups are its own.
 */
let shared: Promise<Served> | undefined;
const sharedServe = () => (shared ??= servedStore());
afterAll(async () => {
  if (shared) await stopServed(await shared);
});

interface Served {
  serve: ServeProcess;
  token: string;
  tokenFile: string;
  root: string;
}

async function servedStore(): Promise<Served> {
  const root = makeTempDir('vne-agents');
  const store = path.join(root, 'store');
  const init = await runCli(['init', '--store', store, '--json']);
  expect(init.code).toBe(0);
  const tokenFile = (JSON.parse(init.stdout.toString()) as { tokenFile: string }).tokenFile;
  return { serve: await startServe(store), token: readFileSync(tokenFile, 'utf8').trim(), tokenFile, root };
}

async function stopServed(s: Served): Promise<void> {
  await s.serve.stop();
  removeDir(s.root);
}

class MapReader implements GroupReader {
  constructor(private readonly groups: Map<string, Map<string, Uint8Array>>) {}
  async readGroup(id: string) {
    return this.groups.get(id);
  }
}

function members(s: EnvSpec): string[] {
  return [...(s.channels === 'hold' ? [channelMemberName(s.name)] : []), ...s.vms.flatMap((v) => [v.name, diskMemberName(v.name)])].sort();
}

/**
 * Every committed group is whole, consistent, loses nothing in hold mode, and resumes to the checksums.
 * `wireLoss`: a switch was dead for a while, and frames sent into it were lost on the wire, before any
 * cut (TCP repairs them); the checker cannot tell those from frames lost across a cut, so its count is
 * not held to 0 then.
 */
async function expectGroupsSound(s: EnvSpec, r: AgentRun, wireLoss = false): Promise<void> {
  const committed = r.reports.filter((x) => x.outcome === 'committed').map((x) => x.group);
  expect([...r.onServer.keys()].sort(), 'the groups the server holds').toEqual([...committed].sort());
  for (const rep of r.reports.filter((x) => x.outcome === 'committed')) {
    expect(r.onServer.get(rep.group), rep.group).toEqual(members(s));
    const g = await resumeGroup(s, r.reader, rep.group, rep.epoch, 600_000);
    expect(g.check.violations, rep.group).toEqual([]);
    if (s.channels === 'hold' && !wireLoss) expect(g.check.lost, `${rep.group}: hold mode loses nothing across the cut`).toBe(0);
    expect(g.outcome.done, rep.group).toBe(true);
    for (const t of g.outcome.transfers)
      expect([t.checksum, t.diskChecksum], `${rep.group} ${t.from}->${t.to}`).toEqual([t.expected, t.expected]);
  }
}

describe('agents in their own processes', () => {
  it(
    'commit consistent groups, the same on two runs and byte for byte those of agents in the coordinator',
    { timeout: 180_000 },
    async () => {
      const s = spec('pa', 8, 'hold');
      const a = await agentRun(s, { epochs: 2, syncStop: true });
      expect(a.reports.map((r) => `${r.group} ${r.outcome}`)).toEqual(['pa-e1 committed', 'pa-e2 committed']);
      expect(a.reports.every((r) => r.channelFrames >= 0 && r.framesDropped === 0)).toBe(true);
      await expectGroupsSound(s, a);
      expect(a.outcome.done).toBe(true);
      for (const t of a.outcome.transfers) expect(t.checksum, 'the live run').toBe(t.expected);

      const b = await agentRun(s, { epochs: 2, syncStop: true, ownServer: true });
      expect(b.reports).toEqual(a.reports);

      // The same environment with the agents in this process, over switch processes as well.
      const switches = await startSwitchProcesses(s, CLI);
      const network = await UdpNetwork.open(switches.network);
      const local = new MemoryTarget();
      try {
        const c = await runEnvironment({ ...RUN, spec: s, target: local, network, epochs: 2, syncStop: true });
        expect(c.reports).toEqual(a.reports);
      } finally {
        await network.close();
        await switches.stop();
      }
      for (const [g, images] of a.groups)
        for (const [m, image] of images) {
          expect(Buffer.from(image).equals(Buffer.from(b.groups.get(g)?.get(m) as Uint8Array)), `second run ${g}/${m}`).toBe(true);
          expect(Buffer.from(image).equals(Buffer.from(local.groups.get(g)?.get(m) as Uint8Array)), `in-process ${g}/${m}`).toBe(true);
        }
      // the live run to its end too: every settle counts every frame, on a loaded machine as well
      expect(b.outcome, 'the second live run').toEqual(a.outcome);
    },
  );
});

interface KillCase {
  seed: number;
  channels: 'drop' | 'hold';
  syncStop: boolean;
  /** Kill between two instants of the simulation, or in the middle of one (a real-time delay into the agents' work). */
  midTurn: boolean;
  /** The kill's simulated time after epoch 2 starts is drawn from this range. */
  window: [number, number];
  /** The whole host: its switch process is killed with its agent process (and both restarted). */
  host?: boolean;
}

const KILLS: KillCase[] = [
  { seed: 1, channels: 'hold', syncStop: true, midTurn: false, window: [0, 500] },
  { seed: 2, channels: 'drop', syncStop: true, midTurn: true, window: [0, 500] },
  { seed: 3, channels: 'hold', syncStop: false, midTurn: true, window: [0, 500] },
  // late: once every VM has prepared, the group commits whole without the dead agent
  { seed: 4, channels: 'hold', syncStop: true, midTurn: true, window: [500, 900] },
  // a whole host: its agent process and its switch process, at once
  { seed: 5, channels: 'hold', syncStop: true, midTurn: false, window: [0, 500], host: true },
  { seed: 6, channels: 'drop', syncStop: false, midTurn: true, window: [0, 500], host: true },
  { seed: 7, channels: 'hold', syncStop: true, midTurn: true, window: [500, 900], host: true },
];

describe('an agent process (or its whole host: agent and switch) SIGKILLed mid-epoch', () => {
  it.concurrent.each(KILLS)(
    'seed $seed, $channels, sync-stop $syncStop, mid-turn $midTurn, whole host $host: no partial group; restarted, the next epoch commits',
    { timeout: 180_000 },
    async (c) => {
      const s = spec(`ak${c.seed}`, c.seed, c.channels);
      const rng = new Rng(c.seed * 7919);
      // A seeded point of epoch 2 (about 400-1000 simulated ms here); restarted 150 simulated ms later.
      const killAt = Math.round(rng.range(...c.window));
      const realDelayMs = c.midTurn ? Math.round(rng.range(0, 40)) : 0;
      const r = await agentRun(s, {
        // a whole host's kill may fall between epochs 2 and 3: epoch 4 then is the first after the restart
        epochs: c.host ? 4 : 3,
        syncStop: c.syncStop,
        during: (epoch, env, agents, events, switches) => {
          if (epoch !== 2) return;
          let killed: Promise<void> = Promise.resolve();
          const kill = async () => {
            await Promise.all([agents.kill('h1'), c.host ? switches.kill('h1') : undefined]);
          };
          env.clock.after(killAt, () => {
            events.push(`kill at ${env.clock.now.toFixed(0)}`);
            killed = c.midTurn ? new Promise((done) => setTimeout(() => void kill().then(done), realDelayMs)) : kill();
            if (!c.midTurn) return killed;
            return undefined;
          });
          env.clock.after(killAt + 150, async () => {
            await killed;
            events.push(`restart at ${env.clock.now.toFixed(0)}`);
            if (c.host) await switches.start('h1');
            await agents.start('h1');
          });
        },
      });
      const [e1, e2] = r.reports;
      const restartAt = e2.startedAt + killAt + 150;
      expect(r.events).toEqual([`kill at ${(e2.startedAt + killAt).toFixed(0)}`, `restart at ${restartAt.toFixed(0)}`]);
      expect(e1.outcome, e1.reason).toBe('committed');
      const died = c.host ? /agent process h1|switch h1|flip|port unreachable/ : /agent process h1/;
      if (e2.outcome === 'aborted') expect(e2.reason).toMatch(died);
      else expect(Math.max(...e2.vms.map((v) => v.durationMs)), 'committed: every VM had prepared before the kill').toBeLessThan(killAt);
      // An epoch that started while the host was down aborts; the first one after the restart commits.
      const after = r.reports.filter((x) => x.epoch > 2 && x.startedAt > restartAt);
      expect(after.length, 'an epoch started after the restart').toBeGreaterThan(0);
      expect(after[0].outcome, after[0].reason).toBe('committed');
      for (const x of r.reports.filter((y) => y.epoch > 2 && y.startedAt <= restartAt))
        expect(x.reason ?? '', `epoch ${x.epoch}`).toMatch(died);
      await expectGroupsSound(s, r, c.host);
      // The live run, through the agent's death, still ends every transfer with its checksum.
      expect(r.outcome.done).toBe(true);
      for (const t of r.outcome.transfers) expect(t.checksum).toBe(t.expected);
    },
  );
});

// Early kills (epoch 2 lasts about 350-500 simulated ms here), so that epoch 2 aborts.
const VM_KILLS = [
  { seed: 1, channels: 'hold' as const, syncStop: true, window: [0, 300] as [number, number] },
  { seed: 2, channels: 'drop' as const, syncStop: false, window: [0, 300] as [number, number] },
  { seed: 3, channels: 'hold' as const, syncStop: false, window: [0, 300] as [number, number] },
];

describe('a VM killed mid-epoch under agent processes (its hypervisor side dies)', () => {
  it.concurrent.each(VM_KILLS)(
    'seed $seed, $channels, sync-stop $syncStop: epoch 2 aborts; restored from the last group, the next epoch commits',
    { timeout: 180_000 },
    async (c) => {
      const s = spec(`av${c.seed}`, c.seed, c.channels);
      const rng = new Rng(c.seed * 7919);
      const killAt = Math.round(rng.range(...c.window));
      const victim = s.vms[rng.int(s.vms.length)].name;
      const r = await agentRun(s, {
        epochs: 2,
        syncStop: c.syncStop,
        restoreEpochs: 1,
        during: (epoch, env, _agents, events) => {
          if (epoch !== 2) return;
          env.clock.after(killAt, () => {
            events.push(`kill ${victim} at ${env.clock.now.toFixed(0)}`);
            env.killVm(victim);
          });
        },
      });
      const [e1, e2, e3] = r.reports;
      expect(r.events).toEqual([`kill ${victim} at ${(e2.startedAt + killAt).toFixed(0)}`]);
      expect(e1.outcome, e1.reason).toBe('committed');
      expect(e2.outcome).toBe('aborted');
      // the agent (in its process) reports the hypervisor's failure, and the epoch aborts
      expect(e2.reason).toMatch(new RegExp(`^${victim}: .* failed: hypervisor: VM ${victim} is gone: its hypervisor process died`));
      expect(e3.outcome, e3.reason).toBe('committed');
      await expectGroupsSound(s, r);
      // the environment restored from epoch 1's group ends every transfer right
      expect(r.outcome.done).toBe(true);
      for (const t of r.outcome.transfers) expect(t.checksum).toBe(t.expected);
    },
  );
});

describe('vnstore snapshot --agents', () => {
  const ENV = {
    name: 'cli',
    seed: 6,
    hosts: [
      { name: 'h0', pageMs: 1 },
      { name: 'h1', pageMs: 1.5 },
    ],
    vms: [
      { name: 'a', host: 'h0', pages: 256, dirtyPerSec: 200, hotPages: 24, commonPages: 64 },
      { name: 'b', host: 'h1', pages: 128, dirtyPerSec: 100, hotPages: 16, commonPages: 64 },
      { name: 'c', host: 'h1', pages: 64, dirtyPerSec: 80, hotPages: 8, commonPages: 32 },
    ],
    transfers: [
      { from: 'a', to: 'b', bytes: 60_000, bytesPerSec: 0 },
      { from: 'c', to: 'a', bytes: 40_000, bytesPerSec: 20_000 },
    ],
    datagrams: [{ from: 'b', to: 'c', everyMs: 20 }],
    linkBytesPerSec: 200_000,
  };
  type Out = {
    epochs: { group: string; outcome: string }[];
    live: Outcome;
    verified: { group: string; check: { violations: string[]; lost: number }; transfersOk: boolean }[];
  };

  it(
    'process: an agent process per host, over switch processes, through the server; env: the agents the file names',
    { timeout: 180_000 },
    async () => {
      const root = tempDir('vne-agents-cli');
      const store = path.join(root, 'store');
      const init = await runCli(['init', '--store', store, '--json']);
      const tokenFile = (JSON.parse(init.stdout.toString()) as { tokenFile: string }).tokenFile;
      const serve = await startServe(store);
      const envFile = path.join(root, 'env.json');
      writeFileSync(envFile, JSON.stringify(ENV));
      const remote = ['--server', serve.address, '--token-file', tokenFile];
      try {
        const r = await runCli([
          'snapshot',
          '--env',
          envFile,
          ...remote,
          '--agents',
          'process',
          '--switches',
          'process',
          '--epochs',
          '2',
          '--first-at',
          '200',
          '--interval',
          '200',
          '--verify-restore',
          '--json',
        ]);
        expect(r.stderr.toString()).toBe('');
        expect(r.code).toBe(0);
        const out = JSON.parse(r.stdout.toString()) as Out;
        expect(out.epochs.map((e) => `${e.group} ${e.outcome}`)).toEqual(['cli-e1 committed', 'cli-e2 committed']);
        expect(out.verified.map((v) => [v.group, v.check.violations, v.check.lost, v.transfersOk])).toEqual([
          ['cli-e1', [], 0, true],
          ['cli-e2', [], 0, true],
        ]);
        // the agents the file names, already running; the next run numbers on from the server's groups
        const agents = await startAgentProcesses(parseEnv(ENV, 'hold'), CLI, remote);
        try {
          const named = { ...ENV, hosts: ENV.hosts.map((h) => ({ ...h, agent: `127.0.0.1:${agents.addresses.get(h.name)?.port}` })) };
          writeFileSync(envFile, JSON.stringify(named));
          const e = await runCli([
            'snapshot',
            '--env',
            envFile,
            ...remote,
            '--agents',
            'env',
            '--first-at',
            '200',
            '--verify-restore',
            '--json',
          ]);
          expect(e.stderr.toString()).toBe('');
          expect(e.code).toBe(0);
          const eo = JSON.parse(e.stdout.toString()) as Out;
          expect(eo.epochs.map((x) => `${x.group} ${x.outcome}`)).toEqual(['cli-e3 committed']);
          expect(eo.verified.map((v) => [v.group, v.check.violations, v.transfersOk])).toEqual([['cli-e3', [], true]]);
        } finally {
          await agents.stop();
        }
        // an agent address where nothing listens: the epoch aborts (exit 12) and leaves no group
        const dead = { ...ENV, hosts: ENV.hosts.map((h) => ({ ...h, agent: '127.0.0.1:1' })) };
        writeFileSync(envFile, JSON.stringify(dead));
        const d = await runCli(['snapshot', '--env', envFile, ...remote, '--agents', 'env', '--first-at', '200']);
        expect(d.code).toBe(12);
        expect(singleErrorLine(d.stderr.toString())).toMatch(/epoch 4 was aborted: \w+: cannot reach agent process h\d at 127\.0\.0\.1:1/);
        const token = readFileSync(tokenFile, 'utf8').trim();
        expect([...(await groupsOn(serve.address, token)).keys()].sort()).toEqual(['cli-e1', 'cli-e2', 'cli-e3']);
      } finally {
        await serve.stop();
      }
    },
  );

  it('refuses agent processes without a server, and an environment that names no agent, in one line', async () => {
    const root = tempDir('vne-agents-cli-err');
    const store = await initStore(root);
    const envFile = path.join(root, 'env.json');
    writeFileSync(envFile, JSON.stringify(ENV));
    const r = await runCli(['snapshot', '--env', envFile, '--store', store, '--agents', 'process'], { env: { VNSTORE_SERVER: undefined } });
    expect(r.code).toBe(2);
    expect(singleErrorLine(r.stderr.toString())).toMatch(/--agents process needs --server/);
    const bad = await runCli(['snapshot', '--env', envFile, '--store', store, '--agents', 'elsewhere']);
    expect(bad.code).toBe(2);
    expect(singleErrorLine(bad.stderr.toString())).toMatch(/--agents takes in-process, process or env, got "elsewhere"/);
    const none = await runCli(['snapshot', '--env', envFile, '--agents', 'env', '--server', '127.0.0.1:1'], {
      env: { VNSTORE_TOKEN: 'x' },
    });
    expect(none.code).toBe(10);
    expect(singleErrorLine(none.stderr.toString())).toMatch(/--agents env: host h0 names no "agent": "HOST:PORT"/);
  });
});

describe('the control protocol', () => {
  it('frames round-trip whole and split at any byte (property), with exact bytes', () => {
    const types = Object.values(ControlType);
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            type: fc.constantFrom(...types),
            header: fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string(), fc.integer(), fc.boolean())),
            payload: fc.uint8Array({ maxLength: 300 }),
          }),
          { maxLength: 6 },
        ),
        fc.array(fc.nat(2000), { maxLength: 5 }),
        (frames, cuts) => {
          const bytes = Buffer.concat(frames.map((f) => encodeControl(f.type, f.header, f.payload)));
          const reader = new ControlReader();
          const got: ControlFrame[] = [];
          let at = 0;
          for (const c of [...cuts.map((x) => x % (bytes.length + 1)).sort((a, b) => a - b), bytes.length]) {
            if (c < at) continue;
            got.push(...reader.push(bytes.subarray(at, c)));
            at = c;
          }
          expect(got.map((g) => ({ type: g.type, header: g.header, payload: Buffer.from(g.payload) }))).toEqual(
            frames.map((f) => ({ type: f.type, header: JSON.parse(JSON.stringify(f.header)), payload: Buffer.from(f.payload) })),
          );
        },
      ),
    );
    // u32 length 15 | type 8 | u32 JSON length 8 | {"ms":5} | payload, exactly
    expect(encodeControl(ControlType.TIMER, { ms: 5 }, Uint8Array.of(1, 2)).toString('hex')).toBe(
      '0000000f' + '08' + '00000008' + Buffer.from('{"ms":5}').toString('hex') + '0102',
    );
    expect(decodeIndices(encodeIndices([0, 1, 4_294_967_295]))).toEqual([0, 1, 4_294_967_295]);
    expect(() => new ControlReader().push(Buffer.from('0000000409000000', 'hex'))).toThrow(/length 4 out of range/);
    expect(() => new ControlReader().push(Buffer.from('000000056300000000', 'hex'))).toThrow(/unknown control frame type 99/);
    expect(() => checkHello({ magic: 'VNCT', min: 2, max: 3 })).toThrow(/versions 2-3 offered; this agent speaks 1/);
  });

  it(
    'an agent refuses a HELLO of another version, and drops its sessions when its coordinator goes away',
    { timeout: 30_000 },
    async () => {
      const target = new MemoryTarget();
      const server = await serveAgents({ host: '127.0.0.1', port: 0 }, target as unknown as SnapshotTarget<string>);
      const talk = async (first: Buffer): Promise<{ sock: net.Socket; frames: ControlFrame[]; closed: Promise<void> }> => {
        const sock = net.connect(server.address.port, server.address.host);
        const reader = new ControlReader();
        const frames: ControlFrame[] = [];
        sock.on('data', (d: Buffer) => frames.push(...reader.push(d)));
        const closed = new Promise<void>((r) => sock.once('close', () => r()));
        await new Promise<void>((r) => sock.once('connect', () => r()));
        sock.write(first);
        return { sock, frames, closed };
      };
      try {
        const old = await talk(encodeControl(ControlType.HELLO, { magic: 'VNCT', min: 7, max: 9 }));
        await old.closed;
        expect(old.frames.map((f) => [f.type, f.header.code])).toEqual([[ControlType.ERROR, 'E_FORMAT_VERSION']]);

        const c = await talk(encodeControl(ControlType.HELLO, helloHeader()));
        const begin = { turn: 1, at: 0, vm: 'v', kind: 'begin', group: 'g', epoch: 1, syncStop: true, pages: 16, diskBytes: 4096 };
        c.sock.write(
          encodeControl(ControlType.TURN, { ...begin, dirtyThresholdPages: 4, maxRounds: 3, pauseOverheadMs: 1, pageMs: 1, tickMs: 10 }),
        );
        // the agent opened the memory and disk sessions and now asks the hypervisor for the dirty log
        await expect
          .poll(() => c.frames.map((f) => f.header.op ?? f.type), { timeout: 10_000 })
          .toEqual([ControlType.WELCOME, 'take-dirty']);
        expect(target.openSessions).toBe(2);
        c.sock.destroy();
        await expect.poll(() => target.openSessions, { timeout: 10_000 }).toBe(0);
      } finally {
        await server.close();
      }
    },
  );
});
