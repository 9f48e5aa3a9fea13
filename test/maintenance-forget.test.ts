/**
 * forget (issue 3, "forget (retention)"): policies per VM, groups kept or forgotten whole, --dry-run
 * changes nothing, forgotten delta bases keep their manifest while a kept snapshot needs it, and the
 * catalog, counters and restores stay exact.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decideForget, forget, parseDuration } from '../src/maintenance/forget.js';
import { runGc } from '../src/maintenance/gc.js';
import { checkStore } from '../src/maintenance/check.js';
import { readCounters } from '../src/store/counters.js';
import { recount } from '../src/maintenance/stats.js';
import type { SnapshotRecord } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { runCli, removeDir, restoreToBuffer } from './helpers/engine.js';
import { catalogRecord, expectAllRestore, imageOf, newStore, putGroup, putImage } from './helpers/maintenance.js';

const roots: string[] = [];
afterEach(() => {
  for (const r of roots.splice(0)) removeDir(r);
});

const H = 3_600_000;
const NOW = Date.parse('2026-06-01T12:00:00Z');

/** Catalog records for the pure policy tests: id order = time order. */
function rec(id: number, vm: string, hoursAgo: number, group?: string): SnapshotRecord {
  return catalogRecord(id, vm, NOW - hoursAgo * H, group);
}

const forgotten = (ds: ReturnType<typeof decideForget>) => ds.filter((d) => d.forget).map((d) => Number.parseInt(d.id, 16));

describe('forget policy (pure)', () => {
  // a: 1..5 (oldest → newest, 50h..10h ago), b: 6..8 (30h, 20h, 1h ago)
  const catalog = [
    rec(1, 'a', 50),
    rec(2, 'a', 40),
    rec(3, 'a', 30),
    rec(4, 'a', 20),
    rec(5, 'a', 10),
    rec(6, 'b', 30),
    rec(7, 'b', 20),
    rec(8, 'b', 1),
  ];

  it('--keep-last N keeps the N latest of each VM', () => {
    expect(forgotten(decideForget(catalog, { keepLast: 2, nowMs: NOW }))).toEqual([1, 2, 3, 6]);
    expect(forgotten(decideForget(catalog, { keepLast: 10, nowMs: NOW }))).toEqual([]);
    const ds = decideForget(catalog, { keepLast: 1, nowMs: NOW });
    expect(ds.find((d) => d.id.endsWith('5'))!.reasons).toEqual(['keep-last 1: 1st latest of a']);
    expect(ds.find((d) => d.id.endsWith('1'))!.reasons).toEqual(['not kept by keep-last 1']);
  });

  it('--keep-within keeps what is younger; rules combine as a union; --vm limits the policy', () => {
    expect(forgotten(decideForget(catalog, { keepWithinMs: 25 * H, nowMs: NOW }))).toEqual([1, 2, 3, 6]);
    expect(forgotten(decideForget(catalog, { keepWithinMs: 15 * H, keepLast: 2, nowMs: NOW }))).toEqual([1, 2, 3, 6]);
    expect(forgotten(decideForget(catalog, { keepWithinMs: 15 * H, keepLast: 1, nowMs: NOW }))).toEqual([1, 2, 3, 4, 6, 7]);
    expect(forgotten(decideForget(catalog, { keepLast: 1, vm: 'b', nowMs: NOW }))).toEqual([6, 7]);
    const ds = decideForget(catalog, { keepLast: 1, vm: 'b', nowMs: NOW });
    expect(ds.find((d) => d.id.endsWith('1'))!.reasons).toEqual(['other VM (policy limited to b)']);
  });

  it('a group snapshot is kept or forgotten whole', () => {
    // Group g spans a:3 (30h ago) and b:7 (20h ago).
    const withGroup = catalog.map((r) => (r.id.endsWith('3') || r.id.endsWith('7') ? { ...r, group: 'g' } : r));
    // keep-last 2 keeps b:7, so a:3 (not among a's two latest) stays with its group.
    const ds = decideForget(withGroup, { keepLast: 2, nowMs: NOW });
    expect(forgotten(ds)).toEqual([1, 2, 6]);
    expect(ds.find((d) => d.id.endsWith('3'))!.reasons[0]).toMatch(/group g is kept whole \(member 0+7 is kept\)/);
    // keep-last 1 keeps neither member: the group goes whole.
    expect(forgotten(decideForget(withGroup, { keepLast: 1, nowMs: NOW }))).toEqual([1, 2, 3, 4, 6, 7]);
    // A policy limited to VM a cannot forget a group that also holds a snapshot of b.
    expect(forgotten(decideForget(withGroup, { keepLast: 1, vm: 'a', nowMs: NOW }))).toEqual([1, 2, 4]);
    // Naming one member forgets the whole group.
    const named = decideForget(withGroup, { ids: [withGroup[6].id], nowMs: NOW });
    expect(forgotten(named)).toEqual([3, 7]);
    expect(named.find((d) => d.id.endsWith('3'))!.reasons[0]).toMatch(/group g is forgotten whole/);
    expect(forgotten(decideForget(withGroup, { groups: ['g'], nowMs: NOW }))).toEqual([3, 7]);
  });

  it('rejects ambiguous or dangerous requests', () => {
    expect(() => decideForget(catalog, { nowMs: NOW })).toThrow(/name snapshots/);
    expect(() => decideForget(catalog, { ids: [catalog[0].id], keepLast: 1, nowMs: NOW })).toThrow(/not both/);
    expect(() => decideForget(catalog, { keepLast: 0, nowMs: NOW })).toThrow(/>= 1/);
    expect(() => decideForget(catalog, { ids: [catalog[0].id], vm: 'a', nowMs: NOW })).toThrow(/--vm/);
    expect(() => decideForget(catalog, { ids: ['00000000000000ff'], nowMs: NOW })).toThrow(/no snapshot/);
    expect(() => decideForget(catalog, { groups: ['nope'], nowMs: NOW })).toThrow(/no group/);
  });

  it('parses durations', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('1d12h')).toBe(36 * H);
    expect(parseDuration('2w')).toBe(14 * 24 * H);
    for (const bad of ['', '7', 'd', '1x', '-1d', '1.5d']) expect(() => parseDuration(bad)).toThrow(/bad duration/);
  });
});

