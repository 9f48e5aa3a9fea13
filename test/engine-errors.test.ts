/**
 * Bad input at the CLI (issue 2, "Durability and bad input"): every failure is exactly one line on
 * stderr starting "vnstore: error:", no stack trace, and the exit code documented in `vnstore --help`
 * (src/util/errors.ts). Disk full is real ENOSPC, on a small tmpfs mounted for the test.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/util/errors.js';
import {
  CLI,
  PAGE,
  compressiblePage,
  makeTempDir,
  packProblems,
  randomPage,
  removeDir,
  restoreToBuffer,
  runCli,
  singleErrorLine,
  type CliResult,
} from './helpers/engine.js';
import { Store } from '../src/store/store.js';
import { runCliInProcess } from './helpers/cli.js';

let root: string;
let store: string; // a store holding two snapshots of vm "a": idA, then idB (child of A)
let imageA: Buffer;
let imageB: Buffer;
let idA: string;
let idB: string;

/** Asserts a failed command: the exit code, one "vnstore: error:" line (no stack), containing `fragments`. */
function expectError(r: CliResult, exitCode: number, ...fragments: (string | RegExp)[]): string {
  const line = singleErrorLine(r.stderr);
  expect(line, r.stderr).toMatch(/^vnstore: error: \S/);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.code, r.stderr).toBe(exitCode);
  for (const f of fragments) {
    if (typeof f === 'string') expect(line).toContain(f);
    else expect(line).toMatch(f);
  }
  return line;
}

function image(pages: number, seed: number, tail: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < pages; i++)
    out.push(i % 3 === 0 ? Buffer.alloc(PAGE) : i % 3 === 1 ? randomPage(seed * 10_000 + i) : compressiblePage(seed + i));
  const img = Buffer.concat(out);
  return tail ? img.subarray(0, img.length - PAGE + tail) : img;
}

async function put(dir: string, vm: string, img: Buffer, extra: string[] = [], env?: Record<string, string>): Promise<CliResult> {
  const file = path.join(root, `in-${vm}-${Date.now()}-${Math.random().toString(16).slice(2)}.img`);
  writeFileSync(file, img);
  try {
    return await runCli(['put', '--store', dir, '--vm', vm, ...extra, file], { env });
  } finally {
    rmSync(file, { force: true });
  }
}

/** A private copy of the shared store, for tests that damage it. */
function copyStore(name: string): string {
  const dir = path.join(root, name);
  cpSync(store, dir, { recursive: true });
  return dir;
}

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('close', () => resolve()),
  );
}

beforeAll(async () => {
  root = makeTempDir('errors');
  store = path.join(root, 'store');
  expect((await runCli(['init', '--store', store])).code).toBe(0);
  imageA = image(300, 1, 1234);
  imageB = Buffer.from(imageA);
  randomPage(99).copy(imageB, 5 * PAGE);
  const a = await put(store, 'a', imageA, [], { VNSTORE_PACK_TARGET_BYTES: String(128 * 1024) });
  expect(a.code, a.stderr).toBe(0);
  idA = a.stdout.toString().trim();
  const b = await put(store, 'a', imageB, [], { VNSTORE_PACK_TARGET_BYTES: String(128 * 1024) });
  expect(b.code, b.stderr).toBe(0);
  idB = b.stdout.toString().trim();
});

afterAll(() => removeDir(root));

