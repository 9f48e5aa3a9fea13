#!/usr/bin/env node
// The paper's effect in the simulated VNE (issue 14): completion skew, frames dropped, the longest
// TCP retransmission timeout and the application's stall, with and without synchronised
// stop-and-copy, in both channel modes, as the environment grows and as its VMs' memory sizes
// diverge. Simulated time: the figures are simulated milliseconds, deterministic per seed.
// The stall is what the snapshot added to the application's longest wait: a gap between two
// progresses less the undisturbed run's (same environment and seed, no snapshot) over the same
// bytes (src/sim/progress.ts); the raw longest gap is shown beside it.
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
  undisturbedRun,
} = await import(join(root, 'dist', 'coordinator', 'vne-bench.js'));
const { values: args } = parseArgs({
  options: { seeds: { type: 'string', default: String(BENCH_SEEDS.length) }, json: { type: 'boolean', default: false } },
});
const SEEDS = Number(args.seeds);

const one = (env, mode, seed, reference) => benchRun(env, mode, seed, { resume: true, reference });

const rows = [];
const started = Date.now();
for (const env of envs) {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const reference = await undisturbedRun(env, seed);
    const baselineGapMs = reference.longestGapMs;
    for (const mode of modes) rows.push({ env: env.label, seed, baselineGapMs, ...mode, ...(await one(env, mode, seed, reference)) });
  }
}
const seconds = (Date.now() - started) / 1000;
if (args.json) {
  process.stdout.write(JSON.stringify({ seconds, rows }, (k, v) => (v === Infinity ? 'Infinity' : v), 2) + '\n');
} else {
  const f = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  const range = (xs) => (Math.min(...xs) === Math.max(...xs) ? f(xs[0]) : `${f(Math.min(...xs))}-${f(Math.max(...xs))}`);
  console.log(
    '| environment | sync-stop | channels | skew ms | dropped | held | longest RTO ms | stall ms | longest gap ms (undisturbed) | max downtime ms | lost across cut | UDP lost live / after restore |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const env of envs) {
    for (const mode of modes) {
      const rs = rows.filter((r) => r.env === env.label && r.syncStop === mode.syncStop && r.channels === mode.channels);
      const col = (k) => range(rs.map((r) => r[k]));
      console.log(
        `| ${env.label} | ${mode.syncStop ? 'on' : 'off'} | ${mode.channels} | ${col('skewMs')} | ${col('framesDropped')} | ${col('framesHeld')} | ${col('longestRtoMs')} | ${col('stallMs')} | ${col('longestGapMs')} (${col('baselineGapMs')}) | ${col('maxDowntimeMs')} | ${col('lostAcrossCut')} | ${col('udpLostLive')} / ${col('udpLostRestored')} |`,
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
  const over = (r) => r.stallMs - r.maxDowntimeMs - r.skewMs;
  console.log(
    `  stall: ${range(hs.map((r) => r.stallMs))} ms; max downtime + skew: ${range(hs.map((r) => r.maxDowntimeMs + r.skewMs))} ms; stall over that: ${range(hs.map(over))} ms`,
  );
  for (const [channels, syncStop] of [
    ['hold', false],
    ['drop', false],
    ['drop', true],
  ]) {
    const rs = rows.filter((r) => r.channels === channels && r.syncStop === syncStop);
    console.log(
      `  ${channels}, sync-stop ${syncStop ? 'on' : 'off'}: stall over max downtime + skew ${range(rs.map(over))} ms; over it in ${rs.filter((r) => over(r) > 0).length} of ${rs.length} runs`,
    );
  }
  console.log("\nhold + sync-stop: the stall against its receiver's pause (stall = lead + receiver downtime - undisturbed gap):");
  console.log(
    '| environment | seed | stall ms | max downtime + window ms | over it ms | receiver downtime ms | lead: last progress to pause ms | undisturbed gap over those bytes ms | ends at the resume | runs differ from undisturbed at (first pause) ms |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of hs) {
    const p = r.stallAtPause;
    console.log(
      `| ${r.env} | ${r.seed} | ${f(r.stallMs)} | ${f(r.maxDowntimeMs + r.skewMs)} | ${f(over(r))} | ${p ? f(p.downtimeMs) : '-'} | ${p ? f(p.leadMs) : '-'} | ${f(r.stall.referenceGapMs)} | ${p ? (p.endsAtResume ? 'yes' : 'NO') : 'not at a pause'} | ${f(r.stall.divergedAtMs)} (${f(r.firstPauseMs)}) |`,
    );
  }
  console.log(`${rows.length} runs in ${seconds.toFixed(1)} s`);
}
