/**
 * `vnstore check --repair-index` on a store whose index tables are damaged (index-check.ts refuses
 * to open it): each damaged or missing live table is replaced, in place and at the size the MANIFEST
 * gives, by one that holds its blocks whose checksums hold (leveldb-files.ts salvageTable). The
 * damaged file is kept in quarantine/, never deleted. LevelDB then opens the database, and the
 * repair that follows rebuilds the chunk index entries the dropped blocks held from the packs;
 * catalog records in them (commit records, pack and group records) are gone.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ensurePrivateDir, exists, fsyncDir, writeFileDurable } from '../util/durable.js';
import { VnstoreError } from '../util/errors.js';
import { salvageTable } from './leveldb-files.js';
import { checkIndexFiles, liveTablesOf, tableName } from './index-check.js';
import { StoreLock } from './lock.js';
import { storePaths } from './paths.js';

export interface TableSalvageReport {
  table: string;
  /** Where the damaged file was moved (absent when the table was missing). */
  quarantined?: string;
  dataBlocksKept: number;
  dataBlocksDropped: number;
  /** Why no block of the table could be kept, if none could. */
  lost?: string;
}

/** Salvages every damaged live table of the store in `dir`; takes the store lock for it. */
export async function salvageIndexTables(dir: string): Promise<TableSalvageReport[]> {
  const p = storePaths(dir);
  const lock = await StoreLock.acquire(p.lock);
  try {
    const live = await liveTablesOf(p.db);
    if (!live) throw new VnstoreError('E_CORRUPT', `store catalog (db/) cannot be salvaged: its MANIFEST does not read (in ${p.db})`);
    const names = await fsp.readdir(p.db);
    const report: TableSalvageReport[] = [];
    for (const [number, size] of live) {
      const existing = tableName(number, names);
      const name = existing ?? `${String(number).padStart(6, '0')}.ldb`;
      const file = path.join(p.db, name);
      const bytes = existing ? await fsp.readFile(file) : Buffer.alloc(0);
      const s = salvageTable(bytes, size);
      if (s.dropped === 0 && !s.lost) continue; // whole and readable
      let quarantined: string | undefined;
      if (existing) {
        await ensurePrivateDir(p.quarantine);
        quarantined = path.join(p.quarantine, `db-${name}`);
        for (let n = 1; await exists(quarantined); n++) quarantined = path.join(p.quarantine, `db-${name}.${n}`);
        await fsp.copyFile(file, quarantined);
        await fsyncDir(p.quarantine);
      }
      await writeFileDurable(file, s.bytes, path.join(p.tmp, `salvage-${name}`));
      report.push({ table: name, quarantined, dataBlocksKept: s.dataBlocks, dataBlocksDropped: s.dropped, lost: s.lost });
    }
    await fsyncDir(p.db);
    await checkIndexFiles(p.db, { recheck: true }); // what LevelDB will read now passes
    return report;
  } finally {
    await lock.release();
  }
}
