#!/usr/bin/env node
// The paper's effect in the simulated VNE (issue 14): completion skew, frames dropped, the longest
// TCP retransmission timeout and the application's stall, with and without synchronised
// stop-and-copy, in both channel modes, as the environment grows and as its VMs' memory sizes
// diverge. Simulated time: the figures are simulated milliseconds, deterministic per seed.
// Run `npm run build` first.
//   node bench/vne.mjs [--seeds 3] [--json]
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { runEnvironment, resumeGroup } = await import(join(root, 'dist', 'coordinator', 'environment-run.js'));
const { MemoryTarget } = await import(join(root, 'dist', 'coordinator', 'target.js'));
const { scenarioSpec } = await import(join(root, 'dist', 'sim', 'scenario.js'));
const { values: args } = parseArgs({ options: { seeds: { type: 'string', default: '3' }, json: { type: 'boolean', default: false } } });
const SEEDS = Number(args.seeds);

// 512 pages at 1 ms a page: the smallest VM's first round takes ~0.5 s, a 16x larger one ~8 s.
const base = { hosts: 2, minPages: 512, pageMs: 1, bytesPerSec: 40_000, transferMs: 40_000 };
const agent = { dirtyThresholdPages: 32, maxRounds: 10, pauseOverheadMs: 10 };
const envs = [
  { label: 'N=2, sizes 1-4x', vms: 2, sizeRatio: 4 },
  { label: 'N=4, sizes 1-4x', vms: 4, sizeRatio: 4 },
  { label: 'N=8, sizes 1-4x', vms: 8, sizeRatio: 4 },
  { label: 'N=4, sizes equal', vms: 4, sizeRatio: 1 },
  { label: 'N=4, sizes 1-16x', vms: 4, sizeRatio: 16 },
];
const modes = [
  { syncStop: false, channels: 'drop' },
  { syncStop: true, channels: 'drop' },
  { syncStop: false, channels: 'hold' },
  { syncStop: true, channels: 'hold' },
];

async function one(env, mode, seed) {
  const spec = scenarioSpec({ ...base, seed, vms: env.vms, sizeRatio: env.sizeRatio, channels: mode.channels, name: 'bench' });
  const target = new MemoryTarget();
  const r = await runEnvironment({ spec, target, epochs: 1, firstAtMs: 1000, gapMs: 0, syncStop: mode.syncStop, timeoutMs: 120_000, agent, limitMs: 600_000 });
  const rep = r.reports[0];
  if (rep.outcome !== 'committed') throw new Error(`epoch aborted: ${rep.reason}`);
  const g = await resumeGroup(spec, target, rep.group, rep.epoch, 600_000);
  if (g.check.violations.length > 0) throw new Error(`inconsistent group: ${g.check.violations[0]}`);
  const ok = r.outcome.transfers.every((t) => t.checksum === t.expected) && g.outcome.transfers.every((t) => t.checksum === t.expected);
  if (!ok) throw new Error('a transfer ended with the wrong checksum');
  const lostLive = r.outcome.datagrams.reduce((n, d) => n + Math.max(0, d.sent - d.received - 1), 0);
  const lostRestored = g.outcome.datagrams.reduce((n, d) => n + Math.max(0, d.sent - d.received - 1), 0);
  return {
    skewMs: rep.skewMs,
    framesDropped: rep.framesDropped,
    framesHeld: rep.framesHeld,
    lostAcrossCut: g.check.lost,
    udpLostLive: lostLive,
    udpLostRestored: lostRestored,
    longestRtoMs: r.outcome.longestRtoMs,
    stallMs: r.outcome.longestStallMs,
    maxDowntimeMs: Math.max(...rep.vms.map((v) => v.downtimeMs)),
    maxDurationMs: Math.max(...rep.vms.map((v) => v.durationMs)),
    rounds: rep.vms.map((v) => v.rounds),
  };
}

/** The same environment with no snapshot: the longest gap the paced transfer has anyway. */
async function undisturbedStall(env, seed) {
  const spec = scenarioSpec({ ...base, seed, vms: env.vms, sizeRatio: env.sizeRatio, channels: 'drop', name: 'bench' });
  const r = await runEnvironment({ spec, target: new MemoryTarget(), epochs: 0, firstAtMs: 0, gapMs: 0, syncStop: false, timeoutMs: 1, agent, limitMs: 600_000 });
  return r.outcome.longestStallMs;
}

const rows = [];
const started = Date.now();
for (const env of envs) {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const baselineStallMs = await undisturbedStall(env, seed);
    for (const mode of modes) rows.push({ env: env.label, seed, baselineStallMs, ...mode, ...(await one(env, mode, seed)) });
  }
}
const seconds = (Date.now() - started) / 1000;
if (args.json) {
  process.stdout.write(JSON.stringify({ seconds, rows }, null, 2) + '\n');
} else {
  const f = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  const range = (xs) => (Math.min(...xs) === Math.max(...xs) ? f(xs[0]) : `${f(Math.min(...xs))}-${f(Math.max(...xs))}`);
  console.log('| environment | sync-stop | channels | skew ms | dropped | held | longest RTO ms | stall ms (undisturbed) | max downtime ms | lost across cut | UDP lost live / after restore |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const env of envs) {
    for (const mode of modes) {
      const rs = rows.filter((r) => r.env === env.label && r.syncStop === mode.syncStop && r.channels === mode.channels);
      const col = (k) => range(rs.map((r) => r[k]));
      console.log(`| ${env.label} | ${mode.syncStop ? 'on' : 'off'} | ${mode.channels} | ${col('skewMs')} | ${col('framesDropped')} | ${col('framesHeld')} | ${col('longestRtoMs')} | ${col('stallMs')} (${col('baselineStallMs')}) | ${col('maxDowntimeMs')} | ${col('lostAcrossCut')} | ${col('udpLostLive')} / ${col('udpLostRestored')} |`);
    }
  }
  console.log('\nsync-stop off / on, per environment, seed and channel mode (smallest ratio over seeds and modes):');
  for (const env of envs) {
    const ratio = (k) => {
      const rs = [];
      for (let seed = 1; seed <= SEEDS; seed++) {
        for (const channels of ['drop', 'hold']) {
          const off = rows.find((r) => r.env === env.label && r.seed === seed && r.channels === channels && !r.syncStop);
          const on = rows.find((r) => r.env === env.label && r.seed === seed && r.channels === channels && r.syncStop);
          rs.push(off[k] / Math.max(on[k], 1e-9));
        }
      }
      return Math.min(...rs).toFixed(1);
    };
    console.log(`  ${env.label}: skew ${ratio('skewMs')}x smaller, stall ${ratio('stallMs')}x smaller`);
  }
  const hs = rows.filter((r) => r.syncStop && r.channels === 'hold');
  console.log(`\nhold + sync-stop: frames dropped ${hs.reduce((n, r) => n + r.framesDropped, 0)}, lost across the cut ${hs.reduce((n, r) => n + r.lostAcrossCut, 0)}, UDP lost live ${hs.reduce((n, r) => n + r.udpLostLive, 0)} and after restore ${hs.reduce((n, r) => n + r.udpLostRestored, 0)}; stall - (max downtime + skew): ${range(hs.map((r) => r.stallMs - r.maxDowntimeMs - r.skewMs))} ms, the undisturbed run's longest gap: ${range(hs.map((r) => r.baselineStallMs))} ms`);
  console.log(`${rows.length} runs in ${seconds.toFixed(1)} s`);
}
