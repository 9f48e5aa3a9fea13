/**
 * LevelDB keys added by the maintenance commands (docs/FORMAT.md, "Maintenance keys"):
 *   'k' + snapshot id  → JSON KeptBaseRecord: a forgotten snapshot whose manifest file is kept because
 *                        the delta chain of a committed (or in-flight) snapshot runs through it
 *   'd' + u32be pack id → JSON DeletedPackRecord: the pack has left the index; its file is to be
 *                        removed (recovery removes it, never re-indexes it)
 */
import { jsonValue, parseRecord, prefixedKey, prefixRange, type RecordSchema, type StoreDb } from './db.js';

export const KEY_KEPT_BASE = 0x6b; // 'k'
export const KEY_DELETED_PACK = 0x64; // 'd'

export interface KeptBaseRecord {
  id: string;
  vm: string;
  /** The kept manifest's own delta base (its chain must be kept too). */
  base?: string;
  manifestBytes: number;
  /** When the snapshot was taken, and when it was forgotten. */
  time: string;
  forgottenAt: string;
}

export interface DeletedPackRecord {
  id: number;
  /** Why the pack left the index ('gc-drop', 'gc-rewrite'). */
  reason: string;
  at: string;
}

const KEPT_BASE_RECORD: RecordSchema<KeptBaseRecord> = {
  name: 'kept base record',
  fields: { id: 'string', vm: 'string', base: 'string?', manifestBytes: 'count', time: 'string', forgottenAt: 'string' },
};

const DELETED_PACK_RECORD: RecordSchema<DeletedPackRecord> = {
  name: 'deleted pack record',
  fields: { id: 'count', reason: 'string', at: 'string' },
};

export function keptBaseKey(id: string): Buffer {
  return prefixedKey(KEY_KEPT_BASE, id);
}

export function deletedPackKey(packId: number): Buffer {
  const k = Buffer.allocUnsafe(5);
  k[0] = KEY_DELETED_PACK;
  k.writeUInt32BE(packId, 1);
  return k;
}

export async function listKeptBases(db: StoreDb): Promise<KeptBaseRecord[]> {
  const out: KeptBaseRecord[] = [];
  for await (const v of db.values(prefixRange(Buffer.of(KEY_KEPT_BASE)))) out.push(parseRecord(v, KEPT_BASE_RECORD));
  return out;
}

export async function listDeletedPacks(db: StoreDb): Promise<DeletedPackRecord[]> {
  const out: DeletedPackRecord[] = [];
  for await (const v of db.values(prefixRange(Buffer.of(KEY_DELETED_PACK)))) out.push(parseRecord(v, DELETED_PACK_RECORD));
  return out;
}

export function deletedPackValue(rec: DeletedPackRecord): Buffer {
  return jsonValue(rec);
}