describe('CLI help', () => {
  it('--help works for the program and every command it lists', async () => {
    // The executable once; the rest in-process (the same text: compared here), one spawn each
    // cost 38 s of this file at load 7-10.
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    expect(await runCliInProcess(['--help'])).toEqual(top);
    expect(top.stderr).toBe('');
    const text = top.stdout.toString();
    expect(text).toMatch(/^Usage: vnstore /);
    // The exit codes documented in the help are the ones errors.ts maps to.
    for (const [code, n] of Object.entries({
      usage: 2,
      'not a store': 3,
      'unsupported format version': 4,
      'store locked': 5,
      'unknown snapshot': 6,
      'corrupt data': 7,
      'I/O error': 8,
      'disk full': 9,
      'unreadable input': 10,
      'store exists': 11,
    })) {
      expect(text).toContain(`${n} ${code}`);
    }
    expect(ERROR_CODES).toMatchObject({
      E_USAGE: 2,
      E_NOT_STORE: 3,
      E_FORMAT_VERSION: 4,
      E_LOCKED: 5,
      E_NOT_FOUND: 6,
      E_CORRUPT: 7,
      E_IO: 8,
      E_NO_SPACE: 9,
      E_INPUT: 10,
      E_EXISTS: 11,
      E_AMBIGUOUS: 13,
    });
    const commands = [...text.split(/^Commands:\n/m)[1].matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]).filter((c) => c !== 'help');
    expect(commands).toEqual(expect.arrayContaining(['init', 'put', 'restore', 'ls']));
    for (const cmd of commands) {
      let cmdHelp = '';
      for (const args of [
        [cmd, '--help'],
        ['help', cmd],
      ]) {
        const r = await runCliInProcess(args);
        if (args[1] === '--help') cmdHelp = r.stdout.toString();
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        expect(r.stderr).toBe('');
        expect(r.stdout.toString()).toMatch(new RegExp(`^Usage: vnstore ${cmd} `));
        // Commands that open no local store (bench, version, completion, switch), work through a
        // server (agent), or only group subcommands (qemu, agent: checked one by one below).
        if (!['bench', 'version', 'completion', 'agent', 'qemu', 'switch'].includes(cmd))
          expect(r.stdout.toString()).toContain('--store <dir>');
      }
      // Store format 3 is the default: no help describes a legacy layout as the one it works on.
      expect(cmdHelp, `${cmd} --help`).not.toMatch(/pack\s+format\s+[12]|constant\s+time|rebuild\s+the\s+chunk\s+index/);
      const subs = [...(cmdHelp.split(/^Commands:\n/m)[1] ?? '').matchAll(/^ {2}([a-z][a-z-]*)\b/gm)]
        .map((m) => m[1])
        .filter((c) => c !== 'help');
      for (const sub of subs) {
        const r = await runCliInProcess([cmd, sub, '--help']);
        expect(r.code, `${cmd} ${sub} --help: ${r.stderr}`).toBe(0);
        expect(r.stdout.toString()).toMatch(new RegExp(`^Usage: vnstore ${cmd} ${sub} `));
        // Subcommands that read or write a store name it; the agent's go through --server.
        expect(r.stdout.toString()).toContain(cmd === 'agent' ? '--server <addr>' : '--store <dir>');
      }
    }
  });

  // Usage errors found by the argument parser are bad input too: one line, exit 2.
  it.each([
    [['put', '--store', 'x', 'file.img'], /required option '--vm <name>'/],
    [['put', '--store', 'x', '--vm', 'a'], /missing required argument 'file'/],
    [['ls', '--bogus'], /unknown option '--bogus'/],
    [['bogus-command'], /unknown command 'bogus-command'/],
    [['restore'], /name the snapshot to restore \(an id or a unique prefix\), or give --group ID/],
  ])('usage error %j: one line, exit 2', async (args, message) => {
    expectError(await runCliInProcess(args as string[]), 2, message);
  });

  it('a usage error from the executable: one line, exit 2', async () => {
    expectError(await runCli(['ls', '--bogus']), 2, "unknown option '--bogus'");
  });
});

