/**
 * Why the store's LevelDB would not open is told by classic-level's error codes (issue 11), not by
 * its message text: a lock held elsewhere is E_LOCKED, damage is a CorruptError.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { levelOpenError, openDb } from '../src/store/db.js';
import { Store } from '../src/store/store.js';
import { CorruptError, VnstoreError } from '../src/util/errors.js';
import { makeTempDir, removeDir } from './helpers/engine.js';

const roots: string[] = [];
afterAll(() => roots.forEach(removeDir));
async function newStore(): Promise<string> {
  const root = makeTempDir('vnstore-dbopen-');
  roots.push(root);
  const dir = path.join(root, 'store');
  await Store.init(dir);
  return dir;
}

describe('store index open errors', () => {
  it('a LevelDB lock held elsewhere is E_LOCKED', async () => {
    const dir = await newStore();
    const other = openDb(path.join(dir, 'db')); // holds LevelDB's own LOCK, not the store's lock file
    await other.open();
    try {
      const err = await Store.open(dir, { workers: 0 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(VnstoreError);
      expect((err as VnstoreError).code).toBe('E_LOCKED');
      expect((err as Error).message).toBe(`store index ${path.join(dir, 'db')} is locked by another process`);
    } finally {
      await other.close();
    }
  });

  it('a damaged index is a CorruptError', async () => {
    const dir = await newStore();
    writeFileSync(path.join(dir, 'db', 'CURRENT'), 'not a manifest name'); // no newline: LevelDB calls it corruption
    const err = await Store.open(dir, { workers: 0 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CorruptError);
    expect((err as Error).message).toMatch(/^store index .* cannot be opened: Corruption: /);
  });

  it('classifies by code: a lock message without the code is not a lock', () => {
    const locked = levelOpenError({ message: 'Database failed to open', cause: { code: 'LEVEL_LOCKED', message: 'x' } }, 'db');
    expect((locked as VnstoreError).code).toBe('E_LOCKED');
    const text = levelOpenError({ message: 'Database failed to open', cause: { message: 'IO error: lock db/LOCK' } }, 'db');
    expect(text).toBeInstanceOf(CorruptError);
    const full = levelOpenError({ cause: { code: 'LEVEL_IO_ERROR', message: 'IO error: db/000005.log: No space left on device' } }, 'db');
    expect((full as VnstoreError).code).toBe('E_NO_SPACE');
  });
});
