/**
 * Open-time recovery steps for the maintenance keys (called from src/store/store.ts recover(); no
 * import of Store here, to keep the module graph acyclic).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packFileName } from '../format/pack.js';
import { prefixRange, type StoreDb } from '../store/db.js';
import { fsyncDir } from '../util/durable.js';
import { deletedPackKey, KEY_DELETED_PACK } from './keys.js';

export { keptBaseKey } from './keys.js';

/**
 * A 'd' record says gc removed the pack from the index (in the same batch that moved its live chunks
 * elsewhere) and a crash stopped it before the file was deleted. Delete the file now: re-indexing it as
 * an "unindexed pack" would resurrect dead chunks. Returns the number of files removed.
 */
export async function finishPackDeletions(dir: string, db: StoreDb): Promise<number> {
  const ids: number[] = [];
  for await (const k of db.keys(prefixRange(Buffer.of(KEY_DELETED_PACK)))) ids.push(k.readUInt32BE(1));
  if (ids.length === 0) return 0;
  const packs = path.join(dir, 'packs');
  let removed = 0;
  for (const id of ids) {
    const file = path.join(packs, packFileName(id));
    try {
      await fsp.rm(file);
      removed++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  await fsyncDir(packs);
  const batch = db.batch();
  for (const id of ids) batch.del(deletedPackKey(id));
  await batch.write({ sync: true });
  return removed;
}
