#!/usr/bin/env node
// What the server path costs on top of the engine, in one process under the same load: a first
// snapshot of random pages through the library's own session.writePages, then the same image
// (every page changed) through an in-process VnServer and an AgentClient on loopback.
//   node bench/server-overhead.mjs [--mib N]     (npm run build first)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { Store, AgentClient, VnServer } = await import(join(root, 'dist', 'index.js'));
const { parseAddress } = await import(join(root, 'dist', 'server', 'address.js'));
const { values: args } = parseArgs({ options: { mib: { type: 'string', default: '64' } } });
const BLOCK = 16 << 20;
const img = Buffer.alloc(Number(args.mib) << 20);
let s = 1;
for (let o = 0; o < img.length; o += 4) {
  s ^= s << 13;
  s ^= s >>> 17;
  s ^= s << 5;
  img.writeUInt32LE(s >>> 0, o);
}
const rate = (t) => (img.length / 1e6 / ((performance.now() - t) / 1000)).toFixed(1);
const work = await mkdtemp(join(tmpdir(), 'vnstore-overhead-'));
try {
  const dir = join(work, 'store');
  await Store.init(dir);
  const store = await Store.open(dir);
  let t = performance.now();
  const local = await store.beginSession({ vm: 'local', parent: 'none' });
  for (let o = 0; o < img.length; o += BLOCK) await local.writePages(o / 4096, img.subarray(o, o + BLOCK));
  await local.commit();
  console.log(`library session.writePages: ${rate(t)} MB/s`);
  for (let o = 0; o < img.length; o += 4096) img[o + 7] ^= 0x55; // every page new again
  const server = new VnServer(store, { token: 'bench' });
  const client = await AgentClient.connect({ server: await server.listen(parseAddress('127.0.0.1:0')), token: 'bench' });
  t = performance.now();
  const remote = await client.beginSession({ vm: 'remote', parent: 'none' });
  for (let o = 0; o < img.length; o += BLOCK) await remote.writePages(o / 4096, img.subarray(o, o + BLOCK));
  await remote.commit();
  console.log(`through the server:         ${rate(t)} MB/s`);
  await client.close();
  await server.stop();
  await store.close();
} finally {
  await rm(work, { recursive: true, force: true });
}
