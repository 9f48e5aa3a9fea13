/**
 * Held prepared snapshots: 'h' + snapshot id → JSON HeldPrepared. A prepared snapshot a server keeps
 * for a coordinator's commit survives a restart: recovery keeps its manifest (it removes manifests
 * with neither a commit record nor a hold), and the commit batch that publishes it deletes the hold.
 */
import { jsonValue, parseJson, prefixedKey, prefixRange, type SnapshotRecord, type StoreDb } from './db.js';

export const KEY_HELD = 0x68; // 'h'

export interface HeldPrepared {
  record: SnapshotRecord;
  /** Wall-clock ms after which the holder aborts it. */
  deadline: number;
}

export function heldKey(id: string): Buffer {
  return prefixedKey(KEY_HELD, id);
}

export async function isHeld(db: StoreDb, id: string): Promise<boolean> {
  return (await db.get(heldKey(id))) !== undefined;
}

export async function putHeld(db: StoreDb, held: HeldPrepared): Promise<void> {
  await db.put(heldKey(held.record.id), jsonValue(held), { sync: true });
}

export async function listHeld(db: StoreDb): Promise<HeldPrepared[]> {
  const out: HeldPrepared[] = [];
  for await (const v of db.values(prefixRange(Buffer.of(KEY_HELD)))) out.push(parseJson<HeldPrepared>(v));
  return out;
}
