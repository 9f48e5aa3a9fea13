#!/usr/bin/env node
// The paper's effect in the simulated VNE (issue 14): completion skew, frames dropped, the longest
// TCP retransmission timeout and the application's stall, with and without synchronised
// stop-and-copy, in both channel modes, as the environment grows and as its VMs' memory sizes
// diverge. Simulated time: the figures are simulated milliseconds, deterministic per seed.
// The application is a bulk transfer (as the paper's BitTorrent) over 200 kB/s paths; see
// src/coordinator/vne-bench.ts. Run `npm run build` first.
//   node bench/vne.mjs [--seeds 3] [--json]
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// The environments, seeds and settings live in src/coordinator/vne-bench.ts, shared with
// test/vne-claims.test.ts, which asserts this table's claims on the same simulations.
const {
  BENCH_ENVS: envs,
  BENCH_MODES: modes,
  BENCH_SEEDS,
  benchRun,
  undisturbedStall,
} = await import(join(root, 'dist', 'coordinator', 'vne-bench.js'));
const { values: args } = parseArgs({
  options: { seeds: { type: 'string', default: String(BENCH_SEEDS.length) }, json: { type: 'boolean', default: false } },
});
const SEEDS = Number(args.seeds);

const one = (env, mode, seed) => benchRun(env, mode, seed, { resume: true });

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
  console.log(
    '| environment | sync-stop | channels | skew ms | dropped | held | longest RTO ms | stall ms (undisturbed) | max downtime ms | lost across cut | UDP lost live / after restore |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const env of envs) {
    for (const mode of modes) {
      const rs = rows.filter((r) => r.env === env.label && r.syncStop === mode.syncStop && r.channels === mode.channels);
      const col = (k) => range(rs.map((r) => r[k]));
      console.log(
        `| ${env.label} | ${mode.syncStop ? 'on' : 'off'} | ${mode.channels} | ${col('skewMs')} | ${col('framesDropped')} | ${col('framesHeld')} | ${col('longestRtoMs')} | ${col('stallMs')} (${col('baselineStallMs')}) | ${col('maxDowntimeMs')} | ${col('lostAcrossCut')} | ${col('udpLostLive')} / ${col('udpLostRestored')} |`,
      );
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
  console.log(
    `\nhold + sync-stop: frames dropped ${hs.reduce((n, r) => n + r.framesDropped, 0)}, lost across the cut ${hs.reduce((n, r) => n + r.lostAcrossCut, 0)}, UDP lost live ${hs.reduce((n, r) => n + r.udpLostLive, 0)} and after restore ${hs.reduce((n, r) => n + r.udpLostRestored, 0)}`,
  );
  console.log(
    `  stall: ${range(hs.map((r) => r.stallMs))} ms; max downtime + skew: ${range(hs.map((r) => r.maxDowntimeMs + r.skewMs))} ms; stall over that: ${range(hs.map((r) => r.stallMs - r.maxDowntimeMs - r.skewMs))} ms; the undisturbed run's longest gap: ${range(hs.map((r) => r.baselineStallMs))} ms`,
  );
  console.log("\nhold + sync-stop: the longest stall against its receiver's pause (stall = lead + receiver downtime):");
  console.log(
    '| environment | seed | stall ms | max downtime + window ms | over it ms | receiver downtime ms | lead: last progress to pause ms | undisturbed gap ms | ends at the resume |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of hs) {
    const p = r.stallAtPause;
    console.log(
      `| ${r.env} | ${r.seed} | ${f(r.stallMs)} | ${f(r.maxDowntimeMs + r.skewMs)} | ${f(r.stallMs - r.maxDowntimeMs - r.skewMs)} | ${p ? f(p.downtimeMs) : '-'} | ${p ? f(p.leadMs) : '-'} | ${f(r.baselineStallMs)} | ${p ? (p.endsAtResume ? 'yes' : 'NO') : 'not at a pause'} |`,
    );
  }
  console.log(`${rows.length} runs in ${seconds.toFixed(1)} s`);
}