describe('bad input files', () => {
  it('missing input file: exit 10, names the file', async () => {
    const missing = path.join(root, 'no-such.img');
    expectError(await runCli(['put', '--store', store, '--vm', 'a', missing]), 10, missing, 'no such file');
  });

  it('a directory as input: exit 10', async () => {
    expectError(await runCli(['put', '--store', store, '--vm', 'a', root]), 10, root);
  });

  it('a FIFO with no writer as input: exit 10 at once (no wait for a writer), pointing to stdin', async () => {
    const fifo = path.join(root, 'input.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    expectError(await runCli(['put', '--store', store, '--vm', 'a', fifo]), 10, fifo, 'not a regular file', "give '-'");
  });

  it('empty input, as a file or on stdin: exit 2, nothing stored', async () => {
    const empty = path.join(root, 'empty.img');
    writeFileSync(empty, '');
    expectError(await runCli(['put', '--store', store, '--vm', 'a', empty]), 2, 'input is empty');
    expectError(await runCli(['put', '--store', store, '--vm', 'a', '-'], { input: Buffer.alloc(0) }), 2, 'input is empty');
    const ls = await runCli(['ls', '--store', store, '--json']);
    expect((JSON.parse(ls.stdout.toString()) as { id: string }[]).map((r) => r.id)).toEqual([idA, idB]);
  });

  it('unreadable input file (mode 000): exit 10, permission denied', async () => {
    const dir = makeTempDir('unreadable');
    try {
      chmodSync(dir, 0o755); // traversable by anyone: only the file's own mode is in the way
      const file = path.join(dir, 'secret.img');
      writeFileSync(file, randomPage(1));
      chmodSync(file, 0o000);
      const control = path.join(dir, 'readable.img');
      writeFileSync(control, randomPage(1));
      chmodSync(control, 0o644);
      // Root reads any file, so as root the command runs as "nobody" (uid 65534), which cannot.
      const as = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
      expectError(await runCli(['put', '--store', store, '--vm', 'a', file], as), 10, file, 'permission denied');
      // Control: the same user gets past a readable input (and then fails on the store, mode 0700, not the input).
      const c = await runCli(['put', '--store', store, '--vm', 'a', control], as);
      if (process.getuid?.() === 0) expectError(c, 8, 'permission denied', 'vnstore.json');
      else expect(c.code).toBe(0);
    } finally {
      removeDir(dir);
    }
  });

  it('an invalid VM name, an unknown parent: exit 2 and 6', async () => {
    expectError(await put(store, 'bad name', randomPage(3)), 2, 'VM name');
    expectError(await put(store, 'a', randomPage(3), ['--parent', 'ffffffffffffffff']), 6, 'ffffffffffffffff');
  });
});

describe('not a store, format version, existing store', () => {
  it('a directory that is not a store: exit 3 for every command', async () => {
    const plain = path.join(root, 'plain');
    mkdirSync(plain);
    const file = path.join(root, 'plain-input.img');
    writeFileSync(file, randomPage(5));
    // The executable once; then every command and kind of path in-process (the same error line
    // and status: reportError ends both).
    expectError(await runCli(['ls', '--store', plain]), 3, plain, 'not a vnstore store');
    for (const dir of [plain, path.join(root, 'does-not-exist'), file]) {
      expectError(await runCliInProcess(['ls', '--store', dir]), 3, dir, 'not a vnstore store');
      expectError(await runCliInProcess(['restore', '--store', dir, idA]), 3, 'not a vnstore store');
      expectError(await runCliInProcess(['put', '--store', dir, '--vm', 'a', file]), 3, 'not a vnstore store');
    }
    // $VNSTORE_STORE is used when --store is absent.
    expectError(await runCli(['ls'], { env: { VNSTORE_STORE: plain } }), 3, plain);
  });

  it('an unknown format version: exit 4; a garbled identity file: exit 3', async () => {
    const dir = copyStore('v3');
    const cfgPath = path.join(dir, 'vnstore.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as { version: number };
    // Version 2 is a store compact has written zstd containers into (read like version 1); version 3
    // names chunks by number (docs/FORMAT.md, "Store format 3"). 4 is unknown.
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, version: 4 }));
    expectError(await runCli(['ls', '--store', dir]), 4, 'format version 4');
    expectError(await runCli(['restore', '--store', dir, idA]), 4, 'format version 4');
    expectError(await put(dir, 'a', randomPage(1)), 4, 'format version 4');
    writeFileSync(cfgPath, '{ not json');
    expectError(await runCli(['ls', '--store', dir]), 3, 'not valid JSON');
  });

  it('init on an existing store or a non-empty directory: exit 11, nothing touched', async () => {
    const before = readFileSync(path.join(store, 'vnstore.json'));
    expectError(await runCli(['init', '--store', store]), 11, 'already holds a vnstore store');
    expect(readFileSync(path.join(store, 'vnstore.json')).equals(before)).toBe(true);
    const full = path.join(root, 'full-dir');
    mkdirSync(full);
    writeFileSync(path.join(full, 'keep.txt'), 'mine');
    expectError(await runCli(['init', '--store', full]), 11, 'not empty');
    expect(readdirSync(full)).toEqual(['keep.txt']);
  });
});

