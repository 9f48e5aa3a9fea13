/**
 * Crash safety (issue 2, "Durability and bad input"; design.md "Failure model"): `vnstore put` is
 * SIGKILLed at random instants, then the store must reopen, list only complete snapshots, restore
 * every one of them bit-exact, and take a new put. Power loss is simulated by dropping what the write
 * order says may be lost (unsynced temp files, packs not yet indexed, commit records not yet written).
 *
 * Reproduce a failing run with VNSTORE_CRASH_SEED=<seed printed in the assertion message>.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store, type RecoveryReport } from '../src/store/store.js';
import {
  decodeChunkValue,
  KEY_CHUNK,
  KEY_PACK,
  KEY_SNAPSHOT,
  openDb,
  packKey,
  PACK_RECORD,
  parseRecord,
  SNAPSHOT_RECORD,
  prefixedKey,
  prefixRange,
  stampChunkGeneration,
  vmKey,
  type PackRecord,
} from '../src/store/db.js';
import { parsePackFileName } from '../src/format/pack.js';
import {
  CLI,
  PAGE,
  REPO_ROOT,
  compressiblePage,
  expectedImageDigest as computeImageDigest,
  makeTempDir,
  packProblems,
  prng,
  randomPage,
  removeDir,
  restoreToBuffer,
  runCli,
  sparsePage,
} from './helpers/engine.js';
import { runCliInProcess } from './helpers/cli.js';

const PACK_TARGET = 64 * 1024; // a 3 MiB put seals dozens of packs: many distinct crash points
const CHILD_ENV = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
const SEED = Number(process.env.VNSTORE_CRASH_SEED ?? Date.now() % 1_000_000);
const LANES = 2; // trials run in parallel pairs (2 cores)
const TRIALS_PER_LANE_PER_TEST = 7;
const TESTS = 4; // 4 tests × 2 lanes × 7 trials = 56 killed puts

let root: string;
let putMillis = 400; // whole put, calibrated in beforeAll
let workMillis = 150; // from "session begun" to the end of the put

// ------------------------------------------------------------------ images

const FAMILY_PAGES = [768, 512, 640]; // 3 MiB, 2 MiB, 2.5 MiB
const FAMILY_TAIL = [777, 0, 4095]; // odd lengths: the final page is short

/** A family's base image: ~35% zero pages, random and compressible pages, repeats within the image. */
function familyBase(f: number): Buffer {
  const next = prng(1000 + f);
  const pages: Buffer[] = [];
  for (let i = 0; i < FAMILY_PAGES[f]; i++) {
    const r = next() % 100;
    if (r < 35) pages.push(Buffer.alloc(PAGE));
    else if (r < 65) pages.push(randomPage(f * 100_000 + i));
    else if (r < 85) pages.push(compressiblePage(next() % 40));
    else if (r < 95) pages.push(sparsePage(f * 100_000 + i));
    else pages.push(pages.length > 0 ? Buffer.from(pages[next() % pages.length]) : randomPage(f));
  }
  const tail = FAMILY_TAIL[f];
  const img = Buffer.concat(pages);
  return tail ? img.subarray(0, img.length - PAGE + tail) : img;
}

const bases = [0, 1, 2].map(familyBase);

/** A trial's image: its family base with ~30% of pages replaced by content unique to this trial. */
function trialImage(f: number, trialSeed: number): Buffer {
  const img = Buffer.from(bases[f]);
  const next = prng(trialSeed);
  const pageCount = Math.ceil(img.length / PAGE);
  for (let i = 0; i < pageCount; i++) {
    if (next() % 100 >= 30) continue;
    const end = Math.min(img.length, (i + 1) * PAGE);
    const content = next() % 5 === 0 ? Buffer.alloc(PAGE) : randomPage(trialSeed * 7919 + i);
    content.copy(img, i * PAGE, 0, end - i * PAGE);
  }
  return img;
}

