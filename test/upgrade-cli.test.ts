/**
 * `vnstore upgrade` (issue 16): a store made by put (several VMs, consecutive snapshots, compacted
 * into format 2) upgraded by the command; then every snapshot restores exactly, `check --read-data`
 * is clean, `stats --json` shows the same logical and dedup figures with less metadata, and the
 * report's figures are the store's. Refusals: already format 3, locked, not a store; help and
 * completion. The no-space refusal is in disk-full.test.ts (it needs a small file system).
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { expectCliError, runCliInProcess } from './helpers/cli.js';
import { makePage, runCli, tempDirs } from './helpers/engine.js';

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

async function ok(args: string[]): Promise<string> {
  const r = await runCli(args, { env: SMALL_PACKS });
  expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout.toString();
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
    await ok(['init', '--store', store]);
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
    const bytesBefore = treeBytes(store);

    const report = JSON.parse(await ok(['upgrade', '--store', store, '--json'])) as Record<string, number>;
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

    // A second upgrade is refused with one line, exit 2.
    const again = await runCli(['upgrade', '--store', store]);
    expectCliError(again, 2, 'already at store format version 3');
  }, 180_000);

  it('refuses a locked store (exit 5) and leaves it as it was; refuses a directory that is not a store or a garbled vnstore.json (exit 3)', async () => {
    const root = tmp('upgrade-cli-refuse');
    const store = path.join(root, 'store');
    await ok(['init', '--store', store]);
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
    expect(text).toContain('--json');
    const completion = await runCliInProcess(['completion', 'bash']);
    expect(completion.stdout.toString()).toMatch(/"upgrade"\)\n\s+opts="--help -h --json --store"/);
  });
});