describe('locks', () => {
  it('a store locked by another live process: exit 5 naming its PID; a dead owner is taken over', async () => {
    const dir = copyStore('locked');
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      writeFileSync(path.join(dir, 'lock'), `${sleeper.pid}\n`);
      expectError(await runCli(['ls', '--store', dir]), 5, `PID ${sleeper.pid}`);
      expectError(await runCli(['restore', '--store', dir, idA]), 5, `PID ${sleeper.pid}`);
      expectError(await put(dir, 'a', randomPage(1)), 5, `PID ${sleeper.pid}`);
      expect(readFileSync(path.join(dir, 'lock'), 'utf8')).toBe(`${sleeper.pid}\n`); // left alone
    } finally {
      sleeper.kill('SIGKILL');
      await waitExit(sleeper);
    }
    // Its owner is gone (and reaped): the lock is stale and the next command takes it over.
    const ls = await runCli(['ls', '--store', dir, '--json']);
    expect(ls.code, ls.stderr).toBe(0);
    expect((JSON.parse(ls.stdout.toString()) as { id: string }[]).map((r) => r.id)).toEqual([idA, idB]);
    expect(existsSync(path.join(dir, 'lock'))).toBe(false); // released on exit
  });

  it('a put in progress holds the lock: other commands get exit 5 naming that put', async () => {
    const dir = copyStore('busy');
    // A put from a stdin that stays open keeps the store open until its input ends.
    const child = spawn(process.execPath, [CLI, 'put', '--store', dir, '--vm', 'busy', '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const img = Buffer.concat([randomPage(71), randomPage(72)]);
    child.stdin!.write(img.subarray(0, PAGE));
    for (let i = 0; i < 200 && !existsSync(path.join(dir, 'lock')); i++) await new Promise((r) => setTimeout(r, 25));
    expectError(await runCli(['ls', '--store', dir]), 5, `PID ${child.pid}`);
    child.stdin!.end(img.subarray(PAGE));
    await waitExit(child);
    expect(child.exitCode).toBe(0);
    const restored = await runCli(['restore', '--store', dir, out.trim()]);
    expect(restored.code).toBe(0);
    expect(restored.stdout.equals(img)).toBe(true);
  });
});

describe('snapshot ids', () => {
  it('unknown id or prefix: exit 6; ambiguous prefix: exit 13 naming candidates; malformed: exit 2', async () => {
    // The executable once; the other ids in-process (the same resolution, error line and status).
    expectError(await runCli(['restore', '--store', store, 'ffffffffffffffff']), 6, 'ffffffffffffffff');
    expectError(await runCliInProcess(['restore', '--store', store, 'ffff']), 6, 'ffff');
    let common = 0;
    while (idA[common] === idB[common]) common++;
    expect(common).toBeGreaterThanOrEqual(4); // ids are time-ordered: two puts a moment apart share a prefix
    const prefix = idA.slice(0, Math.max(4, Math.min(common, 15)));
    expectError(await runCliInProcess(['restore', '--store', store, prefix]), 13, 'ambiguous', idA, idB);
    expectError(await runCliInProcess(['restore', '--store', store, idA.slice(0, 3)]), 2, 'too short');
    expectError(await runCliInProcess(['restore', '--store', store, 'not-an-id']), 2, 'not a snapshot id');
    // A unique prefix works.
    const r = await runCliInProcess(['restore', '--store', store, idB.slice(0, common + 1)]);
    expect(r.code).toBe(0);
    expect(r.stdout.equals(imageB)).toBe(true);
  });
});

describe('restore outputs', () => {
  it('-o naming a directory: exit 2 before any work, nothing written beside it', async () => {
    const out = path.join(root, 'a-directory');
    mkdirSync(out);
    expectError(await runCli(['restore', '--store', store, idA, '-o', out]), 2, 'is a directory');
    expect(readdirSync(out)).toEqual([]);
    expect(readdirSync(root).filter((f) => f.includes('.vnstore-'))).toEqual([]);
  });

  it.runIf(existsSync('/dev/full'))('stdout on a full device: exit 9, one line naming standard output', async () => {
    const r = spawnSync(`exec "${process.execPath}" "${CLI}" restore --store "${store}" ${idA} > /dev/full`, {
      shell: '/bin/sh',
      encoding: 'utf8',
    });
    expectError({ code: r.status, signal: r.signal, stdout: Buffer.alloc(0), stderr: r.stderr }, 9, 'standard output', 'no space left');
  });
});

describe('corruption is detected and named, never returned as data', () => {
  function packsOf(dir: string): string[] {
    return readdirSync(path.join(dir, 'packs')).sort();
  }

  async function expectRestoreFails(dir: string, id: string, ...fragments: (string | RegExp)[]): Promise<void> {
    // To a file: the output never appears, nor does its temp file.
    const outDir = path.join(root, `out-${path.basename(dir)}-${id}`);
    mkdirSync(outDir, { recursive: true });
    const out = path.join(outDir, 'image.raw');
    expectError(await runCli(['restore', '--store', dir, id, '-o', out]), 7, ...fragments);
    expect(readdirSync(outDir)).toEqual([]);
    // To stdout: same error and exit code (output may be partial: documented in restore --help).
    // In-process: the same reads as the executable's run above, with stdout as the output.
    expectError(await runCliInProcess(['restore', '--store', dir, id]), 7, ...fragments);
  }

  it('a flipped payload byte in a pack: exit 7 naming snapshot and pack; other snapshots unaffected', async () => {
    const dir = copyStore('corrupt-pack');
    const pack = packsOf(dir)[0];
    const file = path.join(dir, 'packs', pack);
    const bytes = readFileSync(file);
    bytes[16 + 5] ^= 0x40; // inside the first chunk's payload
    writeFileSync(file, bytes);
    await expectRestoreFails(dir, idA, `snapshot ${idA}`, `pack ${pack}`);
    // The store still opens and lists; a snapshot not using that chunk restores exactly.
    const s = await put(dir, 'other', Buffer.concat([randomPage(501), randomPage(502)]));
    expect(s.code).toBe(0);
    const r = await runCli(['restore', '--store', dir, s.stdout.toString().trim()]);
    expect(r.code).toBe(0);
    expect(r.stdout.equals(Buffer.concat([randomPage(501), randomPage(502)]))).toBe(true);
  });

  // Format 3 numbers chunks; only a pack's TOC says which numbers it held, so once the pack is gone
  // or quarantined the message names the chunk and says where to look and what to run.
  const LOST_CHUNK = [/page \d+ names chunk \d+, which no pack holds/, 'quarantine/', "run 'vnstore check'"];

  it('a truncated pack: quarantined on open; exit 7 naming snapshot and chunk, and what to run', async () => {
    const dir = copyStore('truncated-pack');
    const pack = packsOf(dir)[0];
    const file = path.join(dir, 'packs', pack);
    truncateSync(file, Math.floor(statSync(file).size / 2));
    await expectRestoreFails(dir, idA, `snapshot ${idA}`, ...LOST_CHUNK);
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(path.join(dir, 'quarantine'))).toEqual([pack]);
  });

  it('a missing pack: exit 7 naming snapshot and chunk, and what to run', async () => {
    const dir = copyStore('missing-pack');
    rmSync(path.join(dir, 'packs', packsOf(dir)[0]));
    await expectRestoreFails(dir, idA, `snapshot ${idA}`, ...LOST_CHUNK);
  });

  /** A private format-1 store holding image A (made once, then copied), for the legacy layout's tests. */
  let legacy: { dir: string; id: string } | undefined;
  async function legacyStore(name: string): Promise<{ dir: string; id: string }> {
    if (!legacy) {
      const dir = path.join(root, 'legacy');
      expect((await runCli(['init', '--store', dir, '--format', '1'])).code).toBe(0);
      const r = await put(dir, 'a', imageA, [], { VNSTORE_PACK_TARGET_BYTES: String(128 * 1024) });
      expect(r.code, r.stderr).toBe(0);
      legacy = { dir, id: r.stdout.toString().trim() };
    }
    const dir = path.join(root, name);
    cpSync(legacy.dir, dir, { recursive: true });
    return { dir, id: legacy.id };
  }

  it('format 1 (legacy layout, its index names packs): a truncated or missing pack is named', async () => {
    const { dir, id } = await legacyStore('legacy-truncated');
    const pack = packsOf(dir)[0];
    const file = path.join(dir, 'packs', pack);
    truncateSync(file, Math.floor(statSync(file).size / 2));
    await expectRestoreFails(dir, id, `snapshot ${id}`, `pack ${pack}`);
    rmSync(file);
    await expectRestoreFails(dir, id, `snapshot ${id}`, `pack ${pack}`);
  });

  it('a flipped byte in a manifest: exit 7 naming the snapshot', async () => {
    const dir = copyStore('corrupt-manifest');
    for (const id of [idB, idA]) {
      const file = path.join(dir, 'manifests', `${id}.vnm`);
      const bytes = readFileSync(file);
      bytes[Math.floor(bytes.length / 2)] ^= 0x01;
      writeFileSync(file, bytes);
      await expectRestoreFails(dir, id, id);
    }
    // Listing does not need manifests: the catalog still answers.
    const ls = await runCli(['ls', '--store', dir, '--json']);
    expect(ls.code).toBe(0);
  });

  it('format 1 (legacy layout, format 3 keeps no chunk-table cache): a garbled cache is ignored, restores stay exact', async () => {
    const { dir, id } = await legacyStore('bad-cache');
    const cache = path.join(dir, 'chunk-table.bin');
    expect(existsSync(cache)).toBe(true);
    const bytes = readFileSync(cache);
    for (let i = 40; i < bytes.length; i += 97) bytes[i] ^= 0xff;
    writeFileSync(cache, bytes);
    const r = await runCli(['restore', '--store', dir, id]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.equals(imageA)).toBe(true);
  });

  it('an index that cannot be opened: exit 7', async () => {
    const dir = copyStore('bad-index');
    writeFileSync(path.join(dir, 'db', 'CURRENT'), 'MANIFEST-999999\n');
    expectError(await runCli(['ls', '--store', dir]), 7, 'index');
  });
});

