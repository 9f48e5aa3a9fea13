/**
 * The executable: init makes a private token, `token` prints and rotates it, `serve` owns the store
 * (other commands name it), `agent push` / `agent restore` round-trip exactly, SIGTERM exits 0.
 */
import { statSync, writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, singleErrorLine, tempDirs, PAGE } from './helpers/engine.js';
import { makeImage } from './helpers/server.js';
import { startServe } from './helpers/serve-process.js';

const tempDir = tempDirs();

async function initCli(root: string): Promise<{ store: string; tokenFile: string }> {
  const store = path.join(root, 'store');
  const r = await runCli(['init', '--store', store, '--json']);
  expect(r.code).toBe(0);
  const tokenFile = (JSON.parse(r.stdout.toString()) as { tokenFile: string }).tokenFile;
  return { store, tokenFile };
}

describe('vnstore serve / token / agent', () => {
  it('init writes a 0600 token; token prints it; --rotate replaces it', async () => {
    const { store, tokenFile } = await initCli(tempDir('cli'));
    expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
    const t1 = readFileSync(tokenFile, 'utf8').trim();
    expect(t1).toMatch(/^[0-9a-f]{64}$/);
    expect((await runCli(['token', '--store', store])).stdout.toString().trim()).toBe(t1);
    const rotated = (await runCli(['token', '--rotate', '--store', store])).stdout.toString().trim();
    expect(rotated).toMatch(/^[0-9a-f]{64}$/);
    expect(rotated).not.toBe(t1);
    expect(readFileSync(tokenFile, 'utf8').trim()).toBe(rotated);
  });

  it('serve refuses a --pack-cache that is not a number of MiB or "all": exit 2, one line, before anything runs', async () => {
    const { store } = await initCli(tempDir('cli'));
    for (const bad of ['lots', '-1', '1.5']) {
      const r = await runCli(['serve', '--store', store, '--pack-cache', bad]);
      expect(r.code).toBe(2);
      expect(singleErrorLine(r.stderr)).toBe("vnstore: error: --pack-cache takes a whole number of MiB, or 'all'");
    }
  });

  it('push of several 16 MiB calls, two in flight, from a file, standard input and a dirty list: each restores exactly', async () => {
    const root = tempDir('blocks');
    const { store, tokenFile } = await initCli(root);
    const srv = await startServe(store);
    try {
      const pages = 2 * 4096 + 300; // three write calls, the last short, and a short last page
      const image = makeImage(pages, 7, 1000);
      const imgFile = path.join(root, 'vm.mem');
      writeFileSync(imgFile, image);
      const push = async (args: string[], input?: Buffer) => {
        const r = await runCli(['agent', 'push', '--server', srv.address, '--token-file', tokenFile, '--vm', 'vm', '--json', ...args], {
          input,
        });
        expect(r.stderr.toString()).toBe('');
        expect(r.code).toBe(0);
        return JSON.parse(r.stdout.toString()) as { id: string; pagesOffered: number; pagesSent: number };
      };
      const restored = async (id: string) => {
        const out = path.join(root, `${id}.out`);
        expect((await runCli(['agent', 'restore', '--server', srv.address, '--token-file', tokenFile, id, '-o', out])).code).toBe(0);
        return readFileSync(out);
      };
      const first = await push([imgFile]);
      expect((await restored(first.id)).equals(image)).toBe(true);
      // Through standard input, every page of every block changed but for a tenth: they cross again.
      const second = makeImage(pages, 8, 1000);
      for (let p = 0; p < pages; p += 10) image.copy(second, p * PAGE, p * PAGE, (p + 1) * PAGE);
      const viaStdin = await push(['-'], second);
      expect((await restored(viaStdin.id)).equals(second)).toBe(true);
      // A dirty list of more than two calls' pages (all but every 50th), changed again.
      const third = Buffer.from(second);
      const listed: number[] = [];
      for (let p = 0; p <= pages; p++) if (p % 50 !== 0) listed.push(p);
      const fresh = makeImage(pages, 9, 1000);
      for (const p of listed) fresh.copy(third, p * PAGE, p * PAGE, Math.min(third.length, (p + 1) * PAGE));
      writeFileSync(imgFile, third);
      writeFileSync(path.join(root, 'dirty'), listed.join('\n'));
      const dirty = await push(['--dirty-list', path.join(root, 'dirty'), imgFile]);
      expect(dirty.pagesOffered).toBeLessThanOrEqual(listed.length);
      expect((await restored(dirty.id)).equals(third)).toBe(true);
    } finally {
      expect(await srv.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    }
  });

  it('push and restore through a served store; local commands name the server; SIGTERM exits 0', async () => {
    const root = tempDir('cli');
    const { store, tokenFile } = await initCli(root);
    // Every pack's pages dropped from the page cache once sealed: the restores below read the disk.
    const srv = await startServe(store, ['--pack-cache', '0']);
    try {
      const image = makeImage(600, 5, 123);
      const imgFile = path.join(root, 'web1.mem');
      writeFileSync(imgFile, image);
      const put = await runCli(['agent', 'push', '--server', srv.address, '--token-file', tokenFile, '--vm', 'web1', '--json', imgFile]);
      expect(put.stderr).toBe('');
      expect(put.code).toBe(0);
      const first = JSON.parse(put.stdout.toString()) as { id: string; logicalBytes: number; pagesSent: number };
      expect(first.logicalBytes).toBe(image.length);
      // A consecutive image with three pages changed, given as a dirty list: only those are sent.
      const next = Buffer.from(image);
      for (const p of [1, 50, 599]) next.set(makeImage(1, 1000 + p * 4), p * PAGE);
      writeFileSync(imgFile, next);
      writeFileSync(path.join(root, 'dirty'), '1\n50\n599\n');
      const put2 = await runCli(
        ['agent', 'push', '--server', srv.address, '--vm', 'web1', '--dirty-list', path.join(root, 'dirty'), '--json', imgFile],
        { env: { VNSTORE_TOKEN: readFileSync(tokenFile, 'utf8').trim() } },
      );
      expect(put2.code).toBe(0);
      const second = JSON.parse(put2.stdout.toString()) as { id: string; parent: string; pagesSent: number; pagesOffered: number };
      expect(second.parent).toBe(first.id);
      expect(second.pagesOffered).toBe(3);
      expect(second.pagesSent).toBe(3);
      const out = path.join(root, 'out.mem');
      const rest = await runCli(['agent', 'restore', '--server', srv.address, '--token-file', tokenFile, second.id, '-o', out]);
      expect(rest.code).toBe(0);
      expect(readFileSync(out).equals(next)).toBe(true);
      // A quarter of the pages are zero (single pages): left as holes, unless --no-sparse.
      const sparseOut = statSync(out);
      expect(sparseOut.blocks * 512).toBeLessThanOrEqual(next.length - 140 * PAGE);
      const dense = path.join(root, 'dense.mem');
      const restDense = await runCli([
        'agent',
        'restore',
        '--server',
        srv.address,
        '--token-file',
        tokenFile,
        second.id,
        '--no-sparse',
        '-o',
        dense,
      ]);
      expect(restDense.code).toBe(0);
      expect(readFileSync(dense).equals(next)).toBe(true);
      expect(statSync(dense).blocks * 512).toBeGreaterThanOrEqual(next.length);
      const rest1 = await runCli(['agent', 'restore', '--server', srv.address, '--token-file', tokenFile, first.id]);
      expect(rest1.stdout.equals(image)).toBe(true);
      // Without the token: one line, exit 15.
      const bad = await runCli(['agent', 'restore', '--server', srv.address, first.id], { env: { VNSTORE_TOKEN: 'nope' } });
      expect(bad.code).toBe(15);
      expect(singleErrorLine(bad.stderr)).toMatch(/access token refused/);
      // Catalog commands and restore through the server (--server or $VNSTORE_SERVER).
      const env = { VNSTORE_SERVER: srv.address, VNSTORE_TOKEN: readFileSync(tokenFile, 'utf8').trim() };
      const lsRemote = await runCli(['ls', '--json', '--vm', 'web1'], { env });
      expect(lsRemote.code).toBe(0);
      expect((JSON.parse(lsRemote.stdout.toString()) as { id: string }[]).map((x) => x.id)).toEqual([first.id, second.id]);
      const statsRemote = await runCli(['stats', '--json', '--server', srv.address, '--token-file', tokenFile]);
      expect(statsRemote.code).toBe(0);
      expect((JSON.parse(statsRemote.stdout.toString()) as { summary: { snapshots: number } }).summary.snapshots).toBe(2);
      const out2 = path.join(root, 'out2.mem');
      const restRemote = await runCli(['restore', first.id, '-o', out2], { env });
      expect(restRemote.code).toBe(0);
      expect(readFileSync(out2).equals(image)).toBe(true);
      // Maintenance through the server: forget the first snapshot, gc, check --read-data.
      const fg = await runCli(['forget', first.id, '--json'], { env });
      expect(fg.code).toBe(0);
      expect((JSON.parse(fg.stdout.toString()) as { forgotten: { id: string }[] }).forgotten.map((x) => x.id)).toEqual([first.id]);
      const gc = await runCli(['gc', '--json', '--max-unused', '0'], { env });
      expect(gc.code).toBe(0);
      expect((JSON.parse(gc.stdout.toString()) as { live: { snapshots: number } }).live.snapshots).toBe(1);
      const ck = await runCli(['check', '--read-data', '--json'], { env });
      expect(ck.code).toBe(0);
      expect((JSON.parse(ck.stdout.toString()) as { ok: boolean }).ok).toBe(true);
      const repair = await runCli(['check', '--repair-index'], { env });
      expect(repair.code).toBe(2);
      expect(singleErrorLine(repair.stderr)).toMatch(/stop the server/);
      const after = path.join(root, 'after.mem');
      expect((await runCli(['restore', second.id, '-o', after], { env })).code).toBe(0);
      expect(readFileSync(after).equals(next)).toBe(true);
      // A local command on the served store: one line naming the server's PID and address.
      const ls = await runCli(['ls', '--store', store]);
      expect(ls.code).toBe(5);
      expect(singleErrorLine(ls.stderr)).toContain(`server PID ${srv.child.pid} at ${srv.address}; give --server ${srv.address}`);
    } finally {
      const exit = await srv.stop('SIGTERM');
      expect(exit).toEqual({ code: 0, signal: null });
    }
    const lines = srv
      .stderr()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event?: string });
    expect(lines.map((l) => l.event)).toEqual(expect.arrayContaining(['listening', 'hello', 'commit', 'auth_failed', 'shutdown', 'exit']));
    // The store is free again and holds both snapshots.
    const ls = await runCli(['ls', '--store', store, '--json']);
    expect(ls.code).toBe(0);
  });
});