/**
 * The expected digest of an image, computed once per image: every check after a crash compares
 * every committed snapshot with it (~40 ms per 3 MiB image; hundreds of times per run). The images
 * of this file are never modified once made, so the memo cannot go stale.
 */
const digests = new WeakMap<Buffer, string>();
function expectedImageDigest(image: Buffer): string {
  let d = digests.get(image);
  if (d === undefined) digests.set(image, (d = computeImageDigest(image)));
  return d;
}

// ------------------------------------------------------------------ a killed put

interface KilledPut {
  printedId?: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** The last phase the put reported (VNSTORE_TRACE) before it ended or was killed. */
  phase: string;
}

/**
 * Spawns `vnstore put` and SIGKILLs it `delayMs` after it starts (`from: 'spawn'`) or after its
 * session has begun (`from: 'session'`: start-up skipped, the kill lands in ingest, sealing, manifest
 * or commit). It may finish first.
 */
function putAndKill(
  dir: string,
  args: string[],
  file: string,
  stdinImage: Buffer | undefined,
  delayMs: number,
  from: 'spawn' | 'session' = 'spawn',
): Promise<KilledPut> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'put', '--store', dir, ...args, stdinImage ? '-' : file], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...CHILD_ENV, VNSTORE_TRACE: '1', VNSTORE_DEBUG: undefined },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let phase = 'start-up';
    let timer: NodeJS.Timeout | undefined;
    const arm = () => (timer ??= setTimeout(() => child.kill('SIGKILL'), delayMs));
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      for (const m of err.matchAll(/\] ([a-z ]+)/g)) phase = m[1].trim();
      if (from === 'session' && /session begun/.test(err)) arm();
    });
    child.stdin.on('error', () => undefined);
    if (stdinImage) child.stdin.end(stdinImage);
    else child.stdin.end();
    child.on('error', reject);
    if (from === 'spawn') arm();
    // 'close' fires after the process is reaped: its PID is gone, so its lock is stale.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const m = /^([0-9a-f]{16})\n$/.exec(out);
      resolve({
        printedId: m?.[1],
        exitCode: code,
        signal,
        stderr: err.replace(/^\[trace [^\n]*\n/gm, ''),
        phase: out ? 'printed' : phase,
      });
    });
  });
}

// ------------------------------------------------------------------ invariants after a crash

interface Lane {
  name: string;
  dir: string;
  rand: () => number;
  /** Every snapshot that must exist from now on: id → image. */
  committed: Map<string, Buffer>;
  recovery: RecoveryReport[];
  killedMidway: number;
  /** Phase each killed put had reached. */
  phases: string[];
}

/** Opens the store after a crash and checks every invariant; returns nothing, throws on violation. */
async function checkStore(lane: Lane, context: string, candidates: { vm: string; image: Buffer }[]): Promise<void> {
  const store = await Store.open(lane.dir, { workers: 0 });
  try {
    lane.recovery.push(store.recovery);
    const p = Store.paths(lane.dir);
    // Recovery leaves no temp files, no unindexed packs, no uncommitted manifests.
    expect(readdirSync(p.tmp), `${context}: tmp/ after open`).toEqual([]);
    const packFiles = readdirSync(p.packs)
      .map((n) => parsePackFileName(n))
      .sort((a, b) => a! - b!);
    const indexed = (await store.listPacks()).map((r) => r.id).sort((a, b) => a - b);
    expect(packFiles, `${context}: every pack file is indexed`).toEqual(indexed);
    const listed = await store.listSnapshots();
    const manifests = readdirSync(p.manifests).sort();
    expect(manifests, `${context}: manifests are exactly the committed snapshots'`).toEqual(listed.map((r) => `${r.id}.vnm`).sort());
    // Every snapshot committed before (or printed by this put) is still there and exact.
    const listedIds = new Set(listed.map((r) => r.id));
    for (const id of lane.committed.keys()) expect(listedIds.has(id), `${context}: committed ${id} still listed`).toBe(true);
    for (const rec of listed) {
      let image = lane.committed.get(rec.id);
      if (!image) {
        // A snapshot committed by the killed put before it could print its id: it must be that image, whole.
        const match = candidates.find((c) => c.vm === rec.vm && expectedImageDigest(c.image) === rec.imageDigest);
        expect(match, `${context}: listed snapshot ${rec.id} (vm ${rec.vm}) is none of the images put`).toBeDefined();
        image = match!.image;
        lane.committed.set(rec.id, image);
      }
      expect(rec.byteLength, `${context}: ${rec.id} length`).toBe(image.length);
      expect(rec.imageDigest, `${context}: ${rec.id} digest`).toBe(expectedImageDigest(image));
      const out = await restoreToBuffer(store, rec);
      expect(out.equals(image), `${context}: ${rec.id} restores bit-exact`).toBe(true);
    }
    expect(listed.length, `${context}: listed count`).toBe(lane.committed.size);
  } finally {
    await store.close();
  }
}

