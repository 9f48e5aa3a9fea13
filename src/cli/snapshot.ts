/**
 * `vnstore snapshot --env FILE`: coordinated snapshots of a whole environment into a local store.
 * For now the environment is simulated (src/sim): the command runs it under its traffic, takes
 * `--epochs` coordinated snapshots, each committed as one group, and with `--verify-restore` resumes
 * the environment from every committed group read back from the store and checks it. With
 * `--server` every agent has its own connection to `vnstore serve` and the coordinator commits the
 * group there (src/coordinator/server-target.ts).
 */
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import type { EnvSpec } from '../sim/env.js';
import type { UdpNetwork, UdpNetworkOptions } from '../sim/udp-network.js';
import type { AgentFactory, EpochReport } from '../coordinator/executor.js';
import type { Endpoint } from '../switch/udp.js';
import type { Outcome } from '../sim/outcome.js';
import type { ConsistencyReport } from '../coordinator/consistency.js';
import { VnstoreError } from '../util/errors.js';
import type { GroupReader, SnapshotTarget } from '../coordinator/target.js';
import { action, storeOption, usage, withStore } from './common.js';
import { parseCount as count } from './switch.js';
import { addRemoteOptions, connectRemote, serverAddress, type RemoteOptions } from './remote.js';

interface SnapshotCliOptions extends RemoteOptions {
  env: string;
  store?: string;
  epochs: string;
  firstAt: string;
  interval: string;
  syncStop: string;
  channels: string;
  timeout: string;
  dirtyThreshold: string;
  maxRounds: string;
  verifyRestore?: boolean;
  switches: string;
  agents: string;
  json?: boolean;
}

interface Verification {
  group: string;
  check: ConsistencyReport;
  transfersOk: boolean;
  datagrams: Outcome['datagrams'];
}

