#!/usr/bin/env node
// Store format 3 against format 1 on the same images, in the same run: the wall time of every
// `vnstore put` (first snapshots and consecutive ones apart) and of restoring each VM's latest
// snapshot (checked byte for byte), then where each store's bytes go (bench/store-layout.mjs).
// Rounds alternate which format goes first, so drift in the machine's load falls on both.
//   npm run build && node bench/format3-ingest.mjs IMAGES_DIR WORK_DIR [ROUNDS]
// IMAGES_DIR: one folder per VM, one image file per snapshot in name order (what `vnstore bench
// --keep` leaves in its work directory).
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [imagesDir, work, roundsArg] = process.argv.slice(2);
if (!imagesDir || !work) {
  process.stderr.write('usage: node bench/format3-ingest.mjs IMAGES_DIR WORK_DIR [ROUNDS]\n');
  process.exit(2);
}
const ROUNDS = Number(roundsArg ?? 3);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(repo, 'dist/cli/bin.cjs');
const vms = readdirSync(imagesDir).sort();
const snaps = Object.fromEntries(vms.map((vm) => [vm, readdirSync(path.join(imagesDir, vm)).sort()]));
const k = Math.max(...vms.map((vm) => snaps[vm].length));

function run(args) {
  const t = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [cli, ...args], { maxBuffer: 1 << 20 });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`vnstore ${args.join(' ')}: ${r.stderr}`);
  return { ms, stdout: r.stdout.toString() };
}

const totals = { 1: { first: 0, next: 0, restore: 0 }, 3: { first: 0, next: 0, restore: 0 } };
mkdirSync(work, { recursive: true });
for (let round = 0; round < ROUNDS; round++) {
  for (const format of round % 2 === 0 ? [1, 3] : [3, 1]) {
    const store = path.join(work, `store-f${format}`);
    rmSync(store, { recursive: true, force: true });
    run(['init', '--store', store, '--format', String(format)]);
    const latest = {};
    for (let s = 0; s < k; s++) {
      for (const vm of vms) {
        const file = snaps[vm][s];
        if (!file) continue;
        const image = path.join(imagesDir, vm, file);
        const { ms, stdout } = run(['put', '--store', store, '--vm', vm, image]);
        totals[format][s === 0 ? 'first' : 'next'] += ms;
        latest[vm] = { id: stdout.trim(), image };
      }
    }
    for (const vm of vms) {
      const out = path.join(work, `restored-${format}.img`);
      const { ms } = run(['restore', '--store', store, latest[vm].id, '-o', out]);
      totals[format].restore += ms;
      if (!readFileSync(out).equals(readFileSync(latest[vm].image))) throw new Error(`format ${format}: ${vm} restored wrong bytes`);
      rmSync(out);
    }
  }
}
const layout = (format) =>
  JSON.parse(
    spawnSync(process.execPath, [path.join(repo, 'bench/store-layout.mjs'), path.join(work, `store-f${format}`)]).stdout.toString(),
  );
const per = (v) => +(v / ROUNDS / 1000).toFixed(3);
const result = {
  rounds: ROUNDS,
  vms: vms.length,
  snapshotsPerVm: k,
  seconds: Object.fromEntries(
    [1, 3].map((f) => [
      `format${f}`,
      { firstPuts: per(totals[f].first), consecutivePuts: per(totals[f].next), restoreLatest: per(totals[f].restore) },
    ]),
  ),
  ratio3to1: {
    firstPuts: +(totals[3].first / totals[1].first).toFixed(3),
    consecutivePuts: +(totals[3].next / totals[1].next).toFixed(3),
    allPuts: +((totals[3].first + totals[3].next) / (totals[1].first + totals[1].next)).toFixed(3),
    restoreLatest: +(totals[3].restore / totals[1].restore).toFixed(3),
  },
  layout: { format1: layout(1), format3: layout(3) },
};
process.stdout.write(JSON.stringify(result, null, 2) + '\n');