/**
 * A put after the crash, then a restore of it. The put is the command line's own (`vnstore put`,
 * src/cli), run in this process and the restore through the library's restore path (what `vnstore
 * restore` runs): what this file kills is the put of a child process; two more spawns per trial
 * cost ~0.7 s of CPU for node's start-up alone (bench/RESULTS.md, "CI time").
 */
async function putAndRestore(lane: Lane, context: string, vm: string, image: Buffer): Promise<void> {
  const file = path.join(path.dirname(lane.dir), `after-${vm}.img`);
  writeFileSync(file, image);
  const put = await runCliInProcess(['put', '--store', lane.dir, '--vm', vm, file], { env: CHILD_ENV });
  expect(put.stderr, `${context}: put after crash`).toBe('');
  expect(put.code, `${context}: put after crash`).toBe(0);
  const id = put.stdout.toString().trim();
  expect(id, `${context}: put prints the id alone`).toMatch(/^[0-9a-f]{16}$/);
  lane.committed.set(id, image);
  const store = await Store.open(lane.dir, { workers: 0 });
  try {
    const restored = await restoreToBuffer(store, await store.resolveSnapshot(id));
    expect(restored.equals(image), `${context}: restore after crash is bit-exact`).toBe(true);
  } finally {
    await store.close();
  }
}

async function runLane(lane: Lane, trials: number): Promise<void> {
  for (let t = 0; t < trials; t++) {
    const f = lane.rand() % 3;
    const vm = `vm${f}`;
    const trialSeed = lane.rand();
    const image = trialImage(f, trialSeed);
    const file = path.join(path.dirname(lane.dir), `trial.img`);
    writeFileSync(file, image);
    const useStdin = lane.rand() % 4 === 0;
    const args = ['--vm', vm];
    const parentChoice = lane.rand() % 4;
    if (parentChoice === 0) args.push('--parent', 'none');
    if (lane.rand() % 3 === 0) args.push('--group', `g${t}`);
    // Half the kills count from spawn (start-up included), half from the moment the session has
    // begun, spread over the work that follows and a little past its end.
    const fromSession = t % 2 === 0;
    const delay = fromSession ? lane.rand() % Math.round(workMillis * 1.3 + 1) : lane.rand() % Math.round(putMillis * 1.3);
    const context = `seed ${SEED} ${lane.name} trial ${t} (${args.join(' ')}${useStdin ? ' stdin' : ''}, kill ${delay} ms after ${fromSession ? 'session begun' : 'spawn'})`;
    const r = await putAndKill(lane.dir, args, file, useStdin ? image : undefined, delay, fromSession ? 'session' : 'spawn');
    if (r.signal === 'SIGKILL') {
      lane.killedMidway++;
      lane.phases.push(r.phase);
    } else {
      // Finished before the kill: it must have succeeded and printed its id.
      expect(r.exitCode, `${context}: ${r.stderr}`).toBe(0);
      expect(r.printedId, context).toBeDefined();
    }
    if (r.printedId) lane.committed.set(r.printedId, image);
    await checkStore(lane, context, [{ vm, image }]);
    // And it takes a new put, which restores exactly.
    await putAndRestore(lane, context, `after${f}`, trialImage(f, trialSeed + 1));
  }
}

