#!/usr/bin/env node
// What agents in their own processes cost in wall time (issue 14): the same seeded environment run
// with its agents in this process and in `vnstore agent serve` processes (one per host), both over
// `vnstore switch` processes and storing through one `vnstore serve` child, alternated `--repeats`
// times. Simulated figures are the same in both (checked here); only the wall time differs. Run
// `npm run build` first.
//   node bench/vne-agents.mjs [--repeats 3] [--vms 4] [--epochs 2]
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli', 'bin.cjs');
const load = async (m) => import(join(root, 'dist', m));
const { scenarioSpec } = await load('sim/scenario.js');
const { runEnvironment } = await load('coordinator/environment-run.js');
const { startSwitchProcesses } = await load('sim/switch-processes.js');
const { startAgentProcesses } = await load('sim/agent-processes.js');
const { UdpNetwork } = await load('sim/udp-network.js');
const { AgentLink, remoteAgents } = await load('coordinator/control-link.js');
const { serverTarget } = await load('coordinator/server-target.js');
const { AgentClient } = await load('agent/client.js');

const { values: args } = parseArgs({
  options: { repeats: { type: 'string', default: '3' }, vms: { type: 'string', default: '4' }, epochs: { type: 'string', default: '2' } },
});
const dir = mkdtempSync(join(tmpdir(), 'vne-agents-bench-'));
const store = join(dir, 'store');
const { tokenFile } = JSON.parse(execFileSync(process.execPath, [cli, 'init', '--store', store, '--json']).toString());
const token = readFileSync(tokenFile, 'utf8').trim();
const serve = spawn(process.execPath, [cli, 'serve', '--store', store, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
const address = await new Promise((resolve) => {
  let out = '';
  serve.stdout.on('data', (d) => {
    out += d;
    const m = /^listening (\S+)$/m.exec(out);
    if (m) resolve(m[1]);
  });
});

async function once(name, agentsInProcesses) {
  const spec = scenarioSpec({
    name,
    seed: 8,
    vms: Number(args.vms),
    hosts: 2,
    minPages: 64,
    sizeRatio: 3,
    pageMs: 2,
    channels: 'hold',
    bytesPerSec: 20_000,
    transferMs: 2000,
  });
  const switches = await startSwitchProcesses(spec, cli);
  const network = await UdpNetwork.open(switches.network);
  const target = serverTarget(() => AgentClient.connect({ server: address, token }));
  const agents = agentsInProcesses ? await startAgentProcesses(spec, cli, ['--server', address, '--token-file', tokenFile]) : undefined;
  const links = new Map([...(agents?.addresses ?? [])].map(([host, a]) => [host, new AgentLink(host, a)]));
  try {
    const t0 = process.hrtime.bigint();
    const run = await runEnvironment({
      spec,
      target,
      network,
      epochs: Number(args.epochs),
      firstAtMs: 300,
      gapMs: 300,
      syncStop: true,
      timeoutMs: 60_000,
      agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
      limitMs: 600_000,
      agents: agents ? remoteAgents(links, target) : undefined,
    });
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (!run.reports.every((r) => r.outcome === 'committed')) throw new Error(`an epoch aborted: ${run.reports.map((r) => r.reason)}`);
    const rounds = run.reports.reduce((n, r) => n + r.vms.reduce((m, v) => m + v.rounds, 0), 0);
    const figures = run.reports.map((r) => ({ skew: r.skewMs, vms: r.vms, channelFrames: r.channelFrames }));
    return { seconds, rounds, simulatedMs: run.outcome.finishedAtMs, figures };
  } finally {
    for (const l of links.values()) l.close();
    await target.close();
    await network.close();
    await agents?.stop();
    await switches.stop();
  }
}

const rows = [];
try {
  for (let i = 0; i < Number(args.repeats); i++) {
    const local = await once(`l${i}`, false);
    const remote = await once(`r${i}`, true);
    if (JSON.stringify(local.figures) !== JSON.stringify(remote.figures)) throw new Error('the two forms gave different simulated figures');
    rows.push({ local, remote });
    console.log(
      `repeat ${i + 1}: in-process agents ${local.seconds.toFixed(2)} s, agent processes ${remote.seconds.toFixed(2)} s (${(remote.seconds / local.seconds).toFixed(2)}x); ${remote.rounds} agent rounds, ${remote.simulatedMs.toFixed(0)} simulated ms, same figures`,
    );
  }
} finally {
  serve.kill('SIGTERM');
  await new Promise((r) => serve.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
const ratios = rows.map((r) => r.remote.seconds / r.local.seconds).sort((a, b) => a - b);
console.log(
  `agent processes / in-process agents, wall time: median ${ratios[Math.floor(ratios.length / 2)].toFixed(2)}x (${ratios.map((x) => x.toFixed(2)).join(', ')})`,
);
