/**
 * `vnstore restore --group ID -o DIR`, from a local store and through `vnstore serve`: every member
 * as DIR/<member>.img with its exact bytes, an unknown group exit 6, and a damaged member refusing
 * the whole group with nothing written (not even the members that verified); a crash between two
 * renames, completed by the next restore into the directory, so it never stays a mix of two groups.
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { compressiblePage, PAGE, randomPage, restoreToBuffer, runCli, singleErrorLine, tempDirs } from './helpers/engine.js';
import { putGroup } from './helpers/maintenance.js';
import { startServe } from './helpers/serve-process.js';

const tempDir = tempDirs();

/** Memory with zero and compressible pages, a disk, and a channel-state image of odd length. */
function members(seed: number): { vm: string; image: Buffer }[] {
  const memory = Buffer.concat(
    Array.from({ length: 24 }, (_, i) =>
      i % 3 === 0 ? Buffer.alloc(PAGE) : i % 3 === 1 ? randomPage(seed * 100 + i) : compressiblePage(seed * 100 + i),
    ),
  );
  const disk = Buffer.concat(Array.from({ length: 8 }, (_, i) => randomPage(seed * 1000 + i)));
  const channels = randomPage(seed * 7 + 3).subarray(0, 1234);
  return [
    { vm: 'vm0', image: memory },
    { vm: 'vm0.disk', image: disk },
    { vm: 'envg.channels', image: channels },
  ];
}

async function storeWithGroup(root: string): Promise<{ store: string; tokenFile: string; images: { vm: string; image: Buffer }[] }> {
  const store = path.join(root, 'store');
  const r = await runCli(['init', '--store', store, '--json']);
  expect(r.code).toBe(0);
  const images = members(1);
  const s = await Store.open(store, { workers: 0, packTargetBytes: 16 * 1024 });
  try {
    await putGroup(s, 'envg-e1', images);
  } finally {
    await s.close();
  }
  return { store, tokenFile: (JSON.parse(r.stdout.toString()) as { tokenFile: string }).tokenFile, images };
}

function expectRestored(dir: string, images: { vm: string; image: Buffer }[]): void {
  expect(readdirSync(dir).sort()).toEqual(images.map((m) => `${m.vm}.img`).sort());
  for (const m of images) {
    const file = path.join(dir, `${m.vm}.img`);
    expect(readFileSync(file).equals(m.image), m.vm).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  }
}

