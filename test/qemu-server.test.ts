/**
 * `vnstore qemu receive|send|info --server` through a real `vnstore serve`, on the synthetic QEMU
 * 7.2 stream of qemu-cli.test.ts: the stream is stored (RAM and state committed as one group, into
 * --group when given), restores to the exact memory, `send` regenerates a stream that decodes to
 * the same memory, head and device tail, and a cut stream leaves nothing on the server.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/agent/client.js';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { startServe, type ServeProcess } from './helpers/serve-process.js';
import { restoreRemote } from './helpers/server.js';
import { encodeModel } from './qemu/stream-model.js';
import { decodeToMemory, expectSentStream, memoryOf, model } from './qemu/cli-model.js';

let dir: string;
let srv: ServeProcess;
let tokenFile: string;
let remote: string[];

async function onServer<T>(fn: (c: AgentClient) => Promise<T>): Promise<T> {
  const c = await AgentClient.connect({ server: srv.address, token: readFileSync(tokenFile, 'utf8').trim() });
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

beforeAll(async () => {
  dir = makeTempDir('qemu-server');
  const store = path.join(dir, 'store');
  const init = await runCli(['init', '--store', store, '--json']);
  expect(init.code).toBe(0);
  tokenFile = (JSON.parse(init.stdout.toString()) as { tokenFile: string }).tokenFile;
  srv = await startServe(store);
  remote = ['--server', srv.address, '--token-file', tokenFile];
});

afterAll(async () => {
  await srv?.stop();
  removeDir(dir);
});

describe('vnstore qemu through a server', () => {
  it('a cut stream exits 10 and leaves nothing on the server', async () => {
    const { bytes } = encodeModel(model());
    for (const cut of [100, Math.floor(bytes.length / 2), bytes.length - 1]) {
      const r = await runCli(['qemu', 'receive', '--vm', 'cut', ...remote], { input: bytes.subarray(0, cut) });
      expect(r.code, `cut at ${cut}: ${r.stderr}`).toBe(10);
    }
    expect(await onServer((c) => c.listSnapshots())).toEqual([]);
  });

  it('receives a multi-round stream, restores its exact memory, and sends a stream QEMU would load', async () => {
    const m = model();
    const { bytes } = encodeModel(m);
    const r = await runCli(['qemu', 'receive', '--vm', 'vm1', '--json', ...remote], { input: bytes });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.toString()) as {
      id: string;
      stateId: string;
      group: string;
      machine: string;
      blocks: unknown;
      logicalBytes: number;
      streamBytes: number;
    };
    expect(out).toMatchObject({
      vm: 'vm1',
      machine: 'pc-i440fx-7.2',
      blocks: m.blocks,
      logicalBytes: 100 * 4096,
      streamBytes: bytes.length,
    });
    const listed = await onServer((c) => c.listSnapshots());
    expect(listed.map((s) => [s.vm, s.group]).sort()).toEqual([
      ['vm1', out.group],
      ['vm1.qemu', out.group],
    ]);
    expect((await onServer((c) => restoreRemote(c, out.id))).equals(memoryOf(m))).toBe(true);

    for (const id of [out.id, out.stateId.slice(0, 12)]) {
      const sent = await runCli(['qemu', 'send', id, ...remote]);
      expect(sent.code, sent.stderr).toBe(0);
      await expectSentStream(sent.stdout, m, bytes);
    }

    const info = await runCli(['qemu', 'info', out.id, '--json', ...remote]);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout.toString())).toMatchObject({
      id: out.id,
      stateId: out.stateId,
      vm: 'vm1',
      machine: 'pc-i440fx-7.2',
      group: out.group,
    });
  });

  it('commits each VM into the --group given, and each send finds its own state there', async () => {
    const { bytes } = encodeModel(model());
    const ids: string[] = [];
    for (const vm of ['env-a', 'env-b']) {
      const r = await runCli(['qemu', 'receive', '--vm', vm, '--group', 'env1-e1', ...remote], { input: bytes });
      expect(r.code, r.stderr).toBe(0);
      ids.push(r.stdout.toString().trim());
    }
    const inGroup = (await onServer((c) => c.listSnapshots())).filter((s) => s.group === 'env1-e1').map((s) => s.vm);
    expect(inGroup.sort()).toEqual(['env-a', 'env-a.qemu', 'env-b', 'env-b.qemu']);
    for (const id of ids) {
      const sent = await runCli(['qemu', 'send', id, ...remote]);
      expect(sent.code, sent.stderr).toBe(0);
      expect((await decodeToMemory(sent.stdout)).mem.equals(memoryOf(model()))).toBe(true);
    }
    const missing = await runCli(['qemu', 'send', 'abcdef0123456789', ...remote]);
    expect(missing.code).toBe(6);
  });
});
