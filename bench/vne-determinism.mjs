#!/usr/bin/env node
// Is a run over `vnstore switch` processes the same function of its seed on a loaded machine
// (issue 14)? Runs test/vne-switch-kill.test.ts's determinism scenario (4 VMs, 2 hosts, hold mode,
// sync-stop, 2 epochs) `--runs` times, optionally beside `--burn` busy-loop processes that starve
// the switches of CPU, and prints per run: wall time, a digest of the epochs' reports, of the live
// run's outcome and of the groups' bytes, and how many frames were handed to a VM at a later
// simulated instant than the one they were sent at (0 when every settle counted right: frames
// cross hosts in no simulated time, and this scenario holds none). Run `npm run build` first.
//   node bench/vne-determinism.mjs [--runs 5] [--seed 8] [--burn 2]
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'dist', 'cli', 'bin.cjs');
const load = async (m) => import(join(root, 'dist', m));
const { scenarioSpec } = await load('sim/scenario.js');
const { runEnvironment } = await load('coordinator/environment-run.js');
const { MemoryTarget } = await load('coordinator/target.js');
const { startSwitchProcesses } = await load('sim/switch-processes.js');
const { UdpNetwork } = await load('sim/udp-network.js');

const { values: args } = parseArgs({
  options: { runs: { type: 'string', default: '5' }, seed: { type: 'string', default: '8' }, burn: { type: 'string', default: '0' } },
});
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const digest = (x) => createHash('sha256').update(x).digest('hex').slice(0, 10);
const burners = Array.from({ length: Number(args.burn) }, () => spawn(process.execPath, ['-e', 'for(;;);'], { stdio: 'ignore' }));

const spec = scenarioSpec({
  name: 'det',
  seed: Number(args.seed),
  vms: 4,
  hosts: 2,
  minPages: 64,
  sizeRatio: 3,
  pageMs: 2,
  channels: 'hold',
  bytesPerSec: 20_000,
  transferMs: 2000,
});
const rows = [];
try {
  for (let i = 0; i < Number(args.runs); i++) {
    const t0 = Date.now();
    const switches = await startSwitchProcesses(spec, cli);
    const network = await UdpNetwork.open(switches.network);
    // Each frame's send instant, to tell one handed over at another instant.
    let env;
    const sentAt = new Map();
    let later = 0;
    const send = network.send.bind(network);
    network.send = (vm, frame) => {
      sentAt.set(Buffer.from(frame).toString('hex'), env.clock.now);
      send(vm, frame);
    };
    const connect = network.connect.bind(network);
    network.connect = (deliver) =>
      connect((vm, frame) => {
        if (sentAt.get(Buffer.from(frame).toString('hex')) !== env.clock.now) later++;
        deliver(vm, frame);
      });
    const target = new MemoryTarget();
    try {
      const run = await runEnvironment({
        spec,
        target,
        network,
        epochs: 2,
        firstAtMs: 300,
        gapMs: 300,
        syncStop: true,
        timeoutMs: 60_000,
        agent: { dirtyThresholdPages: 24, maxRounds: 8, pauseOverheadMs: 5 },
        limitMs: 600_000,
        onEnv: (e) => (env = e),
      });
      const groups = createHash('sha256');
      for (const r of run.reports)
        for (const [m, image] of [...(target.groups.get(r.group) ?? new Map())].sort(([a], [b]) => (a < b ? -1 : 1))) {
          groups.update(m);
          groups.update(image);
        }
      const row = {
        run: i,
        wallMs: Date.now() - t0,
        outcomes: run.reports.map((r) => r.outcome).join(','),
        reports: digest(JSON.stringify(run.reports)),
        outcome: digest(JSON.stringify(run.outcome)),
        groups: groups.digest('hex').slice(0, 10),
        framesLater: later,
        loadavg: loadavg(),
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    } finally {
      await network.close();
      await switches.stop();
    }
  }
} finally {
  for (const b of burners) b.kill('SIGKILL');
}
const same = (k) => new Set(rows.map((r) => r[k])).size === 1;
console.log(
  JSON.stringify({
    seed: Number(args.seed),
    burn: Number(args.burn),
    runs: rows.length,
    sameReports: same('reports'),
    sameOutcome: same('outcome'),
    sameGroups: same('groups'),
  }),
);
