/**
 * Issue 15, "Smaller ones" and "a lock that waits": each case failed before its fix. Through the
 * built CLI (dist/cli/bin.cjs): exit codes, the one error line, and exact output.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCliError as expectError, putImage, waitExit } from './helpers/cli.js';
import { PAGE, compressiblePage, makeTempDir, randomPage, removeDir, runCli, singleErrorLine, type CliResult } from './helpers/engine.js';

let root: string;
let store: string; // vm "a": idA, idB (child of A), idC (child of B); vm "b": idD
const ids: Record<string, string> = {};
const images: Record<string, Buffer> = {};

function image(pages: number, seed: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < pages; i++)
    out.push(i % 3 === 0 ? Buffer.alloc(PAGE) : i % 3 === 1 ? randomPage(seed * 10_000 + i) : compressiblePage(seed + i));
  return Buffer.concat(out);
}

function put(dir: string, vm: string, img: Buffer, extra: string[] = []): Promise<CliResult> {
  return putImage(root, dir, vm, img, extra);
}

function copyStore(name: string): string {
  const dir = path.join(root, name);
  cpSync(store, dir, { recursive: true });
  return dir;
}

beforeAll(async () => {
  root = makeTempDir('rough');
  store = path.join(root, 'store');
  expect((await runCli(['init', '--store', store])).code).toBe(0);
  images.A = image(90, 1);
  images.B = Buffer.from(images.A);
  randomPage(77).copy(images.B, 4 * PAGE);
  images.C = Buffer.from(images.B);
  randomPage(78).copy(images.C, 7 * PAGE);
  images.D = image(60, 2);
  for (const [name, vm] of [
    ['A', 'a'],
    ['B', 'a'],
    ['C', 'a'],
    ['D', 'b'],
  ]) {
    const r = await put(store, vm, images[name]);
    expect(r.code, r.stderr).toBe(0);
    ids[name] = r.stdout.toString().trim();
  }
}, 60_000);

afterAll(() => removeDir(root));

describe('a store path that is a file', () => {
  it('init --store FILE: exit 2, one line saying it is a file (was a raw ENOTDIR scandir, exit 8)', async () => {
    const file = path.join(root, 'plain-file');
    writeFileSync(file, 'x');
    const line = expectError(await runCli(['init', '--store', file]), 2, `${file} is a file`);
    expect(line).not.toMatch(/ENOTDIR|scandir/);
    expectError(await runCli(['init', '--store', path.join(file, 'sub')]), 2, 'a parent of this path is a file');
  });

  it('ls --store FILE: exit 3 without advising init (which cannot work there)', async () => {
    const file = path.join(root, 'plain-file-2');
    writeFileSync(file, 'x');
    for (const cmd of [['ls'], ['stats'], ['restore', ids.A]]) {
      const line = expectError(await runCli([...cmd, '--store', file]), 3, `${file} is not a vnstore store: it is a file, not a directory`);
      expect(line).not.toContain('vnstore init');
    }
  });
});

describe('restore -o into a missing directory', () => {
  it('is refused up front naming the path the user gave, not a temp name; nothing is written', async () => {
    const rel = path.join('no-such-dir', 'x.img');
    const line = expectError(
      await runCli(['restore', '--store', store, ids.A, '-o', rel], { cwd: root }),
      2,
      `cannot write ${rel}`,
      'does not exist',
    );
    expect(line).not.toContain('.tmp');
    expect(existsSync(path.join(root, 'no-such-dir'))).toBe(false);
    writeFileSync(path.join(root, 'a-file'), 'x');
    expectError(
      await runCli(['restore', '--store', store, ids.A, '-o', path.join('a-file', 'x.img')], { cwd: root }),
      2,
      `${path.join(root, 'a-file')} is not a directory`,
    );
  });
});

describe('snapshot id prefixes', () => {
  it('an ambiguous prefix says how many snapshots it matches (exit 13)', async () => {
    // Four snapshots stored within a few seconds: they share the seconds part's first digits.
    let common = 0;
    while ([ids.B, ids.C, ids.D].every((id) => id[common] === ids.A[common])) common++;
    expect(common).toBeGreaterThanOrEqual(4);
    const prefix = ids.A.slice(0, Math.min(common, 8));
    expectError(await runCli(['restore', '--store', store, prefix]), 13, 'ambiguous', 'matches 4 snapshots', ids.A, ids.B, ids.C);
  });

  it('ids of snapshots stored a second or more apart differ within their first 8 digits', async () => {
    const dir = path.join(root, 'spaced');
    expect((await runCli(['init', '--store', dir])).code).toBe(0);
    const first = (await put(dir, 'a', images.A)).stdout.toString().trim();
    await new Promise((r) => setTimeout(r, 1100));
    const second = (await put(dir, 'a', images.B)).stdout.toString().trim();
    expect(first.slice(0, 8)).not.toBe(second.slice(0, 8));
    expect(first < second).toBe(true);
    const r = await runCli(['restore', '--store', dir, second.slice(0, 8)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.equals(images.B)).toBe(true);
  });
});

describe('ls', () => {
  it('shows a forgotten parent as (forgotten), and in --json as parentForgotten', async () => {
    const dir = copyStore('forgotten-parent');
    expect((await runCli(['forget', '--store', dir, ids.A])).code).toBe(0);
    const text = (await runCli(['ls', '--store', dir])).stdout.toString();
    const rowB = text.split('\n').find((l) => l.startsWith(ids.B))!;
    expect(rowB.split(/\s{2,}/)[4]).toBe('(forgotten)');
    const rowC = text.split('\n').find((l) => l.startsWith(ids.C))!;
    expect(rowC.split(/\s{2,}/)[4]).toBe(ids.B);
    expect(text).not.toContain(ids.A);
    const rows = JSON.parse((await runCli(['ls', '--store', dir, '--json'])).stdout.toString()) as {
      id: string;
      parent: string | null;
      parentForgotten: boolean;
    }[];
    expect(rows.map((r) => [r.id, r.parent, r.parentForgotten])).toEqual([
      [ids.B, ids.A, true],
      [ids.C, ids.B, false],
      [ids.D, null, false],
    ]);
    // What ls shows as a parent can be restored.
    const r = await runCli(['restore', '--store', dir, rows[1].parent!]);
    expect(r.stdout.equals(images.B)).toBe(true);
  });

  it('--vm with no snapshots: exit 6, one line, like stats', async () => {
    expectError(await runCli(['ls', '--store', store, '--vm', 'nosuchvm']), 6, 'no snapshots of VM nosuchvm');
    expectError(await runCli(['stats', '--store', store, '--vm', 'nosuchvm']), 6, 'no snapshots of VM nosuchvm');
    const r = await runCli(['ls', '--store', store, '--vm', 'b', '--json']);
    expect((JSON.parse(r.stdout.toString()) as { id: string }[]).map((x) => x.id)).toEqual([ids.D]);
  });
});

describe('stats after a forget', () => {
  it('the summary dedup figure is marked a lower bound, never contradicting --detail', async () => {
    const dir = copyStore('stats-forget');
    expect((await runCli(['forget', '--store', dir, ids.D])).code).toBe(0);
    const plain = (await runCli(['stats', '--store', dir])).stdout.toString();
    const detail = (await runCli(['stats', '--store', dir, '--detail'])).stdout.toString();
    const j = JSON.parse((await runCli(['stats', '--store', dir, '--detail', '--json'])).stdout.toString()) as {
      summary: { nonZeroPages: number; referencedChunks: number; dedupRatio: number };
    };
    const plainLine = plain.split('\n').find((l) => l.startsWith('dedup '))!;
    const detailLine = detail.split('\n').find((l) => l.startsWith('dedup '))!;
    // Exact: non-zero pages of A, B, C over the distinct chunks they reference (A's 60 + one per child).
    expect(j.summary.nonZeroPages).toBe(180);
    expect(j.summary.referencedChunks).toBe(62);
    expect(detailLine).toMatch(/^dedup 2\.90x {3}/);
    const bound = Number(/^dedup (\d+\.\d+)x or more \(exact with --detail\)/.exec(plainLine)?.[1]);
    expect(bound).toBeLessThan(j.summary.dedupRatio); // D's 40 chunks are still indexed until gc
    expect((await runCli(['gc', '--store', dir])).code).toBe(0);
    const after = (await runCli(['stats', '--store', dir])).stdout
      .toString()
      .split('\n')
      .find((l) => l.startsWith('dedup '))!;
    expect(after).toMatch(/^dedup 2\.90x or more/);
  });
});

describe('put --help', () => {
  it('lists every field put --json prints', async () => {
    const r = await put(copyStore('help'), 'help', images.A, ['--json', '--group', 'g1']);
    const fields = Object.keys(JSON.parse(r.stdout.toString()) as object);
    expect(fields).toContain('group');
    expect(fields).toContain('parent');
    const help = (await runCli(['put', '--help'])).stdout.toString().replace(/\s+/g, ' ');
    const listed = /print \{([^}]*)\} as JSON/
      .exec(help)?.[1]
      .split(',')
      .map((f) => f.trim());
    expect(listed).toEqual(fields);
  });
});

describe('--lock-wait', () => {
  it('without it, or when the holder stays: exit 5 naming the PID and the server', async () => {
    const dir = copyStore('locked');
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      writeFileSync(path.join(dir, 'lock'), `${sleeper.pid}\n`);
      expectError(await runCli(['ls', '--store', dir]), 5, `PID ${sleeper.pid}`, '--lock-wait', 'vnstore serve');
      const t0 = Date.now();
      expectError(await runCli(['stats', '--store', dir, '--lock-wait', '0.7']), 5, `PID ${sleeper.pid}`, 'waited 0.7 s');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(700);
    } finally {
      sleeper.kill('SIGKILL');
      await waitExit(sleeper);
    }
  });

  it('waits for the holder to go, then runs (ls, restore, put)', async () => {
    const dir = copyStore('lock-wait');
    for (const cmd of [
      ['ls', '--json'],
      ['restore', ids.C],
      ['put', '--vm', 'w', path.join(root, 'w.img')],
    ]) {
      writeFileSync(path.join(root, 'w.img'), images.D);
      const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
      writeFileSync(path.join(dir, 'lock'), `${sleeper.pid}\n`);
      const t0 = Date.now();
      const run = runCli([...cmd, '--store', dir, '--lock-wait', '20']);
      setTimeout(() => sleeper.kill('SIGKILL'), 800);
      const r = await run;
      expect(r.code, r.stderr).toBe(0);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(800);
      if (cmd[0] === 'restore') expect(r.stdout.equals(images.C)).toBe(true);
      if (cmd[0] === 'ls') expect((JSON.parse(r.stdout.toString()) as unknown[]).length).toBe(4);
      await waitExit(sleeper);
    }
    expect(readdirSync(dir)).not.toContain('lock');
  });

  it('refuses a value that is not a number of seconds (exit 2)', async () => {
    const r = await runCli(['ls', '--store', store, '--lock-wait', 'soon']);
    expect(r.code).toBe(2);
    expect(singleErrorLine(r.stderr)).toContain('--lock-wait');
  });
});

describe('init in a new directory', () => {
  it('a store can still be made in a new directory', async () => {
    const dir = path.join(root, 'fresh', 'store');
    mkdirSync(path.dirname(dir));
    expect((await runCli(['init', '--store', dir])).code).toBe(0);
  });
});
