/** check, phase 1: the catalog records ('s', 'v', 'g', 'k', 'd') agree with one another. */
import { packFileName } from '../format/pack.js';
import {
  KEY_GROUP,
  KEY_SNAPSHOT,
  KEY_VM,
  parseRecord,
  parseSnapshotRecord,
  GROUP_RECORD,
  prefixRange,
  type GroupRecord,
  type SnapshotRecord,
} from '../store/db.js';
import { listDeletedPacks, listKeptBases, type KeptBaseRecord } from '../store/keys.js';
import type { Store } from '../store/store.js';
import { CATALOG_DAMAGE_ADVICE, CorruptError } from '../util/errors.js';
import { NEXT_REPAIR, type CheckProblem } from './check-problems.js';

export interface CatalogResult {
  /** Commit records that parse, in id order. */
  records: SnapshotRecord[];
  kept: KeptBaseRecord[];
  problems: CheckProblem[];
  warnings: string[];
}

export async function checkCatalog(store: Pick<Store, 'db'>): Promise<CatalogResult> {
  const problems: CheckProblem[] = [];
  const warnings: string[] = [];
  const records = await readSnapshotRecords(store, problems);
  const recById = new Map(records.map((r) => [r.id, r]));
  const kept = await listKeptBases(store.db);
  const vmKeys = new Set<string>();
  for await (const k of store.db.keys(prefixRange(Buffer.of(KEY_VM)))) vmKeys.add(k.subarray(1).toString('utf8'));
  for (const r of records) {
    const key = `${r.vm}\0${r.id}`;
    if (!vmKeys.delete(key))
      problems.push({
        kind: 'catalog',
        message: `snapshot ${r.id} has no per-VM listing entry`,
        snapshot: r.id,
        affects: [],
        next: NEXT_REPAIR,
      });
  }
  for (const k of vmKeys) {
    const [vm, id] = k.split('\0');
    problems.push({
      kind: 'catalog',
      message: `VM listing of ${vm} names snapshot ${id}, which has no commit record`,
      snapshot: id,
      affects: [],
      next: NEXT_REPAIR,
    });
  }
  const groups = new Map<string, GroupRecord>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_GROUP)))) {
    const g = parseRecord(v, GROUP_RECORD);
    groups.set(g.id, g);
  }
  for (const g of groups.values()) {
    for (const id of g.snapshots) {
      const r = recById.get(id);
      if (!r)
        problems.push({
          kind: 'catalog',
          message: `group ${g.id} lists snapshot ${id}, which has no commit record`,
          affects: [],
          next: NEXT_REPAIR,
        });
      else if (r.group !== g.id)
        problems.push({
          kind: 'catalog',
          message: `group ${g.id} lists snapshot ${id}, which belongs to group ${r.group ?? '(none)'}`,
          snapshot: id,
          affects: [],
          next: NEXT_REPAIR,
        });
    }
  }
  for (const r of records) {
    if (r.group === undefined) continue;
    const g = groups.get(r.group);
    if (!g)
      problems.push({
        kind: 'catalog',
        message: `snapshot ${r.id} belongs to group ${r.group}, which has no group record`,
        snapshot: r.id,
        affects: [],
        next: NEXT_REPAIR,
      });
    else if (!g.snapshots.includes(r.id))
      warnings.push(
        `group record ${r.group} does not list its member ${r.id} (written before groups were merged); '${NEXT_REPAIR}' rewrites it`,
      );
  }
  for (const d of await listDeletedPacks(store.db))
    warnings.push(`pack ${packFileName(d.id)} is being deleted by gc (finished on next open)`);
  return { records, kept, problems, warnings };
}

/**
 * Commit records, in id order; a damaged one (does not parse, fails its schema, carries another id)
 * is a problem of its own, and the check goes on with the others to show the whole damage.
 */
async function readSnapshotRecords(store: Pick<Store, 'db'>, problems: CheckProblem[]): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  for await (const [k, v] of store.db.iterator(prefixRange(Buffer.of(KEY_SNAPSHOT)))) {
    const id = k.subarray(1).toString('utf8');
    try {
      out.push(parseSnapshotRecord(v, id));
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      problems.push({ kind: 'catalog', message: err.message, snapshot: id, affects: [id], next: CATALOG_DAMAGE_ADVICE });
    }
  }
  return out;
}