export function registerSnapshot(program: Command): void {
  const cmd = program
    .command('snapshot')
    .description('coordinated snapshots of a whole environment (all VMs causally consistent), each committed as one group')
    .requiredOption('--env <file>', 'the environment file (JSON; docs/COORDINATION.md): for now a simulated environment')
    .option('--epochs <n>', 'coordinated snapshots to take, one after another', '1')
    .option('--first-at <ms>', 'simulated time of the first snapshot', '1000')
    .option('--interval <ms>', 'simulated time between the end of one snapshot and the start of the next', '1000')
    .option(
      '--sync-stop <on|off>',
      'order every stop-and-copy at once when every VM is ready (off: each VM stops on its own, as in the paper)',
      'on',
    )
    .option(
      '--channels <mode>',
      'frames from post- to pre-snapshot VMs: hold (kept as channel state, nothing lost) or drop (the paper)',
      'hold',
    )
    .option('--timeout <ms>', 'abort an epoch not committing by then (simulated ms from its start)', '120000')
    .option('--dirty-threshold <pages>', 'stop and copy once the dirty set is this small', '32')
    .option('--max-rounds <n>', 'stop and copy after this many pre-copy rounds at the most', '10')
    .option(
      '--switches <where>',
      "in-process (one switch core per simulated host, with a 1 ms tunnel), process (a 'vnstore switch' process per host started on loopback, frames over UDP) or env (the running switches and VM NIC addresses the environment file names)",
      'in-process',
    )
    .option(
      '--agents <where>',
      "in-process (the agents run in this process), process (a 'vnstore agent serve' process per host started on loopback) or env (the running agent processes the environment file names); process and env need --server",
      'in-process',
    )
    .option(
      '--verify-restore',
      'afterwards, resume the environment from every committed group read back from the store, check it and run it to the end',
    )
    .option('--json', 'print {epochs: [EpochReport], live: Outcome, verified: [...]} (docs/COORDINATION.md)')
    .addOption(storeOption());
  addRemoteOptions(cmd, false)
    .addHelpText(
      'after',
      `
Each epoch is one group <env>-e<N> in the store, N counting on from the environment's last
committed group: every VM's memory and disk (<vm>.disk) at its pause and, with
--channels hold, the frames in flight across the cut (<env>.channels). An epoch with a failed or
late VM is aborted whole: nothing of it becomes visible. Times are simulated milliseconds.
With --switches process, the VMs' frames go through one 'vnstore switch' process per host
(UDP on loopback, the tunnel between them); simulated time stands still while frames travel, so
runs stay deterministic, and an epoch whose switch cannot be reached or was restarted aborts.
With --switches env, through the running switches the file names (hosts[].switch, vms[].nic;
each switch started with --peer NAME= the other hosts' names and --port for its VMs' NICs).
With --server, each VM's agent stores through its own connection to 'vnstore serve' and the
coordinator commits the group there (GROUP_COMMIT: all members or none).
With --agents process, each host's VMs are snapshotted by their own 'vnstore agent serve' process
(started on loopback, storing through --server): this process keeps the simulated clock and plays
the VMs' hypervisor, and drives the agents over the control protocol (docs/PROTOCOL.md); an agent
process that is lost aborts the epoch. With --agents env, the agent processes the file names
(hosts[].agent: "HOST:PORT"), started with 'vnstore agent serve --listen HOST:PORT --server ...'.

Examples:
  vnstore snapshot --env env.json --epochs 3 --verify-restore
  vnstore snapshot --env env.json --sync-stop off --channels drop --json
  vnstore snapshot --env env.json --switches process --epochs 3 --verify-restore
  vnstore snapshot --env env.json --server 127.0.0.1:7007 --token-file ~/.vnstore-token --epochs 3
  vnstore snapshot --env env.json --server 127.0.0.1:7007 --token-file t --agents process --switches process
`,
    )
    .action(
      action(async (opts: SnapshotCliOptions) => {
        if (opts.syncStop !== 'on' && opts.syncStop !== 'off')
          throw usage(`--sync-stop takes on or off, got ${JSON.stringify(opts.syncStop)}`);
        if (opts.channels !== 'drop' && opts.channels !== 'hold')
          throw usage(`--channels takes drop or hold, got ${JSON.stringify(opts.channels)}`);
        if (opts.switches !== 'in-process' && opts.switches !== 'process' && opts.switches !== 'env')
          throw usage(`--switches takes in-process, process or env, got ${JSON.stringify(opts.switches)}`);
        if (opts.agents !== 'in-process' && opts.agents !== 'process' && opts.agents !== 'env')
          throw usage(`--agents takes in-process, process or env, got ${JSON.stringify(opts.agents)}`);
        if (opts.agents !== 'in-process' && !serverAddress(opts))
          throw usage(`--agents ${opts.agents} needs --server (or $VNSTORE_SERVER): agent processes store through their own connections`);
        const epochs = count(opts.epochs, '--epochs', 1);
        const { readEnvFile } = await import('../coordinator/env-file.js');
        const spec = await readEnvFile(opts.env, opts.channels);
        if (opts.agents === 'env') (await import('../coordinator/env-file.js')).namedAgents(spec); // before connecting anywhere
        const { runEnvironment, resumeGroup } = await import('../coordinator/environment-run.js');
        await withTarget(opts, async (target, groups) =>
          withNetwork(spec, opts.switches, async (network) =>
            withAgents(spec, opts, target, async (agents) => {
              // Epochs continue after the environment's last committed group (an aborted or
              // interrupted epoch left none), so a rerun after a crash takes the next epoch.
              const prefix = `${spec.name}-e`;
              const last = Math.max(
                0,
                ...groups
                  .filter((g) => g.startsWith(prefix) && /^\d+$/.test(g.slice(prefix.length)))
                  .map((g) => Number(g.slice(prefix.length))),
              );
              const run = await runEnvironment({
                spec,
                target,
                epochs,
                firstEpoch: last + 1,
                firstAtMs: count(opts.firstAt, '--first-at', 0),
                gapMs: count(opts.interval, '--interval', 0),
                network,
                agents,
                syncStop: opts.syncStop === 'on',
                timeoutMs: count(opts.timeout, '--timeout', 1),
                agent: {
                  dirtyThresholdPages: count(opts.dirtyThreshold, '--dirty-threshold', 0),
                  maxRounds: count(opts.maxRounds, '--max-rounds', 1),
                  pauseOverheadMs: 10,
                },
                limitMs: 24 * 3600 * 1000,
              });
              const verified: Verification[] = [];
              if (opts.verifyRestore) {
                for (const rep of run.reports.filter((r) => r.outcome === 'committed')) {
                  const g = await resumeGroup(spec, target, rep.group, rep.epoch, 24 * 3600 * 1000);
                  verified.push({
                    group: rep.group,
                    check: g.check,
                    transfersOk:
                      g.outcome.done &&
                      g.outcome.transfers.every(
                        (t) => t.checksum === t.expected && t.diskChecksum === t.expected && t.received === t.bytes,
                      ),
                    datagrams: g.outcome.datagrams,
                  });
                }
              }
              if (opts.json)
                process.stdout.write(JSON.stringify({ env: spec.name, epochs: run.reports, live: run.outcome, verified }, null, 2) + '\n');
              else process.stdout.write(render(run.reports, run.outcome, verified));
              const aborted = run.reports.find((r) => r.outcome === 'aborted');
              if (aborted) throw new VnstoreError('E_SESSION', `epoch ${aborted.epoch} was aborted: ${aborted.reason}`);
              const failed = verified.find((v) => v.check.violations.length > 0 || !v.transfersOk);
              if (failed)
                throw new VnstoreError(
                  'E_CORRUPT',
                  `group ${failed.group} did not verify: ${failed.check.violations[0] ?? 'a transfer did not end with its checksum'}`,
                );
            }),
          ),
        );
      }),
    );
}

/**
 * The VMs' network: in-process switch cores (none here), a `vnstore switch` process per simulated
 * host started and stopped around `fn` (process), or the running switches the file names (env).
 */
