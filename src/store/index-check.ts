/**
 * Checks LevelDB's files in db/ before LevelDB opens them. The prebuilt classic-level reads tables
 * without verifying block checksums (it exposes no verify_checksums or paranoid_checks) and has its
 * assertions compiled in: a damaged table's keys, merged out of order by a compaction (close()'s
 * memtable flush, or one LevelDB starts itself), abort the whole process in table_builder.cc (exit
 * 134). So every live table's blocks are checked here first, and damage is a CorruptError (exit 7).
 *
 * Tables never change once written, so a table that passed is listed in db/VNSTORE-VERIFIED under its
 * size, mtime, ctime and inode, and is read again only when one of those changes (a new or rewritten
 * file): an open reads each table once. `vnstore check` reads them all regardless (`recheck`).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FILE_MODE } from '../util/durable.js';
import { CATALOG_DAMAGE_ADVICE, CorruptError } from '../util/errors.js';
import { checkTable, LevelFileDamage, liveTables } from './leveldb-files.js';

/** The list of tables that passed, in db/ (LevelDB leaves names it does not know alone). */
export const VERIFIED_FILE = 'VNSTORE-VERIFIED';
const VERIFIED_VERSION = 1;

export interface IndexCheckResult {
  /** Live tables, and how many of them were read now (the others were listed as verified). */
  tables: number;
  read: number;
}

/**
 * Checks the live tables of the LevelDB database in `dbDir`; throws CorruptError on damage. A
 * database without CURRENT is new (LevelDB creates it) unless other LevelDB files are there: then
 * CURRENT was lost, and LevelDB would start an empty database over the old one's files. A table
 * the MANIFEST does not list is left alone: a compaction a kill stopped leaves one, which LevelDB
 * deletes.
 */
export async function checkIndexFiles(dbDir: string, options: { recheck?: boolean } = {}): Promise<IndexCheckResult> {
  const names = await fsp.readdir(dbDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  if (!names.includes('CURRENT')) {
    const orphans = names.filter((n) => /^(MANIFEST-\d+|\d+\.(ldb|sst|log))$/.test(n));
    if (orphans.length > 0) throw damaged(dbDir, `CURRENT is missing, next to ${orphans.slice(0, 3).join(', ')}`);
    return { tables: 0, read: 0 };
  }
  const live = await liveTablesOf(dbDir);
  if (!live) return { tables: 0, read: 0 };
  const verified = options.recheck ? new Map<string, string>() : await readVerified(dbDir);
  const passed = new Map<string, string>();
  let read = 0;
  for (const [number, size] of live) {
    const name = tableName(number, names);
    if (!name) throw new IndexTableDamage(dbDir, `table ${String(number).padStart(6, '0')}.ldb is missing`);
    const file = path.join(dbDir, name);
    const st = await fsp.stat(file, { bigint: true });
    if (Number(st.size) !== size) throw new IndexTableDamage(dbDir, `table ${name} is ${st.size} bytes, not ${size}`);
    const identity = `${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.ino}`;
    if (verified.get(name) !== identity) {
      try {
        checkTable(await fsp.readFile(file));
      } catch (err) {
        if (err instanceof LevelFileDamage) throw new IndexTableDamage(dbDir, `table ${name}: ${err.message}`);
        throw err;
      }
      read++;
    }
    passed.set(name, identity);
  }
  if (read > 0 || passed.size !== verified.size) await writeVerified(dbDir, passed).catch(() => undefined); // a cache
  return { tables: live.size, read };
}

/**
 * The live tables by CURRENT and the MANIFEST it names; undefined when those do not read. LevelDB
 * verifies the MANIFEST's checksums itself and refuses to open then (E_CORRUPT, levelOpenError), and
 * with no version it reads no table: the tables need no check of ours.
 */
export async function liveTablesOf(dbDir: string): Promise<Map<number, number> | undefined> {
  try {
    const current = await fsp.readFile(path.join(dbDir, 'CURRENT'), 'latin1');
    const m = /^(MANIFEST-\d+)\n$/.exec(current);
    return m ? liveTables(await fsp.readFile(path.join(dbDir, m[1]))) : undefined;
  } catch (err) {
    if (err instanceof LevelFileDamage || (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** LevelDB names tables NNNNNN.ldb, and reads the older NNNNNN.sst too. */
export function tableName(number: number, names: string[]): string | undefined {
  const stem = String(number).padStart(6, '0');
  return [`${stem}.ldb`, `${stem}.sst`].find((n) => names.includes(n));
}

/** How to go on from damaged index tables (index-salvage.ts). */
export const TABLE_DAMAGE_ADVICE =
  "run 'vnstore check --repair-index' to drop the damaged blocks (the records in them are lost) and rebuild the chunk index from the packs, or restore the store from a backup";

/** A live table of the index is damaged or missing: `vnstore check --repair-index` salvages it. */
export class IndexTableDamage extends CorruptError {
  constructor(dbDir: string, what: string) {
    super(`store catalog (db/) is damaged: ${what} (in ${dbDir}); ${TABLE_DAMAGE_ADVICE}`);
    this.name = 'IndexTableDamage';
  }
}

function damaged(dbDir: string, what: string): CorruptError {
  return new CorruptError(`store catalog (db/) is damaged: ${what} (in ${dbDir}); ${CATALOG_DAMAGE_ADVICE}`);
}

/** The verified list; anything unreadable about it (it is a cache) reads as empty. */
async function readVerified(dbDir: string): Promise<Map<string, string>> {
  try {
    const j = JSON.parse(await fsp.readFile(path.join(dbDir, VERIFIED_FILE), 'utf8')) as { version?: unknown; tables?: unknown };
    if (j.version !== VERIFIED_VERSION || typeof j.tables !== 'object' || j.tables === null) return new Map();
    return new Map(Object.entries(j.tables).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return new Map();
  }
}

async function writeVerified(dbDir: string, tables: Map<string, string>): Promise<void> {
  const tmp = path.join(dbDir, `${VERIFIED_FILE}.tmp`);
  try {
    await fsp.writeFile(tmp, JSON.stringify({ version: VERIFIED_VERSION, tables: Object.fromEntries(tables) }) + '\n', { mode: FILE_MODE });
    await fsp.rename(tmp, path.join(dbDir, VERIFIED_FILE));
  } catch (err) {
    await fsp.rm(tmp, { force: true }); // a full disk: leave no partial file behind
    throw err;
  }
}
