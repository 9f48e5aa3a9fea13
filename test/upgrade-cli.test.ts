/**
 * `vnstore upgrade` (issue 16): a store made by put (several VMs, consecutive snapshots, compacted
 * into format 2) upgraded by the command; then every snapshot restores exactly, `check --read-data`
 * is clean, `stats --json` shows the same logical and dedup figures with less metadata, and the
 * report's figures are the store's, addedBytes recounted. Already format 3: nothing to do (exit 0).
 * Refusals: locked (and --lock-wait), served, not a store; help and completion. The no-space refusal is in disk-full.test.ts (it needs a small file system).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { expectCliError, runCliInProcess } from './helpers/cli.js';
import { makePage, runCli, tempDirs } from './helpers/engine.js';
import { startServe } from './helpers/serve-process.js';

const tmp = tempDirs();
const SMALL_PACKS = { VNSTORE_PACK_TARGET_BYTES: String(64 * 1024) };

function image(seed: number, pages: number, changedFrom = pages): Buffer {
  return Buffer.concat(
    Array.from({ length: pages }, (_, p) => {
      const s = p >= changedFrom ? seed * 1000 + p : p; // pages below changedFrom are the same in every image
      return makePage(p % 5 === 0 ? 'zero' : p % 3 === 0 ? 'random' : 'compressible', s);
    }),
  );
}

/**
 * A command that must succeed, its stdout. The set-up and the checks around the upgrade run the
 * command line in this process (no node start-up each: ~20 fewer spawns); the upgrades under test
 * pass `runCli`, the executable.
 */
async function ok(args: string[], run: typeof runCli = runCliInProcess): Promise<string> {
  const r = await run(args, { env: SMALL_PACKS });
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout.toString();
}

/** `ls --json` by id, with each manifest's file size. */
async function listed(store: string): Promise<Map<string, { newChunks: number; addedBytes: number; manifestFileBytes: number }>> {
  const rows = JSON.parse(await ok(['ls', '--store', store, '--json'])) as { id: string; newChunks: number; addedBytes: number }[];
  return new Map(rows.map((r) => [r.id, { ...r, manifestFileBytes: statSync(path.join(store, 'manifests', `${r.id}.vnm`)).size }]));
}

function treeBytes(dir: string): number {
  return readdirSync(dir, { withFileTypes: true }).reduce((n, e) => {
    const p = path.join(dir, e.name);
    return n + (e.isDirectory() ? treeBytes(p) : statSync(p).size);
  }, 0);
}

interface Summary {
  snapshots: number;
  logicalBytes: number;
  pages: number;
  zeroPages: number;
  distinctChunks: number;
  chunkRawBytes: number;
  metadataBytes: number;
  onDiskBytes: number;
}

