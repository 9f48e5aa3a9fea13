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
import { makePage, makeTempDir, removeDir, runCli } from './helpers/engine.js';
import { startServe, type ServeProcess } from './helpers/serve-process.js';
import { restoreRemote } from './helpers/server.js';
import { ChunkSource } from '../src/qemu/byte-source.js';
import { serverMigrations } from '../src/qemu/migration-store.js';
import { prepareMigration } from '../src/qemu/receive.js';
import { encodeModel, type PageRecord, type StreamModel } from './qemu/stream-model.js';
import { decodeToMemory, expectSentStream, memoryOf, model, type ReceiveJson } from './qemu/cli-model.js';

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

/** A stream in 64 KiB chunks, arriving over several turns of the event loop (as from a socket). */
async function* chunked(bytes: Buffer): AsyncIterable<Buffer> {
  for (let at = 0; at < bytes.length; at += 65536) {
    yield bytes.subarray(at, at + 65536);
    await new Promise((r) => setImmediate(r));
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
    const out = JSON.parse(r.stdout.toString()) as ReceiveJson;
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

  it('keeps the last copy of pages re-sent across write batches, as zero or as content the server has', async () => {
    // A real guest's later rounds re-send pages written in earlier batches: freed ones as ZERO,
    // others with content the server already holds (offered, not sent). 3000 pages: several batches.
    const pages = 3000;
    const base = model();
    const round0: PageRecord[] = [];
    const round1: PageRecord[] = [];
    for (let p = 0; p < pages; p++) {
      round0.push({ block: 0, page: p, data: makePage('random', p), named: p === 0 });
      round1.push({ block: 0, page: p, data: p % 2 ? makePage('random', p + 1) : 0, named: p === 0 });
    }
    const m: StreamModel = {
      ...base,
      blocks: [{ name: 'pc.ram', bytes: pages * 4096 }],
      rounds: [round0, round1, [{ block: 0, page: 1, data: makePage('random', 7), named: true }]],
    };
    const r = await runCli(['qemu', 'receive', '--vm', 'resent', ...remote], { input: encodeModel(m).bytes });
    expect(r.code, r.stderr).toBe(0);
    const got = await onServer((c) => restoreRemote(c, r.stdout.toString().trim()));
    const want = memoryOf(m);
    const wrong: number[] = [];
    for (let p = 0; p < pages; p++)
      if (!got.subarray(p * 4096, (p + 1) * 4096).equals(want.subarray(p * 4096, (p + 1) * 4096))) wrong.push(p);
    expect(wrong).toEqual([]);
  });

  it('prepares two VMs at once through one connection (qemu snapshot --server) and commits them as one group exactly', async () => {
    const pages = 3000;
    const vmModel = (seed: number): StreamModel => {
      const round0: PageRecord[] = [];
      const round1: PageRecord[] = [];
      for (let p = 0; p < pages; p++) {
        // Pages with the same content within one batch and across VMs, as a real guest has.
        const data = p % 5 === 0 ? makePage('compressible', 42) : makePage(p % 4 ? 'random' : 'compressible', seed * 100_000 + p);
        round0.push({ block: 0, page: p, data, named: p === 0 });
        if (p % 3 === 0) round1.push({ block: 0, page: p, data: p % 2 ? makePage('random', seed * 100_000 + p + 1) : 0, named: p === 0 });
      }
      return { ...model(), blocks: [{ name: 'pc.ram', bytes: pages * 4096 }], rounds: [round0, round1, []] };
    };
    const models = [vmModel(1), vmModel(2)];
    const records = await onServer(async (c) => {
      const store = serverMigrations(c);
      const prepared = await Promise.all(
        models.map((m, k) => prepareMigration(store, new ChunkSource(chunked(encodeModel(m).bytes)), { vm: `both${k}`, group: 'both-e1' })),
      );
      return store.commitGroup(
        'both-e1',
        prepared.flatMap((p) => p.ids),
      );
    });
    // Both sent at once, as a group restore starts its QEMUs.
    const sends = await Promise.all(models.map((_, k) => runCli(['qemu', 'send', records[2 * k].id, ...remote])));
    for (const [k, m] of models.entries()) {
      expect(sends[k].code, sends[k].stderr).toBe(0);
      const got = (await decodeToMemory(sends[k].stdout)).mem;
      const want = memoryOf(m);
      const wrong: number[] = [];
      for (let p = 0; p < pages; p++)
        if (!got.subarray(p * 4096, (p + 1) * 4096).equals(want.subarray(p * 4096, (p + 1) * 4096))) wrong.push(p);
      expect(wrong, `VM ${k}`).toEqual([]);
    }
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
