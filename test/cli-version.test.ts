// `vnstore version` / `--version` say which hashing and codec paths run, with their versions: the
// answer must be what the library really picks in that environment, not a fixed string.
import { describe, expect, it } from 'vitest';
import { randomFillSync } from 'node:crypto';
import { readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startServe } from './helpers/serve-process.js';
import { makeTempDir, removeDir, REPO_ROOT, runCli } from './helpers/engine.js';
import { nativeCodecStatus } from '../src/chunk/codec.js';
import { pageHasherStatus } from '../src/chunk/hash.js';
import { zstdStatus } from '../src/chunk/zstd.js';
import type { VersionReport } from '../src/cli/version.js';
import { AgentClient } from '../src/index.js';

const pkgVersion = (JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const depVersion = (name: string) =>
  (JSON.parse(readFileSync(path.join(REPO_ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
const hasher = pageHasherStatus();
const codec = nativeCodecStatus();
const zstd = zstdStatus();

async function versionJson(env: Record<string, string | undefined> = {}): Promise<VersionReport> {
  const r = await runCli(['version', '--json'], { env });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.toString('utf8')) as VersionReport;
}

describe('vnstore version', () => {
  it('--json reports the paths this machine runs, with the versions behind them', async () => {
    const r = await versionJson();
    expect(r.vnstore).toBe(pkgVersion);
    expect(r.node).toBe(process.version);
    expect(r.hashing.library).toBe(`@napi-rs/blake-hash ${depVersion('@napi-rs/blake-hash')}`);
    expect(r.codec.library).toBe(`lz4-napi ${depVersion('lz4-napi')}`);
    expect(r.hashing.addonAbi).toBe(3);
    expect(r.codec.addonAbi).toBe(6);
    // The same answer the library gives in this (test) process.
    expect(r.hashing.path).toBe(hasher.native ? 'native-simd' : 'napi-rs');
    expect(r.hashing.kernel).toBe(hasher.native ? hasher.simd : undefined);
    expect(r.hashing.addon).toBe(hasher.addon);
    expect(r.codec.path).toBe(codec.active === 'native' ? 'native' : 'typescript');
    if (codec.loaded) {
      const v = codec.lz4Version!;
      expect(r.codec.liblz4).toBe(`${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`);
    }
    if (codec.active === 'native') expect(r.codec.reason).toBeUndefined();
    else expect(r.codec.reason).toBe(process.env.VNSTORE_NATIVE === '0' ? 'disabled by VNSTORE_NATIVE=0' : codec.error);
    expect(r.zstd.library).toBe(`fzstd ${depVersion('fzstd')}`);
    expect(r.zstd.path).toBe(zstd.path === 'native' ? 'native' : 'fzstd');
    expect(r.zstd.libzstd).toBe(zstd.libzstd);
    expect(r.zstd.reason).toBe(zstd.reason);
    expect(r.nodeFlags).toEqual([]); // run as `node CLI`, not through bin/vnstore
    expect(r.glibcTunables).toBe(process.env.GLIBC_TUNABLES ?? null);
  });

  it('the executable, bin/vnstore, runs node in its own process with a larger old generation', async () => {
    const launcher = path.join(REPO_ROOT, 'bin/vnstore');
    const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    expect(pkg.bin.vnstore).toBe('bin/vnstore');
    // Run directly, and through a symlink elsewhere as npm links it into node_modules/.bin.
    const dir = makeTempDir('launcher');
    try {
      const link = path.join(dir, 'vnstore');
      symlinkSync(launcher, link);
      for (const exe of [launcher, link]) {
        const r = spawnSync(exe, ['version', '--json'], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        expect((JSON.parse(r.stdout) as VersionReport).nodeFlags).toEqual(['--initial-old-space-size=256']);
      }
      // `exec`: the PID a caller gets is node's, so a SIGKILL of it stops the server (the crash tests rely on it).
      const store = path.join(dir, 'store');
      expect((await runCli(['init', '--store', store])).code).toBe(0);
      const srv = await startServe(store, [], {}, link);
      const argv = readFileSync(`/proc/${srv.child.pid}/cmdline`, 'utf8').split('\0');
      expect(path.basename(argv[0])).toBe('node');
      expect(argv[1]).toBe('--initial-old-space-size=256');
      expect(path.resolve(argv[2])).toBe(path.join(REPO_ROOT, 'dist/cli/bin.cjs'));
      expect((await srv.stop('SIGKILL')).signal).toBe('SIGKILL');
    } finally {
      removeDir(dir);
    }
  });

  it('the executable asks glibc for huge pages, keeping tunables the caller set', () => {
    const launcher = path.join(REPO_ROOT, 'bin/vnstore');
    const cases: [string | undefined, string][] = [
      [undefined, 'glibc.malloc.hugetlb=1'],
      ['', 'glibc.malloc.hugetlb=1'],
      ['glibc.malloc.arena_max=2', 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'],
      ['glibc.malloc.hugetlb=0', 'glibc.malloc.hugetlb=0'], // an operator's choice stands
      ['glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0', 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0'],
    ];
    for (const [given, want] of cases) {
      const env = { ...process.env };
      if (given === undefined) delete env.GLIBC_TUNABLES;
      else env.GLIBC_TUNABLES = given;
      const r = spawnSync(launcher, ['version', '--json'], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as VersionReport).glibcTunables, `GLIBC_TUNABLES=${given}`).toBe(want);
    }
  });

  // Where transparent huge pages are on request ("madvise", the Debian default) and the C library is
  // glibc: a server started by the executable holds its large buffers in huge pages, and one told
  // glibc.malloc.hugetlb=0 holds none (so the first figure is the executable's doing).
  const thp = /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', { encoding: 'utf8', flag: 'r' }))?.[1];
  const glibc = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime;
  it.runIf(thp === 'madvise' && glibc !== undefined)("a served store's large buffers sit in huge pages", async () => {
    const launcher = path.join(REPO_ROOT, 'bin/vnstore');
    const dir = makeTempDir('thp');
    try {
      const image = randomFillSync(Buffer.alloc(32 << 20));
      const hugeKiB = async (tunables: string | undefined): Promise<number> => {
        const store = path.join(dir, `store-${tunables ?? 'default'}`);
        expect((await runCli(['init', '--store', store])).code).toBe(0);
        const srv = await startServe(store, [], { GLIBC_TUNABLES: tunables }, launcher);
        try {
          const token = readFileSync(path.join(store, 'access-token'), 'utf8').trim();
          const client = await AgentClient.connect({ server: srv.address, token });
          const s = await client.beginSession({ vm: 'vm', memoryBytes: image.length });
          for (let o = 0; o < image.length; o += 4 << 20) await s.writePages(o / 4096, image.subarray(o, o + (4 << 20)));
          await s.commit({ byteLength: image.length, unwritten: 'zero' });
          await client.close();
          const rollup = readFileSync(`/proc/${srv.child.pid}/smaps_rollup`, 'utf8');
          return Number(/^AnonHugePages:\s+(\d+) kB$/m.exec(rollup)?.[1]);
        } finally {
          await srv.stop();
        }
      };
      expect(await hugeKiB(undefined)).toBeGreaterThanOrEqual(2048);
      expect(await hugeKiB('glibc.malloc.hugetlb=0')).toBe(0);
    } finally {
      removeDir(dir);
    }
  });

  it('prints the same facts as four lines, and --version as one', async () => {
    const r = await runCli(['version']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.toString('utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toBe(`vnstore ${pkgVersion} (node ${process.version})`);
    expect(lines[1]).toBe(
      hasher.native
        ? `hashing: native SIMD BLAKE3, ${hasher.simd} kernel (vnstore_hash ABI 3)`
        : `hashing: @napi-rs/blake-hash ${depVersion('@napi-rs/blake-hash')}, one call per page (native hasher not used: ${hasher.error})`,
    );
    expect(lines[2]).toMatch(
      codec.active === 'native'
        ? /^codec: {3}native LZ4, system liblz4 \d+\.\d+\.\d+ \(vnstore_native ABI 6\)$/
        : /^codec: {3}TypeScript over lz4-napi /,
    );
    expect(lines[3]).toMatch(
      zstd.path === 'native'
        ? /^zstd: {4}native, system libzstd \d+\.\d+\.\d+ \(compress and decompress\)$/
        : /^zstd: {4}fzstd \S+, decompress only \(native zstd not used: /,
    );

    const hashing = hasher.native
      ? `native SIMD BLAKE3 ${hasher.simd}`
      : `@napi-rs/blake-hash ${depVersion('@napi-rs/blake-hash')} per page`;
    const codecPart = codec.active === 'native' ? /native LZ4, liblz4 \d+\.\d+\.\d+/ : /TypeScript, lz4-napi /;
    for (const flag of ['--version', '-V']) {
      const one = await runCli([flag]);
      expect(one.code, one.stderr).toBe(0);
      const line = one.stdout.toString('utf8');
      expect(line.startsWith(`vnstore ${pkgVersion} (node ${process.version}; hashing: ${hashing}; codec: `)).toBe(true);
      expect(line).toMatch(codecPart);
      expect(line).toMatch(zstd.path === 'native' ? /; zstd: libzstd \d+\.\d+\.\d+\)$/m : /; zstd: fzstd \S+, decompress only\)$/m);
      expect(line.endsWith(')\n') && line.indexOf('\n') === line.length - 1).toBe(true);
    }
  });

  it('VNSTORE_NATIVE=0 reports both fallbacks and why', async () => {
    const r = await versionJson({ VNSTORE_NATIVE: '0' });
    expect(r.hashing).toMatchObject({ path: 'napi-rs', addon: 'disabled', reason: 'disabled by VNSTORE_NATIVE=0' });
    expect(r.hashing.kernel).toBeUndefined();
    expect(r.codec).toMatchObject({ path: 'typescript', reason: 'disabled by VNSTORE_NATIVE=0' });
    expect(r.zstd).toMatchObject({ path: 'fzstd', reason: 'disabled by VNSTORE_NATIVE=0' });
  });

  it.runIf(codec.loaded)(
    'an addon that cannot bind libzstd keeps native LZ4 and reports zstd on fzstd, with the loader error',
    async () => {
      const r = await versionJson({ VNSTORE_ZSTD_SONAME: 'libzstd.so.999', VNSTORE_NATIVE: undefined });
      expect(r.codec.path).toBe('native');
      expect(r.zstd.path).toBe('fzstd');
      expect(r.zstd.libzstd).toBeUndefined();
      expect(r.zstd.reason).toMatch(/dlopen\(libzstd\.so\.999\) failed/);
    },
  );

  it.runIf(codec.loaded)('a codec addon that cannot bind liblz4 is reported as failed, with the loader error', async () => {
    const r = await versionJson({ VNSTORE_LZ4_SONAME: 'liblz4.so.999', VNSTORE_NATIVE: undefined });
    expect(r.codec.path).toBe('typescript');
    expect(r.codec.addon).toBe('failed');
    expect(r.codec.reason).toMatch(/dlopen\(liblz4\.so\.999\) failed/);
    if (hasher.addon !== 'disabled') expect(r.hashing.addon).toBe(hasher.addon); // the hasher does not need liblz4
  });
});
