/**
 * `vnstore qemu receive|send|info` on synthetic QEMU 7.2 streams (the real QEMU runs in
 * qemu-live.test.ts): a multi-round stream is stored (a page sent again wins, a page re-sent as zero
 * is zero), restores to the exact memory, and `send` regenerates a stream that decodes to the same
 * memory, head and device tail; a cut, corrupted or unsupported stream exits 10 and leaves no snapshot.
 */
import net from 'node:net';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeHeader } from '../src/qemu/stream-encoder.js';
import { CLI, makeTempDir, prng, removeDir, REPO_ROOT, runCli } from './helpers/engine.js';
import { Store } from '../src/store/store.js';
import { encodeModel } from './qemu/stream-model.js';
import { decodeToMemory, expectSentStream, memoryOf, model, type ReceiveJson } from './qemu/cli-model.js';

const PAGE = 4096;
let dir: string;
let store: string;

async function snapshots(): Promise<{ id: string; vm: string }[]> {
  const ls = await runCli(['ls', '--json', '--store', store]);
  expect(ls.code).toBe(0);
  return JSON.parse(ls.stdout.toString()) as { id: string; vm: string }[];
}

beforeAll(async () => {
  dir = makeTempDir('qemu-cli');
  store = `${dir}/store`;
  expect((await runCli(['init', '--store', store])).code).toBe(0);
});

afterAll(() => removeDir(dir));