describe('forget on a store', () => {
  it('keeps manifests that kept snapshots delta-decode through, then gc removes them once unneeded', async () => {
    const { root, dir, store } = await newStore('forget-base', undefined, 1); // delta bases of tiny images: the format-1 rule
    roots.push(root);
    const expected = new Map<string, Buffer>();
    // A chain a1 ← a2 ← a3 (each delta-encoded against its parent) and an unrelated b1.
    const base = Array.from({ length: 24 }, (_, i) => (i % 5 === 0 ? 'z' : `r${i}`));
    const imgs = [
      base,
      base.map((n, i) => (i % 4 === 1 ? `r${100 + i}` : n)),
      base.map((n, i) => (i % 4 === 1 ? `r${100 + i}` : i % 6 === 2 ? `c${i}` : n)),
    ].map((p) => imageOf(p, 1000));
    const a: SnapshotRecord[] = [];
    for (const img of imgs) {
      const r = await putImage(store, 'a', img);
      a.push(r);
      expected.set(r.id, img);
    }
    const b1 = await putImage(store, 'b', imageOf(['r500', 'r501', 'z', 'r3']));
    expected.set(b1.id, imageOf(['r500', 'r501', 'z', 'r3']));
    expect(a[1].base).toBe(a[0].id);
    expect(a[2].base).toBe(a[1].id);

    // Dry run: nothing changes.
    const before = readdirSync(path.join(dir, 'manifests')).sort();
    const dry = await forget(store, { ids: [a[0].id, a[1].id.toUpperCase()], dryRun: true });
    expect(dry.forgotten.map((d) => d.id)).toEqual([a[0].id, a[1].id]);
    expect(dry.manifestsKeptAsBase).toEqual([a[0].id, a[1].id]);
    expect((await store.listSnapshots()).length).toBe(4);
    expect(readdirSync(path.join(dir, 'manifests')).sort()).toEqual(before);

    // Forget a1 and a2: a3 still decodes through both manifests.
    const rep = await forget(store, { ids: [a[0].id, a[1].id] });
    expect(rep.manifestsKeptAsBase).toEqual([a[0].id, a[1].id]);
    expect(rep.manifestsRemoved).toBe(0);
    expected.delete(a[0].id);
    expected.delete(a[1].id);
    expect(existsSync(path.join(dir, 'manifests', `${a[0].id}.vnm`))).toBe(true);
    await expectAllRestore(store, expected, 'after forget');
    const counters = await readCounters(store.db);
    expect(counters).toEqual(await recount(store));
    expect(counters!.snapshots).toBe(2);
    expect(counters!.keptBases).toBe(2);

    // gc keeps them while a3 exists; survives a reopen (recovery keeps 'k' manifests).
    expect((await runGc(store, { maxUnused: { bytes: 0 } })).result!.keptBasesRemoved).toBe(0);
    await store.close();
    const s2 = await Store.open(dir, { workers: 0, packTargetBytes: 16 * 1024 });
    expect(s2.recovery.orphanManifestsRemoved).toBe(0);
    await expectAllRestore(s2, expected, 'after gc and reopen');
    expect((await checkStore(s2)).problems).toEqual([]);

    // Forget a3: now nothing needs the chain; gc removes the kept manifests and their chunks.
    await forget(s2, { ids: [a[2].id] });
    expected.delete(a[2].id);
    const gc = await runGc(s2, { maxUnused: { bytes: 0 } });
    expect(gc.result!.keptBasesRemoved).toBe(2);
    expect(readdirSync(path.join(dir, 'manifests')).sort()).toEqual([`${b1.id}.vnm`]);
    await expectAllRestore(s2, expected, 'after last forget');
    const check = await checkStore(s2, { readData: true });
    expect(check.problems).toEqual([]);
    expect(check.counters!.exact.chunks).toBe(3); // r500, r501, r3
    await s2.close();
  });

  it('groups: forgetting a member forgets the group record and every VM of it; a kept member keeps it', async () => {
    const { root, store } = await newStore('forget-group');
    roots.push(root);
    const e1 = await putGroup(store, 'epoch-1', [
      { vm: 'web', image: imageOf(['r1', 'r2', 'z']) },
      { vm: 'db', image: imageOf(['r1', 'r3']) },
    ]);
    const e2 = await putGroup(store, 'epoch-2', [
      { vm: 'web', image: imageOf(['r1', 'r4', 'z']) },
      { vm: 'db', image: imageOf(['r5', 'r3']) },
    ]);
    // keep-last 1 keeps epoch-2 (both VMs' latest) and forgets epoch-1 whole.
    const dry = await forget(store, { keepLast: 1, dryRun: true });
    expect(dry.forgotten.map((d) => d.id).sort()).toEqual(e1.map((r) => r.id).sort());
    expect(dry.groupsForgotten).toEqual(['epoch-1']);
    // Naming only db's snapshot of epoch-2 takes web's with it.
    const rep = await forget(store, { ids: [e2[1].id] });
    expect(rep.forgotten.map((d) => d.id).sort()).toEqual(e2.map((r) => r.id).sort());
    expect(rep.groupsForgotten).toEqual(['epoch-2']);
    expect((await store.listSnapshots()).map((r) => r.id).sort()).toEqual(e1.map((r) => r.id).sort());
    expect(await store.db.get(Buffer.from('gepoch-2'))).toBeUndefined();
    expect(await store.db.get(Buffer.from('gepoch-1'))).toBeDefined();
    expect((await checkStore(store)).problems).toEqual([]);
    await store.close();
  });

  it('a session whose parent is forgotten still commits (inherited pages, delta base kept) and restores', async () => {
    const { root, store } = await newStore('forget-session', undefined, 1); // delta bases of tiny images: the format-1 rule
    roots.push(root);
    const img = imageOf(['r1', 'r2', 'z', 'r3', 'c4', 'r5']);
    const p = await putImage(store, 'vm', img);
    const s = await store.beginSession({ vm: 'vm' }); // parent = p
    await s.writePage(1, imageOf(['r9']));
    await forget(store, { ids: [p.id] });
    const gc = await runGc(store, { maxUnused: { bytes: 0 } });
    expect(gc.live.sessions).toBe(1);
    const child = await s.commit({ byteLength: img.length }); // unwritten pages inherit p's
    expect(child.base).toBe(p.id);
    const want = imageOf(['r1', 'r9', 'z', 'r3', 'c4', 'r5']);
    expect((await restoreToBuffer(store, child)).equals(want)).toBe(true);
    // The forgotten parent's manifest stays (the child is delta-encoded against it) until the child goes.
    expect((await runGc(store, { maxUnused: { bytes: 0 } })).result!.keptBasesRemoved).toBe(0);
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    await store.close();
  });
});

