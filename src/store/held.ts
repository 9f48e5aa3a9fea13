/**
 * Held prepared snapshots: 'h' + snapshot id → JSON HeldPrepared. A prepared snapshot a server keeps
 * for a coordinator's commit survives a restart: recovery keeps its manifest (it removes manifests
 * with neither a commit record nor a hold), and the commit batch that publishes it deletes the hold.
 */
import {
  jsonValue,
  parseRecord,
  prefixedKey,
  prefixRange,
  SNAPSHOT_RECORD,
  type RecordSchema,
  type SnapshotRecord,
  type StoreDb,
} from './db.js';

export const KEY_HELD = 0x68; // 'h'

export interface HeldPrepared {
  record: SnapshotRecord;
  /** Wall-clock ms after which the holder aborts it. */
  deadline: number;
}

const HELD_RECORD: RecordSchema<HeldPrepared> = {
  name: 'held prepared snapshot',
  fields: { deadline: 'count' },
  check: (r) => (typeof r.record === 'object' && r.record !== null && !Array.isArray(r.record) ? undefined : 'has no snapshot record'),
};

/** A hold read back, its nested snapshot record checked like any other (damage reads as exit 7). */
function parseHeld(v: Uint8Array): HeldPrepared {
  const held = parseRecord(v, HELD_RECORD);
  return { deadline: held.deadline, record: parseRecord(jsonValue(held.record), SNAPSHOT_RECORD) };
}

export function heldKey(id: string): Buffer {
  return prefixedKey(KEY_HELD, id);
}

export async function isHeld(db: StoreDb, id: string): Promise<boolean> {
  return (await db.get(heldKey(id))) !== undefined;
}

/** Writes a hold (synced), with `also` in the same batch (format 3: the chunk-number mark). */
export async function putHeld(db: StoreDb, held: HeldPrepared, also?: [Buffer, Buffer]): Promise<void> {
  const batch = db.batch().put(heldKey(held.record.id), jsonValue(held));
  if (also) batch.put(also[0], also[1]);
  await batch.write({ sync: true });
}

export async function listHeld(db: StoreDb): Promise<HeldPrepared[]> {
  const out: HeldPrepared[] = [];
  for await (const v of db.values(prefixRange(Buffer.of(KEY_HELD)))) out.push(parseHeld(v));
  return out;
}
