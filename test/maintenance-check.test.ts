/**
 * check (issue 3, "check"): flipped bytes in packs, truncated packs, deleted index entries, deleted
 * or damaged manifests are each found and named (pack, chunk, affected snapshots, next command);
 * `--repair-index` rebuilds the index from the packs, salvages good chunks and quarantines bad packs
 * (never deleting them); and through all of it `vnstore restore` never exits 0 with wrong bytes.
 */
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packFileName } from '../src/format/pack.js';
import { chunkKey, openDb } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { runCliInProcess } from './helpers/cli.js';
import { digestsOf, imageOf, putImage, readIndex } from './helpers/maintenance.js';

const PACK_TARGET = 16 * 1024;
const ENV = { VNSTORE_PACK_TARGET_BYTES: String(PACK_TARGET) };
let root: string;
let pristine: string;
const images = new Map<string, Buffer>();
const ids: Record<string, string> = {};

beforeAll(async () => {
  root = makeTempDir('check');
  pristine = path.join(root, 'pristine');
  await Store.init(pristine, { format: 1 }); // the legacy index and packs (format 3: check-v3.test.ts)
  const store = await Store.open(pristine, { workers: 0, packTargetBytes: PACK_TARGET });
  const a1 = Array.from({ length: 30 }, (_, i) => (i % 7 === 3 ? 'z' : i % 3 === 0 ? `c${i}` : `r${i}`));
  const a2 = a1.map((n, i) => (i % 5 === 1 ? `r${300 + i}` : n));
  const a3 = a2.map((n, i) => (i % 6 === 2 ? `r${600 + i}` : n));
  const b1 = [...a1.slice(0, 8), ...Array.from({ length: 12 }, (_, i) => `r${900 + i}`)];
  for (const [name, vm, pages, tail] of [
    ['a1', 'a', a1, 0],
    ['a2', 'a', a2, 0],
    ['a3', 'a', a3, 100],
    ['b1', 'b', b1, 0],
  ] as const) {
    const img = imageOf([...pages], tail);
    const r = await putImage(store, vm, img);
    ids[name] = r.id;
    images.set(r.id, img);
  }
  await store.close();
});

afterAll(() => removeDir(root));

function copy(name: string): string {
  const dir = path.join(root, name);
  cpSync(pristine, dir, { recursive: true });
  return dir;
}

interface Problem {
  kind: string;
  message: string;
  pack?: string;
  chunk?: string;
  affects: string[];
  next: string;
}

async function check(
  dir: string,
  ...args: string[]
): Promise<{ code: number | null; ok: boolean; problems: Problem[]; report: Record<string, unknown>; stderr: string }> {
  const r = await runCli(['check', '--store', dir, '--json', ...args], { env: ENV });
  const report = JSON.parse(r.stdout.toString());
  if (r.code !== 0) {
    expect(r.stderr.split('\n').filter(Boolean), r.stderr).toHaveLength(1);
    expect(r.stderr).toMatch(/^vnstore: error: check found \d+ problem\(s\); next: /);
  }
  return { code: r.code, ok: report.ok, problems: report.problems, report, stderr: r.stderr };
}

/**
 * Restores every snapshot with the CLI: exit 0 means exact bytes; anything else leaves no file. The
 * command line runs in this process (runCliInProcess: a check after the damage and the repair under
 * test, ~60 node start-ups fewer); the executable's own restore refusal is asserted in the tests.
 */
async function restoreAll(dir: string, label: string): Promise<Record<string, 'ok' | number>> {
  const out: Record<string, 'ok' | number> = {};
  for (const [name, id] of Object.entries(ids)) {
    const file = path.join(root, `${label}-${name}.img`);
    rmSync(file, { force: true });
    const r = await runCliInProcess(['restore', '--store', dir, id, '-o', file]);
    if (r.code === 0) {
      expect(readFileSync(file).equals(images.get(id)!), `${label}: ${name} exit 0 means exact bytes`).toBe(true);
      out[name] = 'ok';
    } else {
      expect(existsSync(file), `${label}: failed restore of ${name} leaves no file`).toBe(false);
      expect(r.stderr.split('\n').filter(Boolean), r.stderr).toHaveLength(1);
      out[name] = r.code ?? -1;
    }
    // And a refusal to stdout too: the same exit code, no image. (A snapshot -o restored exactly
    // restores to stdout by the same reads: cli-restore.test.ts covers stdout; one spawn less each.)
    if (out[name] !== 'ok') {
      const s = await runCliInProcess(['restore', '--store', dir, id]);
      expect(s.code, `${label}: ${name} to stdout: ${s.stderr}`).toBe(out[name]);
      expect(s.stdout.length, `${label}: ${name} to stdout: no image`).toBe(0);
    }
    rmSync(file, { force: true });
  }
  return out;
}