function newLane(name: string, seed: number): Lane {
  const base = makeTempDir(`crash-${name}`);
  return { name, dir: path.join(base, 'store'), rand: prng(seed), committed: new Map(), recovery: [], killedMidway: 0, phases: [] };
}

const lanes: Lane[] = [];

beforeAll(async () => {
  root = makeTempDir('crash-calibrate');
  const dir = path.join(root, 'store');
  expect((await runCli(['init', '--store', dir, '--format', '1'])).code).toBe(0); // legacy index (format 3: format3-crash)
  const file = path.join(root, 'cal.img');
  writeFileSync(file, trialImage(0, 1));
  const started = Date.now();
  const r = await runCli(['put', '--store', dir, '--vm', 'cal', file], { env: { ...CHILD_ENV, VNSTORE_TRACE: '1' } });
  putMillis = Math.max(150, Date.now() - started);
  expect(r.code).toBe(0);
  // The put reports its phases on stderr (VNSTORE_TRACE=1); kills are aimed at the work after start-up.
  const begun = /\[trace\s+([\d.]+) ms\] session begun/.exec(r.stderr);
  const last = [...r.stderr.matchAll(/\[trace\s+([\d.]+) ms\]/g)].pop();
  expect(begun, `put reports 'session begun' with VNSTORE_TRACE=1:\n${r.stderr}`).not.toBeNull();
  workMillis = Math.max(30, Number(last![1]) - Number(begun![1]));
});

afterAll(() => {
  removeDir(root);
  for (const l of lanes) removeDir(path.dirname(l.dir));
});

describe('SIGKILL during put (56 trials in parallel pairs)', () => {
  for (let k = 0; k < TESTS; k++) {
    it(`kill trials, stores ${k * LANES + 1}-${k * LANES + LANES}: committed snapshots survive exactly, partial ones never show`, async () => {
      const mine = Array.from({ length: LANES }, (_, i) => newLane(`lane${k * LANES + i}`, SEED * 31 + k * LANES + i + 1));
      lanes.push(...mine);
      for (const lane of mine) expect((await runCliInProcess(['init', '--store', lane.dir, '--format', '1'])).code).toBe(0); // format 3: format3-crash
      await Promise.all(mine.map((lane) => runLane(lane, TRIALS_PER_LANE_PER_TEST)));
      for (const lane of mine) {
        // The CLI agrees with the library: ls --json lists exactly the committed snapshots, with their digests.
        const ls = await runCli(['ls', '--store', lane.dir, '--json']);
        expect(ls.code).toBe(0);
        const rows = JSON.parse(ls.stdout.toString()) as { id: string; imageDigest: string; logicalBytes: number }[];
        expect(rows.map((r) => r.id).sort()).toEqual([...lane.committed.keys()].sort());
        for (const row of rows) {
          expect(row.imageDigest).toBe(expectedImageDigest(lane.committed.get(row.id)!));
          expect(row.logicalBytes).toBe(lane.committed.get(row.id)!.length);
        }
        // Every pack left by all those crashes is whole and exactly as indexed.
        expect(await packProblems(lane.dir), lane.name).toEqual([]);
      }
      // Up to ~90 s while another test file (two workers) and a loaded machine share the cores.
    }, 300_000);
  }

  it('the trials really crashed puts mid-way and exercised recovery', () => {
    const killed = lanes.reduce((s, l) => s + l.killedMidway, 0);
    const phases = lanes.flatMap((l) => l.phases);
    const recoveries = lanes.flatMap((l) => l.recovery);
    const histogram = JSON.stringify(phases.reduce<Record<string, number>>((h, p) => ((h[p] = (h[p] ?? 0) + 1), h), {}));
    if (process.env.VNSTORE_CRASH_VERBOSE) {
      const sum = (k: 'tempFilesRemoved' | 'packsIndexed' | 'orphanManifestsRemoved') => recoveries.reduce((s, r) => s + r[k], 0);
      console.log(
        `seed ${SEED}: ${killed} killed, phases ${histogram}, recovery: ${sum('tempFilesRemoved')} temp files, ${sum('packsIndexed')} packs indexed, ${sum('orphanManifestsRemoved')} orphan manifests`,
      );
    }
    expect(recoveries.length).toBe(TESTS * LANES * TRIALS_PER_LANE_PER_TEST);
    expect(killed, histogram).toBeGreaterThanOrEqual(Math.floor(recoveries.length / 3));
    // Kills landed while the put was writing (after its session began), and recovery had leftovers to clean.
    expect(
      phases.filter((p) => /session begun|ingest drained|packs flushed|manifest written/.test(p)).length,
      histogram,
    ).toBeGreaterThanOrEqual(10);
    expect(
      recoveries.reduce((s, r) => s + r.tempFilesRemoved, 0),
      histogram,
    ).toBeGreaterThan(0);
    expect(recoveries.every((r) => r.packsQuarantined.length === 0)).toBe(true);
  });
});