describe('vnstore qemu', () => {
  it('refuses a cut, corrupted or unsupported stream with exit 10 and leaves no snapshot', async () => {
    const { bytes } = encodeModel(model());
    const rand = prng(13);
    const cuts = [0, 3, 8, 40, bytes.length - 1, bytes.length - 20, ...Array.from({ length: 4 }, () => rand() % bytes.length)];
    for (const cut of cuts) {
      const r = await runCli(['qemu', 'receive', '--vm', 'bad', '--store', store], { input: bytes.subarray(0, cut) });
      expect(r.code, `cut at ${cut}: ${r.stderr}`).toBe(10);
      expect(r.stderr).toMatch(/^vnstore: error: migration stream/);
      expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    }
    const corrupt = Buffer.from(bytes);
    corrupt[bytes.length - 3] ^= 0xff; // inside the VM description
    expect((await runCli(['qemu', 'receive', '--vm', 'bad', '--store', store], { input: corrupt })).code).toBe(10);
    const postcopy = Buffer.concat([encodeHeader({ machine: 'pc-i440fx-7.2', capabilities: [] }), Buffer.of(8, 0, 3, 0, 0)]);
    const r = await runCli(['qemu', 'receive', '--vm', 'bad', '--store', store], { input: postcopy });
    expect(r.code).toBe(10);
    expect(r.stderr).toMatch(/postcopy.*not support/);
    expect(await snapshots()).toEqual([]);
  });

  it('stores a multi-round stream (last copy wins), restores its memory, and sends a stream QEMU would load', async () => {
    const m = model();
    const { bytes } = encodeModel(m);
    const r = await runCli(['qemu', 'receive', '--vm', 'vm1', '--json', '--store', store], { input: bytes });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.toString()) as ReceiveJson;
    expect(out.machine).toBe('pc-i440fx-7.2');
    expect(out.blocks).toEqual(m.blocks);
    expect(out.logicalBytes).toBe(100 * PAGE);
    expect(out.streamBytes).toBe(bytes.length);
    const all = await snapshots();
    expect(all.map((s) => s.vm).sort()).toEqual(['vm1', 'vm1.qemu']);

    const restored = await runCli(['restore', out.id, '--store', store]);
    expect(restored.code).toBe(0);
    expect(restored.stdout.equals(memoryOf(m))).toBe(true);

    for (const id of [out.id, out.stateId.slice(0, 12)]) {
      const sent = await runCli(['qemu', 'send', id, '--store', store]);
      expect(sent.code, sent.stderr).toBe(0);
      await expectSentStream(sent.stdout, m, bytes);
    }

    const info = await runCli(['qemu', 'info', out.id, '--json', '--store', store]);
    expect(info.code).toBe(0);
    expect(JSON.parse(info.stdout.toString())).toMatchObject({
      id: out.id,
      stateId: out.stateId,
      vm: 'vm1',
      machine: 'pc-i440fx-7.2',
      group: out.group,
    });
  });

  it('--detach exits once the stream is spooled, before the store is free; a background process stores it', async () => {
    // QEMU waits for an exec: target to exit before its main loop runs again (the guest stays
    // paused): the command must not wait for the store. The test holds the store's lock, so a
    // receive that stored before exiting could not exit while it is held.
    const m = model();
    const { bytes } = encodeModel(m);
    const out = `${dir}/detach.out`;
    const err = `${dir}/detach.err`;
    const held = await Store.open(store);
    let code: number | null;
    try {
      const fds = [openSync(out, 'w'), openSync(err, 'w')];
      const child = spawn(
        process.execPath,
        [CLI, 'qemu', 'receive', '--vm', 'det', '--json', '--detach', '--lock-wait', '60', '--store', store],
        {
          stdio: ['pipe', fds[0], fds[1]],
        },
      );
      fds.forEach((fd) => closeSync(fd));
      child.stdin!.end(bytes);
      code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      expect(readFileSync(out, 'utf8')).toBe(''); // nothing stored yet: the lock is ours
    } finally {
      await held.close();
    }
    expect(code, readFileSync(err, 'utf8')).toBe(0);
    const line = await waitForLine(out);
    expect(readFileSync(err, 'utf8')).toBe('');
    const r = JSON.parse(line) as { id: string; vm: string; streamBytes: number };
    expect(r.vm).toBe('det');
    expect(r.streamBytes).toBe(bytes.length);
    const restored = await runCli(['restore', r.id, '--store', store]);
    expect(restored.code).toBe(0);
    expect(restored.stdout.equals(memoryOf(m))).toBe(true);
    // A cut stream under --detach: the command still exits 0 (spooled), the error goes to its stderr.
    const errCut = `${dir}/detach-cut.err`;
    const fd = openSync(errCut, 'w');
    const cut = spawn(process.execPath, [CLI, 'qemu', 'receive', '--vm', 'cut', '--detach', '--store', store], {
      stdio: ['pipe', 'ignore', fd],
    });
    closeSync(fd);
    cut.stdin!.end(bytes.subarray(0, bytes.length - 20));
    expect(await new Promise((resolve) => cut.once('exit', resolve))).toBe(0);
    expect(await waitForLine(errCut)).toMatch(/^vnstore: error: migration stream/);
    expect((await snapshots()).filter((s) => s.vm.startsWith('cut'))).toEqual([]);
  });

  it('--detach starts the background receive before the CLI loads: only that process loads it', async () => {
    // VNSTORE_TRACE prints "modules loaded" from every process that loads the CLI (main.ts); the
    // command itself must not, since QEMU keeps the guest paused until it exits.
    const { bytes } = encodeModel(model());
    const err = `${dir}/detach-trace.err`;
    const out = `${dir}/detach-trace.out`;
    const fds = [openSync(out, 'w'), openSync(err, 'w')];
    const child = spawn(
      process.execPath,
      [CLI, 'qemu', 'receive', '--vm', 'det-early', '--store', store, '--detach', '--lock-wait', '60'],
      {
        stdio: ['pipe', fds[0], fds[1]],
        env: { ...process.env, VNSTORE_TRACE: '1' },
      },
    );
    fds.forEach((fd) => closeSync(fd));
    child.stdin!.end(bytes);
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(0);
    const id = await waitForLine(out);
    const loads = readFileSync(err, 'utf8').match(/\] modules loaded/g) ?? [];
    expect(loads).toHaveLength(1);
    const restored = await runCli(['restore', id, '--store', store]);
    expect(restored.stdout.equals(memoryOf(model()))).toBe(true);
  });

  it('commits the RAM and state snapshots of each VM into the --group given (an environment epoch)', async () => {
    const { bytes } = encodeModel(model());
    const ids: string[] = [];
    for (const vm of ['env-a', 'env-b']) {
      const r = await runCli(['qemu', 'receive', '--vm', vm, '--group', 'env1-e1', '--store', store], { input: bytes });
      expect(r.code, r.stderr).toBe(0);
      ids.push(r.stdout.toString().trim());
    }
    const inGroup = (await snapshots()).filter((s) => (s as { group?: string }).group === 'env1-e1').map((s) => s.vm);
    expect(inGroup.sort()).toEqual(['env-a', 'env-a.qemu', 'env-b', 'env-b.qemu']);
    // Each VM's send finds its own state in the shared group.
    for (const id of ids) {
      const sent = await runCli(['qemu', 'send', id, '--store', store]);
      expect(sent.code, sent.stderr).toBe(0);
      expect((await decodeToMemory(sent.stdout)).mem.equals(memoryOf(model()))).toBe(true);
    }
  });

  it('accepts one TCP connection with --listen', async () => {
    const { bytes } = encodeModel(model());
    const child = spawn(process.execPath, [CLI, 'qemu', 'receive', '--vm', 'vm2', '--listen', 'tcp:127.0.0.1:0', '--store', store], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const port = await new Promise<number>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const p = /listening on tcp:127\.0\.0\.1:(\d+)/.exec(stderr);
        if (p) resolve(Number(p[1]));
      });
      child.once('exit', () => reject(new Error(`receive exited: ${stderr}`)));
    });
    const sock = net.connect(port, '127.0.0.1');
    sock.end(bytes);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code, stderr).toBe(0);
    const restored = await runCli(['restore', stdout.trim(), '--store', store]);
    expect(restored.stdout.equals(memoryOf(model()))).toBe(true);
  });

  it('refuses to send a snapshot that did not come from QEMU', async () => {
    const put = await runCli(['put', '--vm', 'plain', '-', '--store', store], { input: Buffer.alloc(8 * PAGE, 1) });
    expect(put.code).toBe(0);
    const r = await runCli(['qemu', 'send', put.stdout.toString().trim(), '--store', store]);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/no QEMU state image/);
  });
});

/** The first whole line a background process writes to `file`. */
async function waitForLine(file: string): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const t = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (t.includes('\n')) return t.slice(0, t.indexOf('\n'));
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing written to ${file} in 60 s`);
}