// ------------------------------------------------------------------ disk full (real ENOSPC)

/** Mounts a tmpfs of `mib` MiB at `dir`; false where this environment cannot mount. */
function mountTmpfs(dir: string, mib: number): boolean {
  mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m,mode=0700`, 'tmpfs', dir], { stdio: 'ignore' });
  return r.status === 0;
}

function umount(dir: string): void {
  spawnSync('umount', [dir], { stdio: 'ignore' });
}

/** Fills the file system of `dir` until `leaveBytes` remain free (approximately, in 4 KiB blocks). */
function fillUntil(dir: string, leaveBytes: number): string {
  const filler = path.join(dir, 'filler');
  const r = spawnSync('df', ['-B1', '--output=avail', dir], { encoding: 'utf8' });
  const avail = Number(r.stdout.trim().split('\n').pop());
  const size = Math.max(0, avail - leaveBytes);
  try {
    writeFileSync(filler, Buffer.alloc(size));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  }
  return filler;
}

const canMount = (() => {
  const probe = makeTempDir('mount-probe');
  const ok = mountTmpfs(probe, 1);
  if (ok) umount(probe);
  removeDir(probe);
  return ok;
})();

// Genuine environment limit: mounting a tmpfs needs root (CAP_SYS_ADMIN). Without it there is no way
// to get a real ENOSPC here, and these tests are skipped (the run says so), except under CI=true:
// CI runs as root, so there a failure to mount fails the suite instead of hiding it.
describe.skipIf(!canMount && process.env.CI !== 'true')('disk full (tmpfs, real ENOSPC)', () => {
  const SMALL_PACKS = { VNSTORE_PACK_TARGET_BYTES: String(64 * 1024) };
  let mnt: string;
  let first: Buffer;
  let firstId: string;
  let fresh: Buffer;

  beforeAll(async () => {
    if (!canMount) throw new Error('cannot mount a tmpfs (needs root); CI runs as root, so this must work there');
    mnt = path.join(root, 'mnt');
    first = image(200, 7, 100);
    fresh = Buffer.concat(Array.from({ length: 256 }, (_, i) => randomPage(77_000 + i))); // 1 MiB, incompressible
  });

  afterAll(() => umount(mnt));

  let template: { dir: string; usedBytes: number } | undefined;

  /** Bytes in use on the file system of `dir`. */
  function usedBytes(dir: string): number {
    const r = spawnSync('df', ['-B1', '--output=used', dir], { encoding: 'utf8' });
    return Number(r.stdout.trim().split('\n').pop());
  }

  /**
   * A new 8 MiB tmpfs holding a store with one snapshot (`first`). The first call makes it with the
   * CLI (init, put) and keeps a copy; later calls copy that store onto the new tmpfs, which must then
   * use exactly the blocks the CLI-made one did (the probes below start from the same state; a
   * dozen of them would otherwise spend most of their time on the same init and put).
   */
  async function freshStoreOnTmpfs(): Promise<string> {
    umount(mnt);
    expect(mountTmpfs(mnt, 8)).toBe(true);
    const dir = path.join(mnt, 'store');
    if (template) {
      cpSync(template.dir, dir, { recursive: true, preserveTimestamps: true });
      expect(usedBytes(mnt), 'the copied store takes the space the CLI-made one took').toBe(template.usedBytes);
      return dir;
    }
    expect((await runCli(['init', '--store', dir])).code).toBe(0);
    const r = await put(dir, 'vm', first, [], SMALL_PACKS);
    expect(r.code, r.stderr).toBe(0);
    firstId = r.stdout.toString().trim();
    template = { dir: path.join(root, 'tmpfs-store-template'), usedBytes: usedBytes(mnt) };
    cpSync(dir, template.dir, { recursive: true, preserveTimestamps: true });
    return dir;
  }

  /** The store opens, lists only `expected`, and restores them exactly (output off the full disk). */
  async function expectIntact(dir: string, expected: Map<string, Buffer>): Promise<void> {
    const ls = await runCli(['ls', '--store', dir, '--json']);
    expect(ls.code, ls.stderr).toBe(0);
    expect((JSON.parse(ls.stdout.toString()) as { id: string }[]).map((r) => r.id).sort()).toEqual([...expected.keys()].sort());
    for (const [id, img] of expected) {
      const out = path.join(root, `restored-${id}.raw`);
      const r = await runCli(['restore', '--store', dir, id, '-o', out]);
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(out).equals(img)).toBe(true);
      rmSync(out);
    }
  }

  /**
   * expectIntact without spawning the CLI: a copy of the store (off the tmpfs) opens, lists exactly
   * `expected`, and each restores exactly. A copy, because an in-process restore leaves a pack file
   * open after Store.close() (seen in /proc/self/fd), and the tmpfs could not be unmounted.
   */
  async function expectIntactInProcess(dir: string, expected: Map<string, Buffer>, context: string): Promise<void> {
    const copy = path.join(root, `intact-${Date.now()}-${Math.random().toString(16).slice(2)}`);
    cpSync(dir, copy, { recursive: true });
    const s = await Store.open(copy, { workers: 0 });
    try {
      const listed = await s.listSnapshots();
      expect(listed.map((r) => r.id).sort(), context).toEqual([...expected.keys()].sort());
      for (const rec of listed) expect((await restoreToBuffer(s, rec)).equals(expected.get(rec.id)!), `${context}: ${rec.id}`).toBe(true);
    } finally {
      await s.close();
      removeDir(copy);
    }
  }

  it('put on a full disk: exit 9, nothing half-written listed or left behind; the store keeps working', async () => {
    const dir = await freshStoreOnTmpfs();
    const filler = fillUntil(mnt, 200 * 1024);
    expectError(await put(dir, 'vm', fresh, [], SMALL_PACKS), 9, 'no space left on device');
    // With the disk still full: the store opens, lists the old snapshot only, and restores it.
    await expectIntact(dir, new Map([[firstId, first]]));
    expect(readdirSync(path.join(dir, 'tmp'))).toEqual([]);
    expect(readdirSync(path.join(dir, 'manifests'))).toEqual([`${firstId}.vnm`]);
    expect(await packProblems(dir)).toEqual([]);
    // Space comes back: the same put now succeeds and restores exactly.
    rmSync(filler);
    const r = await put(dir, 'vm', fresh, [], SMALL_PACKS);
    expect(r.code, r.stderr).toBe(0);
    await expectIntact(
      dir,
      new Map([
        [firstId, first],
        [r.stdout.toString().trim(), fresh],
      ]),
    );
  });

  it('restore -o onto a full disk: exit 9 and no output file (never a short image that looks finished)', async () => {
    const dir = path.join(root, 'restore-src');
    cpSync(store, dir, { recursive: true });
    umount(mnt);
    expect(mountTmpfs(mnt, 1)).toBe(true); // 1 MiB: less than image A
    expect(imageA.length).toBeGreaterThan(1024 * 1024);
    const out = path.join(mnt, 'image.raw');
    // --no-sparse: a sparse restore leaves zero pages as holes and may well fit; this test is about
    // running out of space part-way.
    expectError(await runCli(['restore', '--store', dir, idA, '-o', out, '--no-sparse']), 9, 'no space left on device', out);
    expect(readdirSync(mnt)).toEqual([]);
    umount(mnt);
  });

  it('sparse restore -o (workers write the file) onto a full disk: exit 9 and no output file', async () => {
    const dir = copyStore('restore-sparse-src');
    const noisy = Buffer.concat(Array.from({ length: 512 }, (_, i) => randomPage(88_000 + i))); // 2 MiB, no zero page
    const r = await put(dir, 'noisy', noisy, ['--parent', 'none']);
    expect(r.code, r.stderr).toBe(0);
    umount(mnt);
    expect(mountTmpfs(mnt, 1)).toBe(true);
    const out = path.join(mnt, 'image.raw');
    expectError(await runCli(['restore', '--store', dir, r.stdout.toString().trim(), '-o', out]), 9, 'no space left on device', out);
    expect(readdirSync(mnt)).toEqual([]);
    umount(mnt);
  });

  it('running out of space at any point of a put (lock, index, packs, manifest, commit): exit 9 or success, never damage', async () => {
    const outcomes: string[] = [];
    /** One put with `free` bytes left on the disk; checks everything; true when the put succeeded. */
    const probe = async (free: number): Promise<boolean> => {
      const dir = await freshStoreOnTmpfs();
      const filler = fillUntil(mnt, free);
      const r = await put(dir, 'vm', fresh, [], SMALL_PACKS);
      const context = `${free} bytes free: exit ${r.code}: ${r.stderr}`;
      const expected = new Map([[firstId, first]]);
      if (r.code === 0) expected.set(r.stdout.toString().trim(), fresh);
      else expectError(r, 9, 'no space left on device');
      outcomes.push(`${free}: ${r.code === 0 ? 'ok' : r.stderr.trim().replace(/\/\S*\/mnt\/store/, 'STORE')}`);
      // Still full: a read-only command either works or says the disk is full (never "corrupt").
      const ls = await runCli(['ls', '--store', dir, '--json']);
      if (ls.code !== 0) expectError(ls, 9, 'no space left on device');
      else
        expect((JSON.parse(ls.stdout.toString()) as { id: string }[]).map((x) => x.id).sort(), context).toEqual(
          [...expected.keys()].sort(),
        );
      // Space comes back: everything committed is intact, nothing partial shows, and ingest goes on.
      // Checked in this process (open, list, restore through the library): what is probed here is the
      // put that hit ENOSPC; the CLI's ls and restore after a full disk are the first test's.
      rmSync(filler);
      await expectIntactInProcess(dir, expected, context);
      expect(await packProblems(dir), context).toEqual([]);
      expect(readdirSync(path.join(dir, 'manifests')).sort(), context).toEqual([...expected.keys()].map((id) => `${id}.vnm`).sort());
      if (r.code !== 0) {
        const again = await put(dir, 'vm', fresh, [], SMALL_PACKS);
        expect(again.code, `${context}; put after freeing space: ${again.stderr}`).toBe(0);
        expected.set(again.stdout.toString().trim(), fresh);
        await expectIntactInProcess(dir, expected, `${context}; after the put that followed`);
      }
      return r.code === 0;
    };
    // No room at all (the lock file), room for LevelDB's own files only, room for some packs.
    for (const free of [0, 16 * 1024, 512 * 1024]) expect(await probe(free)).toBe(false);
    // Then close in on the least space the put needs: just below it, ENOSPC strikes the last writes
    // (the final packs, the index batch, the manifest, the commit record).
    let lo = 896 * 1024; // the 1 MiB of new packs cannot fit
    let hi = fresh.length + 384 * 1024;
    expect(await probe(hi)).toBe(true);
    while (hi - lo > 8192) {
      const mid = lo + Math.floor((hi - lo) / 8192) * 4096;
      if (await probe(mid)) hi = mid;
      else lo = mid;
    }
    for (const below of [4096, 8192, 12288]) await probe(hi - below);
    if (process.env.VNSTORE_ENOSPC_VERBOSE) console.log(outcomes.join('\n'));
    expect(outcomes.filter((o) => o.endsWith(': ok')).length, outcomes.join('\n')).toBeGreaterThan(0);
    // 13 probes of 2-4 CLI runs each: 78-97 s at load 10-15 (bench/RESULTS.md), over 120 s at load
    // 16 beside another crash-test file. The limit only catches a hang.
  }, 300_000);
});