async function withNetwork(spec: EnvSpec, where: string, fn: (network: UdpNetwork | undefined) => Promise<void>): Promise<void> {
  if (where === 'in-process') return fn(undefined);
  const { UdpNetwork } = await import('../sim/udp-network.js');
  const attach = async (options: UdpNetworkOptions) => {
    const network = await UdpNetwork.open(options);
    try {
      await fn(network);
    } finally {
      await network.close();
    }
  };
  if (where === 'env') {
    const { namedNetwork } = await import('../coordinator/env-file.js');
    return attach(namedNetwork(spec));
  }
  const { startSwitchProcesses } = await import('../sim/switch-processes.js');
  const switches = await startSwitchProcesses(spec, fileURLToPath(new URL('./bin.cjs', import.meta.url)));
  try {
    await attach(switches.network);
  } finally {
    await switches.stop();
  }
}

/**
 * The VMs' agents: in this process (undefined), one `vnstore agent serve` per simulated host started
 * on loopback and stopped after `fn` (process), or the running ones the file names (env).
 */
async function withAgents(
  spec: EnvSpec,
  opts: SnapshotCliOptions,
  target: SnapshotTarget,
  fn: (agents: AgentFactory<unknown> | undefined) => Promise<void>,
): Promise<void> {
  if (opts.agents === 'in-process') return fn(undefined);
  const { AgentLink, remoteAgents } = await import('../coordinator/control-link.js');
  const run = async (addresses: Map<string, Endpoint>) => {
    const links = new Map([...addresses].map(([host, addr]) => [host, new AgentLink(host, addr)]));
    try {
      await fn(remoteAgents(links, target as SnapshotTarget<string>) as AgentFactory<unknown>);
    } finally {
      for (const l of links.values()) l.close();
    }
  };
  if (opts.agents === 'env') {
    const { namedAgents } = await import('../coordinator/env-file.js');
    return run(namedAgents(spec));
  }
  const remote = ['--server', serverAddress(opts) as string];
  if (opts.tokenFile) remote.push('--token-file', opts.tokenFile);
  if (opts.tlsCa) remote.push('--tls-ca', opts.tlsCa);
  const { startAgentProcesses } = await import('../sim/agent-processes.js');
  const agents = await startAgentProcesses(spec, fileURLToPath(new URL('./bin.cjs', import.meta.url)), remote);
  try {
    await run(agents.addresses);
  } finally {
    await agents.stop();
  }
}

/** The local store's target or the server's, with the group names committed so far; closed after `fn`. */
async function withTarget(
  opts: SnapshotCliOptions,
  fn: (target: SnapshotTarget & GroupReader, groups: string[]) => Promise<void>,
): Promise<void> {
  const server = serverAddress(opts);
  if (server) {
    const { serverTarget } = await import('../coordinator/server-target.js');
    const target = serverTarget(() => connectRemote(opts, server));
    try {
      await fn(target as SnapshotTarget & GroupReader, await target.listGroupNames());
    } finally {
      await target.close();
    }
    return;
  }
  const { storeTarget } = await import('../coordinator/target.js');
  await withStore(opts, async (store) => {
    const groups = (await store.listSnapshots()).map((r) => r.group).filter((g): g is string => !!g);
    await fn(storeTarget(store) as SnapshotTarget & GroupReader, groups);
  });
}

function render(reports: EpochReport[], live: Outcome, verified: Verification[]): string {
  const ms = (x: number) => `${x.toFixed(1)} ms`;
  const out: string[] = [];
  for (const r of reports) {
    out.push(`epoch ${r.epoch}: group ${r.group} ${r.outcome}${r.reason ? ` (${r.reason})` : ''}`);
    for (const v of r.vms)
      out.push(`  ${v.vm}: ${v.rounds} round(s), duration ${ms(v.durationMs)}, downtime ${ms(v.downtimeMs)}, flip at +${ms(v.flipAtMs)}`);
    out.push(
      `  skew ${ms(r.skewMs)}; frames dropped ${r.framesDropped}, held ${r.framesHeld}, across the cut ${r.framesCrossing} (channel state ${r.channelFrames})`,
    );
  }
  out.push(
    `live run: ${live.transfers.filter((t) => t.checksum === t.expected && t.diskChecksum === t.expected && t.received === t.bytes).length}/${live.transfers.length} transfers ended with their checksum, in memory and on disk; longest RTO ${ms(live.longestRtoMs)}, longest gap between progresses ${ms(live.longestGapMs)}`,
  );
  for (const d of live.datagrams) out.push(`  datagrams ${d.from} -> ${d.to}: ${d.sent} sent, ${d.received} received`);
  for (const v of verified) {
    out.push(
      `restored ${v.group}: ${v.check.violations.length === 0 ? 'consistent' : `INCONSISTENT: ${v.check.violations[0]}`}, ${v.check.lost} frame(s) lost across the cut, transfers ${v.transfersOk ? 'ended with their checksums (memory and disk)' : 'FAILED'}`,
    );
  }
  return out.join('\n') + '\n';
}