describe('vnstore restore --group', () => {
  it('writes every member exactly, from the store and through a server, and lists them with --json', async () => {
    const root = tempDir('rg');
    const { store, tokenFile, images } = await storeWithGroup(root);
    const local = path.join(root, 'local');
    const r = await runCli(['restore', '--group', 'envg-e1', '-o', local, '--store', store, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expectRestored(local, images);
    const out = JSON.parse(r.stdout.toString()) as { group: string; dir: string; members: { vm: string; file: string; bytes: number }[] };
    expect(out.group).toBe('envg-e1');
    expect(out.dir).toBe(local);
    expect(out.members.map((m) => [m.vm, m.file, m.bytes]).sort()).toEqual(
      images.map((m) => [m.vm, path.join(local, `${m.vm}.img`), m.image.length]).sort(),
    );

    const srv = await startServe(store);
    try {
      const remote = path.join(root, 'remote');
      const rr = await runCli(['restore', '--group', 'envg-e1', '-o', remote, '--server', srv.address, '--token-file', tokenFile]);
      expect(rr.stderr).toBe('');
      expect(rr.code).toBe(0);
      expectRestored(remote, images);
      const missing = await runCli(['restore', '--group', 'envg-e9', '-o', remote, '--server', srv.address, '--token-file', tokenFile]);
      expect(missing.code).toBe(6);
      expect(singleErrorLine(missing.stderr)).toMatch(/no group envg-e9/);
    } finally {
      await srv.stop();
    }
    const missing = await runCli(['restore', '--group', 'envg-e9', '-o', path.join(root, 'none'), '--store', store]);
    expect(missing.code).toBe(6);
    expect(singleErrorLine(missing.stderr)).toMatch(/no group envg-e9/);
    const both = await runCli(['restore', 'abcd', '--group', 'envg-e1', '--store', store]);
    expect(both.code).toBe(2);
    expect(singleErrorLine(both.stderr)).toMatch(/a snapshot id or --group, not both/);
  });

  it('a damaged member refuses the whole group and leaves the directory as it was', async () => {
    const root = tempDir('rg-damage');
    const { store, tokenFile, images } = await storeWithGroup(root);
    const dir = path.join(root, 'out');
    const r0 = await runCli(['restore', '--group', 'envg-e1', '-o', dir, '--store', store]);
    expect(r0.code).toBe(0);
    // Older files under the members' names (vm0.img with other bytes): a refused group keeps them.
    writeFileSync(path.join(dir, 'vm0.img'), 'older');
    const before = readdirSync(dir).sort();
    // The last pack holds only the last member written (the disk and channel pages come after the memory).
    const packs = readdirSync(path.join(store, 'packs')).sort();
    const last = path.join(store, 'packs', packs[packs.length - 1]);
    const bytes = readFileSync(last);
    bytes[Math.floor(bytes.length / 2)] ^= 0x5a;
    writeFileSync(last, bytes);
    // The memory member still restores on its own: the refusal below is of the whole group.
    const s = await Store.open(store, { workers: 0 });
    try {
      const vm0 = (await s.listSnapshots()).find((x) => x.vm === 'vm0');
      expect((await restoreToBuffer(s, vm0!)).equals(images[0].image)).toBe(true);
    } finally {
      await s.close();
    }
    const r = await runCli(['restore', '--group', 'envg-e1', '-o', dir, '--store', store]);
    expect(r.code).toBe(7);
    expect(singleErrorLine(r.stderr)).toMatch(/corrupt|damaged|does not match/i);
    expect(readdirSync(dir).sort()).toEqual(before);
    expect(readFileSync(path.join(dir, 'vm0.img'), 'utf8')).toBe('older');
    expect(readFileSync(path.join(dir, 'vm0.disk.img')).equals(images[1].image)).toBe(true);

    const srv = await startServe(store);
    try {
      const rr = await runCli(['restore', '--group', 'envg-e1', '-o', dir, '--server', srv.address, '--token-file', tokenFile]);
      expect(rr.code).toBe(7);
      expect(readdirSync(dir).sort()).toEqual(before);
      expect(readFileSync(path.join(dir, 'vm0.img'), 'utf8')).toBe('older');
    } finally {
      await srv.stop();
    }
  });

  it('a crash between two renames leaves a journal; the next restore into the directory completes them first', async () => {
    const root = tempDir('rg-crash');
    const { store, images: e1 } = await storeWithGroup(root);
    const e2 = members(2);
    const s = await Store.open(store, { workers: 0 });
    try {
      await putGroup(s, 'envg-e2', e2);
    } finally {
      await s.close();
    }
    const dir = path.join(root, 'out');
    for (const renamed of [1, 2]) {
      expect((await runCli(['restore', '--group', 'envg-e1', '-o', dir, '--store', store])).code).toBe(0);
      expectRestored(dir, e1);
      // killed after its first (second) rename: DIR holds that many of e2's members, the rest e1's, and the journal
      const r = await runCli(['restore', '--group', 'envg-e2', '-o', dir, '--store', store], {
        env: { VNSTORE_OUTPUT_FAILPOINT: `renamed:${renamed}` },
      });
      expect(r.signal).toBe('SIGKILL');
      expect(existsSync(path.join(dir, '.vnstore-restore.journal'))).toBe(true);
      const fromE2 = e2.filter((m) => readFileSync(path.join(dir, `${m.vm}.img`)).equals(m.image)).length;
      const fromE1 = e1.filter((m) => readFileSync(path.join(dir, `${m.vm}.img`)).equals(m.image)).length;
      expect([fromE2, fromE1]).toEqual([renamed, e1.length - renamed]);
      // any next restore into DIR (even of a group that does not exist) completes e2's renames first
      const next = await runCli(['restore', '--group', 'envg-e9', '-o', dir, '--store', store]);
      expect(next.code).toBe(6);
      expectRestored(dir, e2);
    }
  });
});
