#!/usr/bin/env node
// One long-lived process on the library, 12 VMs of 64 MiB: a first snapshot of each, then a
// dirty-list snapshot of each (1% of pages written, the rest inherited); times the second round.
// With more VMs than the manifest cache holds, each parent must still be kept with whole digests
// (bench/RESULTS.md, session 12).   node bench/many-vms-dirty.mjs REPO_ROOT   (after npm run build)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
const root = process.argv[2] ?? join(import.meta.dirname, '..');
const { Store } = await import(join(root, 'dist', 'index.js'));
const dir = join(mkdtempSync(join(tmpdir(), 'manyvms-')), 'store');
await Store.init(dir);
const store = await Store.open(dir);
const PAGE = 4096,
  PAGES = 16384,
  VMS = 12;
const images = [];
for (let v = 0; v < VMS; v++) {
  const b = Buffer.alloc(PAGES * PAGE);
  for (let p = 0; p < PAGES; p += 2) randomFillSync(b, p * PAGE, 1024);
  images.push(b);
}
for (let v = 0; v < VMS; v++) {
  const s = await store.beginSession({ vm: `vm${v}`, parent: 'none' });
  await s.writePages(0, images[v]);
  await s.commit();
}
const cpu0 = process.cpuUsage();
const t0 = performance.now();
for (let v = 0; v < VMS; v++) {
  const s = await store.beginSession({ vm: `vm${v}`, parent: 'auto', memoryBytes: PAGES * PAGE });
  for (let p = v; p < PAGES; p += 100) {
    const page = Buffer.alloc(PAGE);
    randomFillSync(page);
    await s.writePages(p, page);
  }
  await s.commit({ unwritten: 'parent' });
}
const cpu = process.cpuUsage(cpu0);
console.log(
  JSON.stringify({ root, wallS: ((performance.now() - t0) / 1000).toFixed(2), cpuS: ((cpu.user + cpu.system) / 1e6).toFixed(2) }),
);
await store.close();
rmSync(dir, { recursive: true, force: true });