// ------------------------------------------------------------------ simulated power loss

/** Direct LevelDB access while the store is closed (to drop what a power cut may lose). */
async function withDb<T>(dir: string, fn: (db: ReturnType<typeof openDb>) => Promise<T>): Promise<T> {
  const db = openDb(path.join(dir, 'db'));
  await db.open();
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

async function indexedPackIds(dir: string): Promise<Set<number>> {
  return withDb(dir, async (db) => {
    const ids = new Set<number>();
    for await (const k of db.keys(prefixRange(Buffer.of(KEY_PACK)))) ids.add(k.readUInt32BE(1));
    return ids;
  });
}

describe('simulated power loss', () => {
  let dir: string;
  let base: string;
  const images = new Map<string, Buffer>();

  beforeAll(async () => {
    base = makeTempDir('power');
    dir = path.join(base, 'store');
    expect((await runCli(['init', '--store', dir, '--format', '1'])).code).toBe(0); // legacy index (format 3: format3-crash)
    for (const f of [0, 1]) {
      const img = trialImage(f, 4242 + f);
      const file = path.join(base, `p${f}.img`);
      writeFileSync(file, img);
      const r = await runCli(['put', '--store', dir, '--vm', `vm${f}`, file], { env: CHILD_ENV });
      expect(r.code).toBe(0);
      images.set(r.stdout.toString().trim(), img);
    }
  });

  afterAll(() => removeDir(base));

  async function expectCommittedExact(store: Store): Promise<void> {
    const listed = await store.listSnapshots();
    expect(listed.map((r) => r.id).sort()).toEqual([...images.keys()].sort());
    for (const rec of listed) expect((await restoreToBuffer(store, rec)).equals(images.get(rec.id)!)).toBe(true);
  }

  it('torn temp files, lost pack renames and a torn unindexed pack: recovery cleans, quarantines, and ingest goes on', async () => {
    // Crash a put mid-way; retry (later kills) until the kill leaves temp files behind.
    // Each attempt puts new content (a re-put of stored content writes no pack at all).
    const attempts: Buffer[] = [];
    const file = path.join(base, 'crash.img');
    let r: KilledPut | undefined;
    for (let attempt = 0; attempt < 30; attempt++) {
      const img = trialImage(2, 777 + attempt);
      attempts.push(img);
      writeFileSync(file, img);
      // Aim inside ingest (after "session begun"), sweeping the work window: an open pack lives in tmp/
      // for most of it. Timing from spawn missed it once puts got fast.
      r = await putAndKill(dir, ['--vm', 'victim'], file, undefined, Math.round((workMillis * ((attempt % 10) + 1)) / 12), 'session');
      if (r.printedId) images.set(r.printedId, img);
      if (r.signal === 'SIGKILL' && readdirSync(path.join(dir, 'tmp')).length > 0) break;
    }
    expect(r!.signal).toBe('SIGKILL');
    expect(readdirSync(path.join(dir, 'tmp')).length).toBeGreaterThan(0);
    // Power loss: unsynced tails of temp files are gone...
    const tmp = path.join(dir, 'tmp');
    for (const name of readdirSync(tmp)) truncateSync(path.join(tmp, name), Math.floor(statSync(path.join(tmp, name)).size / 3));
    writeFileSync(path.join(tmp, '0000ffff.vpk.tmp'), Buffer.from('torn pack'));
    // ...a manifest renamed into place whose commit record never became durable, a torn manifest temp...
    writeFileSync(path.join(dir, 'manifests', 'ffffffffffff0001.vnm'), Buffer.from('VNSTMANI torn'));
    writeFileSync(path.join(dir, 'manifests', 'ffffffffffff0002.vnm.tmp'), Buffer.alloc(10));
    // ...packs renamed but never indexed vanish when the rename was not yet durable (every other one
    // here), and a torn file under a pack name must be quarantined, not indexed nor deleted.
    const indexed = await indexedPackIds(dir);
    const unindexed = readdirSync(path.join(dir, 'packs')).filter((n) => !indexed.has(parsePackFileName(n)!));
    unindexed.forEach((n, i) => {
      if (i % 2 === 0) unlinkSync(path.join(dir, 'packs', n));
    });
    const torn = '00fffff0.vpk';
    writeFileSync(path.join(dir, 'packs', torn), Buffer.concat([Buffer.from('VNSTPACK'), Buffer.alloc(100)]));
    const store = await Store.open(dir, { workers: 2 });
    try {
      expect(store.recovery.tempFilesRemoved).toBeGreaterThanOrEqual(2);
      expect(store.recovery.orphanManifestsRemoved).toBeGreaterThanOrEqual(2);
      expect(store.recovery.packsQuarantined).toEqual([torn]);
      expect(store.recovery.packsIndexed).toBe(Math.floor(unindexed.length / 2));
      expect(readdirSync(tmp)).toEqual([]);
      expect(readdirSync(path.join(dir, 'quarantine'))).toEqual([torn]); // moved aside, never deleted
      expect(existsSync(path.join(dir, 'manifests', 'ffffffffffff0001.vnm'))).toBe(false);
      expect(existsSync(path.join(dir, 'manifests', 'ffffffffffff0002.vnm.tmp'))).toBe(false);
      // A killed attempt may have committed before printing its id: then it is the whole image.
      for (const rec of await store.listSnapshots()) {
        if (images.has(rec.id)) continue;
        expect(rec.vm).toBe('victim');
        const img = attempts.find((a) => expectedImageDigest(a) === rec.imageDigest);
        expect(img, `listed snapshot ${rec.id} is one of the images put, whole`).toBeDefined();
        images.set(rec.id, img!);
      }
      await expectCommittedExact(store);
      // Ingest goes on: a new snapshot's packs never reuse the quarantined pack's number.
      const s = await store.beginSession({ vm: 'after-power' });
      const fresh = trialImage(0, 99);
      await s.writePages(0, fresh);
      const rec = await s.commit();
      images.set(rec.id, fresh);
      expect(Math.max(...(await store.listPacks()).map((p) => p.id))).toBeGreaterThan(0x00fffff0);
      await expectCommittedExact(store);
    } finally {
      await store.close();
    }
    const again = await Store.open(dir, { workers: 0 });
    expect(again.recovery).toEqual({ tempFilesRemoved: 0, packsIndexed: 0, packsQuarantined: [], orphanManifestsRemoved: 0 });
    await expectCommittedExact(again);
    await again.close();
  });

  it('a lock temp file left by a process killed while taking the lock is cleaned up on open', async () => {
    // A process that has exited: its PID names nobody now.
    const dead = spawn(process.execPath, ['-e', '0']);
    await new Promise((resolve) => dead.on('close', resolve));
    const litter = path.join(dir, `lock.${dead.pid}.tmp`);
    writeFileSync(litter, `${dead.pid}\n`);
    const store = await Store.open(dir, { workers: 0 });
    try {
      expect(existsSync(litter)).toBe(false);
      await expectCommittedExact(store);
    } finally {
      await store.close();
    }
    expect(readdirSync(dir).filter((n) => n.startsWith('lock'))).toEqual([]);
  });

  it('a commit record lost with the power: the manifest is an orphan, the snapshot never appears', async () => {
    const img = trialImage(1, 5150);
    const file = path.join(base, 'lost.img');
    writeFileSync(file, img);
    const r = await runCli(['put', '--store', dir, '--vm', 'lost', file], { env: CHILD_ENV });
    expect(r.code).toBe(0);
    const id = r.stdout.toString().trim();
    await withDb(dir, async (db) => {
      await db.batch().del(prefixedKey(KEY_SNAPSHOT, id)).del(vmKey('lost', id)).write();
    });
    const store = await Store.open(dir, { workers: 0 });
    try {
      expect(store.recovery.orphanManifestsRemoved).toBe(1);
      expect(existsSync(store.manifestPath(id))).toBe(false);
      expect((await store.listSnapshots()).map((x) => x.id)).not.toContain(id);
      await expect(store.resolveSnapshot(id)).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
      await expectCommittedExact(store);
    } finally {
      await store.close();
    }
  });

  it('index entries of sealed packs lost: the packs are the truth and re-index themselves on open', async () => {
    const img = trialImage(0, 6060);
    const file = path.join(base, 'reindex.img');
    writeFileSync(file, img);
    const r = await runCli(['put', '--store', dir, '--vm', 'reindex', '--parent', 'none', file], { env: CHILD_ENV });
    expect(r.code).toBe(0);
    const id = r.stdout.toString().trim();
    images.set(id, img);
    // Drop the pack records and chunk entries of every pack this put sealed.
    const before = await withDb(dir, async (db) => {
      const recs: PackRecord[] = [];
      for await (const v of db.values(prefixRange(Buffer.of(KEY_PACK)))) recs.push(parseRecord(v, PACK_RECORD));
      const snap = parseRecord((await db.get(prefixedKey(KEY_SNAPSHOT, id)))!, SNAPSHOT_RECORD);
      const newest = recs.sort((a, b) => b.id - a.id).slice(0, Math.max(1, Math.ceil(snap.newChunkBytes / PACK_TARGET)));
      const drop = new Set(newest.map((p) => p.id));
      const batch = db.batch();
      let chunks = 0;
      for await (const [k, v] of db.iterator(prefixRange(Buffer.of(KEY_CHUNK)))) {
        if (drop.has(decodeChunkValue(v).pack)) {
          batch.del(k);
          chunks++;
        }
      }
      for (const p of drop) batch.del(packKey(p));
      // The lost batches carried their chunk-generation stamps: the saved chunk table is stale now.
      stampChunkGeneration(batch);
      await batch.write();
      return { packs: drop.size, chunks };
    });
    expect(before.chunks).toBeGreaterThan(0);
    const store = await Store.open(dir, { workers: 2 });
    try {
      expect(store.recovery.packsIndexed).toBe(before.packs);
      await expectCommittedExact(store);
      // The re-indexed chunks deduplicate again: storing the same image adds no chunk.
      const s = await store.beginSession({ vm: 'reindex2', parent: 'none' });
      await s.writePages(0, img);
      const rec = await s.commit();
      images.set(rec.id, img);
      expect(rec.newChunks).toBe(0);
    } finally {
      await store.close();
    }
  });
});
