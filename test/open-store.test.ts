/**
 * The package's `openStore` passes gc as the store's sweeper, so a library user's store reclaims what
 * its own sessions superseded; `Store.open` without one leaves that to `vnstore gc` (docs/API.md).
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore, Store } from '../src/index.js';
import { makeTempDir, randomPage, removeDir, restoreToBuffer } from './helpers/engine.js';

const PAGES = 2048; // 8 MiB of incompressible pages, rewritten once: 8 MiB superseded, 50% of the new bytes
const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));

function packBytes(dir: string): number {
  const packs = path.join(dir, 'packs');
  return readdirSync(packs).reduce((sum, f) => sum + statSync(path.join(packs, f)).size, 0);
}

/** Two pre-copy rounds over every page of a new store at `open`'s hands; returns pack bytes after close. */
async function twoRounds(open: (dir: string) => Promise<Store>): Promise<number> {
  const dir = makeTempDir('vnstore-openstore-');
  roots.push(dir);
  await Store.init(dir);
  const store = await open(dir);
  const final = Buffer.concat(Array.from({ length: PAGES }, (_, p) => randomPage(9_000_000 + p)));
  let id: string;
  try {
    const s = await store.beginSession({ vm: 'vm', parent: 'none', memoryBytes: final.length });
    await s.writePages(0, Buffer.concat(Array.from({ length: PAGES }, (_, p) => randomPage(8_000_000 + p))));
    await s.writePages(0, final);
    id = (await s.commit()).id;
  } finally {
    await store.close(); // waits for the reclaim
  }
  const check = await Store.open(dir, { workers: 0 });
  try {
    expect((await restoreToBuffer(check, await check.resolveSnapshot(id))).equals(final)).toBe(true);
  } finally {
    await check.close();
  }
  return packBytes(dir);
}

describe('openStore', () => {
  it('reclaims superseded pre-copy chunks; Store.open without a sweeper keeps them', async () => {
    const live = PAGES * 4096;
    const withSweeper = await twoRounds((dir) => openStore(dir, { workers: 0 }));
    const without = await twoRounds((dir) => Store.open(dir, { workers: 0 }));
    expect(withSweeper).toBeLessThan(live * 1.05);
    expect(without).toBeGreaterThan(live * 1.9);
  });
});
