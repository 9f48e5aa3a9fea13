/** Packs that cannot be used are moved aside into quarantine/, never deleted (docs/OPERATIONS.md). */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parsePackFileName } from '../format/pack.js';
import { ensurePrivateDir, fsyncDir } from '../util/durable.js';
import type { PackReader } from './pack-reader.js';
import { storePaths } from './paths.js';

/**
 * Moves pack file `name` from packs/ into quarantine/: its cached read handle closed first, an older
 * quarantined file of the same name kept (the new one gets a `.N` suffix), both directories synced.
 * Returns the quarantined file's path.
 */
export async function quarantinePack(dir: string, packs: PackReader, name: string): Promise<string> {
  const p = storePaths(dir);
  const id = parsePackFileName(name);
  if (id !== undefined) await packs.evict(id);
  await ensurePrivateDir(p.quarantine);
  let dest = path.join(p.quarantine, name);
  for (let n = 1; await exists(dest); n++) dest = path.join(p.quarantine, `${name}.${n}`);
  await fsp.rename(path.join(p.packs, name), dest);
  await fsyncDir(p.quarantine);
  await fsyncDir(p.packs);
  return dest;
}

function exists(file: string): Promise<boolean> {
  return fsp.access(file).then(
    () => true,
    () => false,
  );
}