describe('forget racing sessions in the same process', () => {
  it('a session begun while its parent is being forgotten commits a restorable snapshot, whatever the interleaving', async () => {
    const { root, store } = await newStore('forget-race', undefined, 1); // delta bases of tiny images: the format-1 rule
    roots.push(root);
    const expected = new Map<string, Buffer>();
    // A snapshot before the rounds: whichever way a round's race goes, its session has a parent.
    const start = imageOf(['r7000', 'r7001', 'z', 'c7002', 'r7003']);
    expected.set((await putImage(store, 'vm', start)).id, start);
    for (let round = 0; round < 6; round++) {
      const img = imageOf([`r${round}`, 'r1000', 'z', `c${round}`, `r${2000 + round}`]);
      const before = (await store.latestSnapshot('vm'))?.id;
      const p = await putImage(store, 'vm', img);
      // Begin (parent auto = p) and forget p concurrently, shifting the start of forget by `round` ticks.
      const begin = store.beginSession({ vm: 'vm' });
      for (let t = 0; t < round; t++) await new Promise((r) => setImmediate(r));
      const f = forget(store, { ids: [p.id] });
      const s = await begin;
      await s.writePage(1, imageOf([`r${3000 + round}`]));
      await f;
      const rec = await s.commit({ byteLength: img.length });
      // The session's parent is p when begin looked it up first, else the snapshot latest before p
      // (under load, begin's disk and index reads can outlast the ticks forget waits): the unwritten
      // pages come from that parent, and the child is delta-encoded against it, forgotten or not.
      expect([p.id, before]).toContain(rec.parent);
      expect(rec.base).toBe(rec.parent);
      const want = Buffer.from(rec.parent === p.id ? img : expected.get(rec.parent!)!);
      imageOf([`r${3000 + round}`]).copy(want, 4096);
      expected.set(rec.id, want);
      await runGc(store, { maxUnused: { bytes: 0 } });
      await expectAllRestore(store, expected, `round ${round}`);
      // The child is forgotten too before the next round, so bases come and go.
      if (round % 2 === 1) {
        await forget(store, { ids: [rec.id] });
        expected.delete(rec.id);
      }
    }
    expect((await checkStore(store, { readData: true })).problems).toEqual([]);
    await store.close();
  });
});