describe('vnstore upgrade', () => {
  it('upgrades a put-made format-2 store: every snapshot exact, check clean, stats with less metadata', async () => {
    const root = tmp('upgrade-cli');
    const store = path.join(root, 'store');
    await ok(['init', '--store', store, '--format', '1']); // the upgrade's input
    const images = new Map<string, Buffer>();
    for (const vm of ['web', 'db', 'cache']) {
      for (let round = 0; round < 3; round++) {
        // Consecutive snapshots of one VM: each changes its last pages (a delta against the parent).
        const img = image(vm.length * 10 + round, 160, 120 + round * 10);
        const file = path.join(root, `${vm}-${round}.img`);
        writeFileSync(file, img);
        images.set((await ok(['put', '--store', store, '--vm', vm, file])).trim(), img);
      }
    }
    await ok(['compact', '--store', store, '--min-age', '0']); // zstd containers: store format 2
    expect(JSON.parse(readFileSync(path.join(store, 'vnstore.json'), 'utf8')).version).toBe(2);
    const before = (JSON.parse(await ok(['stats', '--store', store, '--json'])) as { summary: Summary }).summary;
    const listedBefore = await listed(store);
    const bytesBefore = treeBytes(store);

    const report = JSON.parse(await ok(['upgrade', '--store', store, '--json'], runCli)) as Record<string, number>;
    expect(JSON.parse(readFileSync(path.join(store, 'vnstore.json'), 'utf8')).version).toBe(3);
    expect(readdirSync(store)).not.toContain('upgrade');
    expect(readdirSync(store)).not.toContain('chunk-table.bin');
    expect(report.formatBefore).toBe(2);
    expect(report.formatAfter).toBe(3);
    expect(report.snapshots).toBe(9);
    expect(report.manifests).toBe(9);
    expect(report.chunks).toBe(before.distinctChunks);
    expect(report.storeBytesBefore).toBe(bytesBefore);
    expect(report.storeBytesAfter).toBe(treeBytes(store));
    expect(report.manifestBytesAfter).toBeLessThan(report.manifestBytesBefore);
    expect(report.seconds).toBeGreaterThan(0);

    for (const [id, img] of images) {
      const out = path.join(root, `${id}.out`);
      await ok(['restore', '--store', store, id, '-o', out]);
      expect(readFileSync(out).equals(img), `${id} restores exactly`).toBe(true);
    }
    const check = JSON.parse(await ok(['check', '--read-data', '--store', store, '--json'])) as { ok: boolean; problems: unknown[] };
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);

    const after = (JSON.parse(await ok(['stats', '--store', store, '--json'])) as { summary: Summary }).summary;
    for (const k of ['snapshots', 'logicalBytes', 'pages', 'zeroPages', 'distinctChunks', 'chunkRawBytes'] as const) {
      expect(after[k], k).toBe(before[k]);
    }
    expect(after.metadataBytes).toBeLessThan(before.metadataBytes);
    expect(after.metadataBytes / after.onDiskBytes).toBeLessThan(before.metadataBytes / before.onDiskBytes);

    // addedBytes recounted for format 3: the same new payloads (newChunkBytes, from format 2's figure
    // less its 11-B table entries and its manifest), 27 B of table a new chunk (pack 4), the new manifest.
    const listedAfter = await listed(store);
    expect([...listedAfter.keys()].sort()).toEqual([...listedBefore.keys()].sort());
    for (const [id, b] of listedBefore) {
      const a = listedAfter.get(id)!;
      expect(a.newChunks, id).toBe(b.newChunks);
      const payload = b.addedBytes - b.newChunks * 11 - b.manifestFileBytes;
      expect(a.addedBytes, id).toBe(payload + b.newChunks * 27 + a.manifestFileBytes);
      expect(a.manifestFileBytes, id).toBeLessThan(b.manifestFileBytes);
    }

    // A second upgrade has nothing to do: exit 0, one line; --json says so. The store is unchanged.
    const bytesUpgraded = treeBytes(store);
    const again = await runCli(['upgrade', '--store', store]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toBe('');
    expect(again.stdout.toString()).toBe(`${store}: already format 3, nothing to do\n`);
    expect(JSON.parse(await ok(['upgrade', '--store', store, '--json'], runCli))).toEqual({
      upgraded: false,
      formatBefore: 3,
      formatAfter: 3,
    });
    expect(treeBytes(store)).toBe(bytesUpgraded);
  }, 180_000);

  it('waits for the lock with --lock-wait; a store held by vnstore serve is refused naming its PID and address', async () => {
    const root = tmp('upgrade-cli-wait');
    const store = path.join(root, 'store');
    await ok(['init', '--store', store, '--format', '1']);
    const file = path.join(root, 'a.img');
    const img = image(2, 40);
    writeFileSync(file, img);
    const id = (await ok(['put', '--store', store, '--vm', 'a', file])).trim();
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      writeFileSync(path.join(store, 'lock'), `${sleeper.pid}\n`);
      const t0 = Date.now();
      const run = runCli(['upgrade', '--store', store, '--lock-wait', '20'], { env: SMALL_PACKS });
      setTimeout(() => sleeper.kill('SIGKILL'), 800);
      const r = await run;
      expect(r.code, r.stderr).toBe(0);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(800);
      expect(r.stdout.toString()).toContain('from store format 1 to 3');
    } finally {
      sleeper.kill('SIGKILL');
    }
    await ok(['restore', '--store', store, id, '-o', path.join(root, 'a.out')]);
    expect(readFileSync(path.join(root, 'a.out')).equals(img)).toBe(true);

    // On a served store (here one at format 3 already, and one not yet): the server named, nothing changed.
    const legacy = path.join(root, 'legacy');
    await ok(['init', '--store', legacy, '--format', '2']);
    for (const dir of [store, legacy]) {
      const server = await startServe(dir);
      try {
        const refused = await runCli(['upgrade', '--store', dir]);
        expectCliError(refused, 5, `PID ${server.child.pid} at ${server.address}`);
      } finally {
        await server.stop();
      }
    }
    expect(JSON.parse(readFileSync(path.join(legacy, 'vnstore.json'), 'utf8')).version).toBe(2);
  }, 60_000);

  it('refuses a locked store (exit 5) and leaves it as it was; refuses a directory that is not a store or a garbled vnstore.json (exit 3)', async () => {
    const root = tmp('upgrade-cli-refuse');
    const store = path.join(root, 'store');
    await ok(['init', '--store', store, '--format', '1']); // the upgrade's input
    const file = path.join(root, 'a.img');
    writeFileSync(file, image(1, 40));
    await ok(['put', '--store', store, '--vm', 'a', file]);
    const open = await Store.open(store, { workers: 0 });
    try {
      expectCliError(await runCli(['upgrade', '--store', store]), 5, 'lock');
    } finally {
      await open.close();
    }
    expect(JSON.parse(readFileSync(path.join(store, 'vnstore.json'), 'utf8')).version).toBe(1);
    expect(readdirSync(store)).not.toContain('upgrade');
    expectCliError(await runCli(['upgrade', '--store', path.join(root, 'nothing')]), 3);
    const garbled = path.join(root, 'garbled');
    mkdirSync(garbled);
    writeFileSync(path.join(garbled, 'vnstore.json'), '{ not json');
    expectCliError(await runCli(['upgrade', '--store', garbled]), 3, 'not valid JSON');
  }, 60_000);

  it('--help says what it does and that it cannot be undone; completion knows the command', async () => {
    const help = await runCliInProcess(['upgrade', '--help']);
    expect(help.code).toBe(0);
    const text = help.stdout.toString();
    expect(text).toContain('cannot be undone');
    expect(text).toContain('free space');
    expect(text.replace(/\s+/g, ' ')).toContain('already format 3, nothing to do');
    expect(text).toContain('--lock-wait');
    expect(text).toContain('--json');
    const completion = await runCliInProcess(['completion', 'bash']);
    expect(completion.stdout.toString()).toMatch(/"upgrade"\)\n\s+opts="--help -h --json --store --lock-wait"/);
  });
});
