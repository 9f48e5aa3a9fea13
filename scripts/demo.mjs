#!/usr/bin/env node
// The main job, end to end through the real CLI: coordinated snapshots of a simulated environment,
// then memory images of a small virtual networked environment (3 VMs, 3 consecutive snapshots each)
// stored in the default store, listed, one restored bit-exact, and what deduplication and
// compression saved.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist/cli/bin.cjs');
if (!existsSync(cli)) {
  console.error('demo: dist/ is missing; run `npm install` first (it builds the project)');
  process.exit(1);
}
const { writeWorkload } = await import(path.join(root, 'dist/sim/workload.js'));
const { runSummary } = await import('./demo-report.mjs');
const store = path.resolve(process.env.VNSTORE_STORE ?? 'vnstore-data');

function vnstore(args, { json = false } = {}) {
  const r = spawnSync(process.execPath, [cli, ...args, '--store', store], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    process.stderr.write(r.stderr);
    console.error(`demo: 'vnstore ${args.join(' ')}' failed (exit ${r.status})`);
    process.exit(1);
  }
  return json ? JSON.parse(r.stdout) : r.stdout;
}

const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

let before;
const fresh = !existsSync(path.join(store, 'vnstore.json'));
if (fresh) process.stdout.write(vnstore(['init']));
else console.log(`using existing store ${store}`);

// A whole environment, snapshotted as VNsnap does: 4 simulated VMs on 2 hosts with file transfers
// between them, 3 coordinated epochs (synchronised stop-and-copy, frames across the cut held), each
// committed as one group (memory, disk and channel state of every VM, or nothing), then each group
// read back from the store and resumed: the transfers must end with their checksums.
const envFile = path.join(root, 'docs/examples/vne-4vm.json');
console.log(`\n$ vnstore snapshot --env ${path.relative(root, envFile)} --epochs 3 --verify-restore`);
const envOut = vnstore(['snapshot', '--env', envFile, '--epochs', '3', '--verify-restore']);
process.stdout.write(envOut);
const lastGroup = [...envOut.matchAll(/^epoch \d+: group (\S+) committed$/gm)].at(-1)?.[1];
if (lastGroup) {
  // The whole environment at one epoch, as files: every VM's memory and disk, and the channel state.
  const groupDir = mkdtempSync(path.join(os.tmpdir(), 'vnstore-demo-group-'));
  try {
    console.log(`\n$ vnstore restore --group ${lastGroup} -o DIR`);
    const g = vnstore(['restore', '--group', lastGroup, '-o', groupDir, '--json'], { json: true });
    for (const m of g.members)
      console.log(`  ${path.basename(m.file)}  ${m.bytes} bytes, verified (image digest ${m.imageDigest.slice(0, 16)}…)`);
  } finally {
    rmSync(groupDir, { recursive: true, force: true });
  }
}
before = vnstore(['stats', '--json'], { json: true }).summary;
console.log('');

const work = mkdtempSync(path.join(os.tmpdir(), 'vnstore-demo-'));
try {
  // Figures from real guests (see docs/BENCH.md): many zero pages, much sharing across VMs,
  // a few percent of pages changing between snapshots.
  const params = {
    vms: 3,
    memMiB: [64, 96, 128],
    snapshots: 3,
    zeroFraction: 0.5,
    sharedFraction: 0.4,
    randomFraction: 0.15,
    dirtyFraction: 0.05,
    seed: 2026,
  };
  console.log(`generating ${params.vms} VMs (${params.memMiB.join('/')} MiB), ${params.snapshots} snapshots each ...`);
  const images = await writeWorkload(work, params);
  const rows = [];
  const runTag = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
  for (const img of images) {
    // Each round of snapshots is one epoch of the environment: record it as a group.
    const group = `demo-${runTag}-e${img.snap}`;
    const r = vnstore(['put', '--vm', img.vm, '--group', group, '--json', img.path], { json: true });
    rows.push({ ...r, snap: img.snap, path: img.path });
    console.log(
      `  put ${img.vm} snapshot ${img.snap}: ${r.id}  ${mib(r.logicalBytes)} logical, ${mib(r.addedBytes)} added, ${r.newChunks} new chunks, ${r.seconds.toFixed(2)} s`,
    );
  }
  console.log('\n$ vnstore ls');
  process.stdout.write(vnstore(['ls']));

  const pick = rows.filter((r) => r.vm === 'vm01').at(-1);
  const out = path.join(work, 'restored.img');
  vnstore(['restore', pick.id, '-o', out]);
  const a = readFileSync(pick.path);
  const b = readFileSync(out);
  const sha = (x) => createHash('sha256').update(x).digest('hex').slice(0, 16);
  if (!a.equals(b)) {
    console.error(`demo: restored snapshot ${pick.id} differs from its image!`);
    process.exit(1);
  }
  console.log(`\nrestored ${pick.vm} snapshot ${pick.id}: ${b.length} bytes, sha256 ${sha(b)}… = original ${sha(a)}… (bit-exact)`);

  console.log('\n$ vnstore stats');
  process.stdout.write(vnstore(['stats']));

  console.log('');
  for (const line of runSummary(before, vnstore(['stats', '--json'], { json: true }).summary, rows)) console.log(line);
} finally {
  rmSync(work, { recursive: true, force: true });
}
