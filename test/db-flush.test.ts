/**
 * A store that indexed chunks writes LevelDB's memtable out when it closes (flushMemtable), so the
 * next open has no write-ahead log to replay, and every snapshot restores exactly after reopening.
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../src/store/store.js';
import { makePage, initStore, tempDirs, restoreToBuffer } from './helpers/engine.js';

const tempDir = tempDirs();

/** Bytes in LevelDB's write-ahead logs: what the next open would replay. */
function logBytes(store: string): number {
  const db = path.join(store, 'db');
  return readdirSync(db)
    .filter((f) => f.endsWith('.log'))
    .reduce((sum, f) => sum + statSync(path.join(db, f)).size, 0);
}

describe('the index memtable at close', () => {
  it('is written out after a put that indexed chunks: nothing left to replay, everything restores', async () => {
    const root = tempDir('dbflush');
    const dir = await initStore(root, 1); // the LevelDB chunk index's memtable (format 3 has none)
    const image = Buffer.concat(Array.from({ length: 3000 }, (_, i) => makePage(i % 3 === 0 ? 'random' : 'compressible', i)));
    let store = await Store.open(dir, { workers: 0 });
    let rec;
    try {
      const s = await store.beginSession({ vm: 'a' });
      await s.writePages(0, image);
      rec = await s.commit();
      expect(rec.newChunks).toBe(3000);
    } finally {
      await store.close();
    }
    expect(logBytes(dir)).toBe(0);
    store = await Store.open(dir, { workers: 0 });
    try {
      expect((await restoreToBuffer(store, rec)).equals(image)).toBe(true);
      expect(store.table.size).toBe(3000);
    } finally {
      await store.close();
    }
  });
});