describe('vnstore forget (CLI)', () => {
  it('--help, --dry-run --json, policies, clear errors', async () => {
    const { root, dir, store } = await newStore('forget-cli');
    roots.push(root);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await putImage(store, 'vm', imageOf([`r${i}`, 'r100', 'z']))).id);
    await store.close();
    const help = await runCli(['forget', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toMatch(/--keep-last/);

    const dry = await runCli(['forget', '--store', dir, '--keep-last', '2', '--dry-run', '--json']);
    expect(dry.code, dry.stderr).toBe(0);
    const j = JSON.parse(dry.stdout.toString());
    expect(j.dryRun).toBe(true);
    expect(j.forgotten.map((d: { id: string }) => d.id)).toEqual(ids.slice(0, 2));
    expect(j.kept.map((d: { id: string }) => d.id)).toEqual(ids.slice(2));
    const ls = await runCli(['ls', '--store', dir, '--json']);
    expect(JSON.parse(ls.stdout.toString()).length).toBe(4);

    const real = await runCli(['forget', '--store', dir, '--keep-last', '2']);
    expect(real.code, real.stderr).toBe(0);
    expect(real.stdout.toString()).toMatch(/^forgot 2 snapshot\(s\)/);
    const ls2 = await runCli(['ls', '--store', dir, '--json']);
    expect(JSON.parse(ls2.stdout.toString()).map((r: { id: string }) => r.id)).toEqual(ids.slice(2));

    const cases: [string[], number, RegExp][] = [
      [['forget', '--store', dir], 2, /nothing to forget/],
      [['forget', '--store', dir, '--keep-last', 'x'], 2, /whole number/],
      [['forget', '--store', dir, '--keep-within', '3 days'], 2, /bad duration/],
      [['forget', '--store', dir, ids[0]], 6, /no snapshot/],
      [['forget', '--store', dir, ids[2], '--keep-last', '1'], 2, /not both/],
      [['forget', '--store', path.join(root, 'nope'), '--keep-last', '1'], 3, /not a vnstore store/],
    ];
    for (const [args, code, msg] of cases) {
      const r = await runCli(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      const lines = r.stderr.split('\n').filter(Boolean);
      expect(lines.length, r.stderr).toBe(1);
      expect(lines[0]).toMatch(msg);
    }
  });
});