const digestsUsedBy = (name: string) => new Set(digestsOf(images.get(ids[name])!).digests);

/** A chunk only this snapshot uses, and where it is stored. */
async function chunkOnlyIn(dir: string, name: string): Promise<{ digest: string; pack: number; offset: number; storedLength: number }> {
  const others = new Set(
    Object.keys(ids)
      .filter((n) => n !== name)
      .flatMap((n) => [...digestsUsedBy(n)]),
  );
  const index = await readIndex(dir);
  const mine = [...digestsUsedBy(name)].filter((d) => !others.has(d));
  const d = mine.find((x) => index.get(x)!.storedLength === 4096)!; // a raw chunk: any flipped byte shows
  return { digest: d, ...index.get(d)! };
}

function flip(file: string, offset: number): void {
  const b = readFileSync(file);
  b[offset] ^= 0x5a;
  writeFileSync(file, b);
}

describe('vnstore check', () => {
  it('a clean store checks clean, --help and --json work, a subset reads some packs', async () => {
    const dir = copy('clean');
    const help = await runCliInProcess(['check', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toMatch(/--repair-index/);
    const c = await check(dir, '--read-data');
    expect(c.code, c.stderr).toBe(0);
    expect(c.problems).toEqual([]);
    const checked = c.report.checked as { packs: number; packsRead: number; snapshots: number };
    expect(checked.snapshots).toBe(4);
    expect(checked.packsRead).toBe(checked.packs);
    const sub = await check(dir, '--read-data-subset', '50%');
    expect((sub.report.checked as { packsRead: number }).packsRead).toBe(Math.ceil(checked.packs / 2));
    const human = await runCli(['check', '--store', dir]);
    expect(human.code).toBe(0);
    expect(human.stdout.toString()).toMatch(/no problems found\n$/);
    const bad = await runCli(['check', '--store', dir, '--read-data-subset', '0']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/percentage/);
    expect(await restoreAll(dir, 'clean')).toEqual({ a1: 'ok', a2: 'ok', a3: 'ok', b1: 'ok' });
  });

  it('a flipped byte in a pack payload: --read-data names pack, chunk and snapshot; repair salvages, quarantines, a re-put heals', async () => {
    const dir = copy('flip-payload');
    const victim = await chunkOnlyIn(dir, 'a3');
    const packFile = path.join(dir, 'packs', packFileName(victim.pack));
    const packBytes = readFileSync(packFile);
    flip(packFile, victim.offset + 100);
    // The structure is intact (payloads have no per-chunk checksum in the table); reading finds it.
    expect((await check(dir)).code).toBe(0);
    const c = await check(dir, '--read-data');
    expect(c.code).toBe(7);
    const p = c.problems.find((x) => x.kind === 'chunk-corrupt')!;
    expect(p.pack).toBe(packFileName(victim.pack));
    expect(p.chunk).toBe(victim.digest);
    expect(p.affects).toEqual([ids.a3]);
    expect(p.next).toMatch(/vnstore check --repair-index/);
    expect(c.report.next).toEqual(['vnstore check --repair-index', expect.stringContaining(`vnstore forget ${ids.a3}`)]);
    const human = await runCli(['check', '--store', dir, '--read-data']);
    expect(human.stdout.toString()).toContain(`affects snapshot(s): ${ids.a3}`);
    // Restore of a3 fails naming snapshot and pack; the others are exact.
    expect(await restoreAll(dir, 'flip')).toEqual({ a1: 'ok', a2: 'ok', a3: 7, b1: 'ok' });
    const r = await runCli(['restore', '--store', dir, ids.a3, '-o', path.join(root, 'x.img')]);
    expect(r.stderr).toMatch(new RegExp(`snapshot ${ids.a3}.*pack ${packFileName(victim.pack)}.*corrupt`));

    const rep = await check(dir, '--repair-index');
    const repair = rep.report.repair as {
      packsSalvaged: { pack: string; goodChunks: number; badChunks: number }[];
      packsQuarantined: { pack: string; to: string }[];
    };
    expect(repair.packsSalvaged).toEqual([expect.objectContaining({ pack: packFileName(victim.pack), badChunks: 1 })]);
    expect(repair.packsQuarantined[0].to).toBe(`quarantine/${packFileName(victim.pack)}`);
    // Quarantined, never deleted: the damaged bytes are kept as they were.
    const quarantined = readFileSync(path.join(dir, 'quarantine', packFileName(victim.pack)));
    expect(quarantined.length).toBe(packBytes.length);
    expect(existsSync(packFile)).toBe(false);
    // What remains is exactly the lost chunk, affecting a3 only.
    expect(rep.code).toBe(7);
    expect(rep.problems.map((x) => [x.kind, x.chunk, x.affects])).toEqual([['chunk-missing', victim.digest, [ids.a3]]]);
    expect(await restoreAll(dir, 'repaired')).toEqual({ a1: 'ok', a2: 'ok', a3: 7, b1: 'ok' });
    // Storing the same content again heals the store: a3 restores under its own id. (--parent none:
    // against its parent a3, the put would take the lost page as unchanged and not store it.)
    const img = path.join(root, 'a3.img');
    writeFileSync(img, images.get(ids.a3)!);
    expect((await runCli(['put', '--store', dir, '--vm', 'a', '--parent', 'none', img], { env: ENV })).code).toBe(0);
    const healed = await check(dir, '--read-data');
    expect(healed.problems).toEqual([]);
    expect((await restoreAll(dir, 'healed')).a3).toBe('ok');
  });

  it('a flipped byte in a pack table of contents: found without reading data; repair keeps every chunk via the index', async () => {
    const dir = copy('flip-toc');
    const victim = await chunkOnlyIn(dir, 'b1');
    const packFile = path.join(dir, 'packs', packFileName(victim.pack));
    const size = statSync(packFile).size;
    flip(packFile, size - 32 - 5); // inside the table of contents
    const c = await check(dir);
    expect(c.code).toBe(7);
    const p = c.problems.find((x) => x.kind === 'pack-unreadable')!;
    expect(p.pack).toBe(packFileName(victim.pack));
    expect(p.message).toMatch(/table of contents checksum/);
    expect(p.affects).toContain(ids.b1);
    // The payload is intact: restores still succeed with exact bytes (or fail cleanly).
    await restoreAll(dir, 'toc');
    const rep = await check(dir, '--repair-index');
    expect(rep.problems, JSON.stringify(rep.report.repair)).toEqual([]);
    expect(rep.code).toBe(0);
    expect(readdirSync(path.join(dir, 'quarantine'))).toEqual([packFileName(victim.pack)]);
    expect(await restoreAll(dir, 'toc-repaired')).toEqual({ a1: 'ok', a2: 'ok', a3: 'ok', b1: 'ok' });
  });

  it('a truncated pack: named with the snapshots it breaks; restore fails cleanly; repair saves what is left', async () => {
    const dir = copy('truncate');
    const victim = await chunkOnlyIn(dir, 'a2');
    const packFile = path.join(dir, 'packs', packFileName(victim.pack));
    truncateSync(packFile, victim.offset + 10);
    const c = await check(dir);
    expect(c.code).toBe(7);
    const p = c.problems.find((x) => x.kind === 'pack-size')!;
    expect(p.pack).toBe(packFileName(victim.pack));
    expect(p.message).toMatch(/truncated/);
    expect(p.affects).toContain(ids.a2);
    const before = await restoreAll(dir, 'trunc');
    expect(before.a2).toBe(7);
    const rep = await check(dir, '--repair-index');
    expect(rep.code).toBe(7);
    expect(rep.problems.every((x) => x.kind === 'chunk-missing')).toBe(true);
    expect(rep.problems.flatMap((x) => x.affects)).toContain(ids.a2);
    expect(readdirSync(path.join(dir, 'quarantine'))).toEqual([packFileName(victim.pack)]);
    const after = await restoreAll(dir, 'trunc-repaired');
    expect(after.a2).toBe(7);
  });

  it('deleted index entries: found as missing chunks of the snapshots using them; repair rebuilds them from the packs', async () => {
    const dir = copy('index');
    const gone = [...digestsUsedBy('a1')].slice(0, 5);
    const db = openDb(path.join(dir, 'db'));
    await db.open();
    for (const d of gone) await db.del(chunkKey(Buffer.from(d, 'hex')));
    await db.close();
    const c = await check(dir);
    expect(c.code).toBe(7);
    const missing = c.problems.filter((x) => x.kind === 'chunk-missing');
    expect(missing.map((x) => x.chunk).sort()).toEqual([...gone].sort());
    for (const m of missing) expect(m.affects).toContain(ids.a1);
    expect(c.problems.some((x) => x.kind === 'counters')).toBe(true); // the counters count those entries
    await restoreAll(dir, 'index');
    const rep = await check(dir, '--repair-index');
    expect(rep.problems).toEqual([]);
    // The entries come back exactly as they were, so the counters agree again without a reset.
    expect((rep.report.repair as { indexEntriesAdded: number }).indexEntriesAdded).toBe(5);
    expect(existsSync(path.join(dir, 'quarantine'))).toBe(false);
    expect(await restoreAll(dir, 'index-repaired')).toEqual({ a1: 'ok', a2: 'ok', a3: 'ok', b1: 'ok' });
    expect((await check(dir, '--read-data')).code).toBe(0);
  });

  it('gc never copies a corrupt chunk: the step is skipped (pack untouched, exit 7), the rest proceeds', async () => {
    const dir = copy('gc-corrupt');
    // A pack holding both a chunk only a1 uses (dead once a1 is forgotten) and a live chunk.
    const index = await readIndex(dir);
    const onlyA1 = new Set([...digestsUsedBy('a1')].filter((d) => !['a2', 'a3', 'b1'].some((n) => digestsUsedBy(n).has(d))));
    const liveRaw = [...index].filter(([d, l]) => !onlyA1.has(d) && l.storedLength === 4096);
    const [liveDigest, loc] = liveRaw.find(([, l]) => [...onlyA1].some((d) => index.get(d)!.pack === l.pack))!;
    const packFile = path.join(dir, 'packs', packFileName(loc.pack));
    flip(packFile, loc.offset + 7);
    const damaged = readFileSync(packFile);
    expect((await runCli(['forget', '--store', dir, ids.a1])).code).toBe(0);
    const gc = await runCli(['gc', '--store', dir, '--max-unused', '0', '--json'], { env: ENV });
    expect(gc.code).toBe(7);
    expect(gc.stderr).toMatch(
      new RegExp(`^vnstore: error: gc left 1 step\\(s\\) undone: chunk ${liveDigest} in pack ${packFileName(loc.pack)} .* is corrupt`),
    );
    const rep = JSON.parse(gc.stdout.toString());
    expect(rep.result.skipped).toHaveLength(1);
    expect(rep.result.skipped[0].packs).toContain(packFileName(loc.pack));
    expect(rep.result.packsRewritten + rep.result.packsDropped).toBeGreaterThan(0); // the other steps ran
    expect(readFileSync(packFile).equals(damaged)).toBe(true); // left exactly as it was
    const c = await check(dir, '--read-data');
    expect(c.problems.map((x) => [x.kind, x.chunk])).toEqual([['chunk-corrupt', liveDigest]]);
    const names = Object.keys(ids).filter((n) => n !== 'a1' && digestsUsedBy(n).has(liveDigest));
    expect(c.problems[0].affects).toEqual(names.map((n) => ids[n]).sort());
    await restoreAll(dir, 'gc-corrupt'); // exit 0 only with exact bytes
  });

  it('a deleted or damaged manifest: the snapshot and every snapshot delta-encoded through it are named; forget clears it', async () => {
    const dir = copy('manifest');
    rmSync(path.join(dir, 'manifests', `${ids.a1}.vnm`));
    const c = await check(dir);
    expect(c.code).toBe(7);
    const p = c.problems.find((x) => x.kind === 'manifest-missing')!;
    expect(p.message).toMatch(new RegExp(`manifest of snapshot ${ids.a1} is missing`));
    // a2 is delta-encoded against a1, a3 against a2.
    expect(p.affects).toEqual([ids.a1, ids.a2, ids.a3].sort());
    expect(p.next).toMatch(/^vnstore forget/);
    expect(await restoreAll(dir, 'manifest')).toEqual({ a1: 7, a2: 7, a3: 7, b1: 'ok' });

    const dir2 = copy('manifest-flip');
    flip(path.join(dir2, 'manifests', `${ids.b1}.vnm`), 40);
    const c2 = await check(dir2);
    expect(c2.problems.map((x) => [x.kind, x.affects])).toEqual([['manifest-corrupt', [ids.b1]]]);
    expect(await restoreAll(dir2, 'manifest-flip')).toEqual({ a1: 'ok', a2: 'ok', a3: 'ok', b1: 7 });
    const f = await runCli(['forget', '--store', dir2, ids.b1]);
    expect(f.code, f.stderr).toBe(0);
    expect((await check(dir2)).problems).toEqual([]);
  });
});
