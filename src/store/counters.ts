/**
 * Store counters for a fast `vnstore stats`: every LevelDB batch that changes what they count adds a
 * delta record in the same batch, so counters and data can never disagree after a crash.
 *
 *   'm' "counters"             → JSON StoreCounters: the folded base (written by init, fold, repair)
 *   'm' "counters/" + 24 hex   → JSON Partial<StoreCounters>: one delta per batch (random key)
 *
 * Deltas are commutative: batches written concurrently (a pack seal and a commit) need no ordering
 * and no read-modify-write. Reading sums the base and every delta; folding (gc, stats when there are
 * many) replaces the deltas it read with a new base in one batch, so a delta written meanwhile is
 * never lost. A store without a base key predates counters: stats then recounts (see stats.ts).
 */
import { randomBytes } from 'node:crypto';
import {
  jsonValue,
  KEY_META,
  parseRecord,
  prefixRange,
  type PackRecord,
  type RecordSchema,
  type SnapshotRecord,
  type StoreDb,
} from './db.js';

export interface StoreCounters {
  /** Committed snapshots and the sums of their records. */
  snapshots: number;
  logicalBytes: number;
  pages: number;
  zeroPages: number;
  manifestBytes: number;
  /** Manifests of forgotten snapshots kept as delta bases ('k' records). */
  keptBases: number;
  keptBaseBytes: number;
  /** Distinct chunks in the index ('c' keys) and the sum of their stored (compressed) lengths. */
  chunks: number;
  chunkBytes: number;
  /** Indexed packs ('p' records): count, whole file bytes, payload bytes (dead copies included). */
  packs: number;
  packBytes: number;
  packPayloadBytes: number;
}

export type CounterDelta = Partial<StoreCounters>;

export const COUNTER_FIELDS: readonly (keyof StoreCounters)[] = [
  'snapshots',
  'logicalBytes',
  'pages',
  'zeroPages',
  'manifestBytes',
  'keptBases',
  'keptBaseBytes',
  'chunks',
  'chunkBytes',
  'packs',
  'packBytes',
  'packPayloadBytes',
];

export const COUNTERS_KEY = Buffer.concat([Buffer.of(KEY_META), Buffer.from('counters', 'latin1')]);
const DELTA_PREFIX = Buffer.concat([Buffer.of(KEY_META), Buffer.from('counters/', 'latin1')]);
/** Fold when this many deltas have piled up (reading them stays well under a millisecond each). */
export const FOLD_AFTER_DELTAS = 2000;

export function zeroCounters(): StoreCounters {
  const c = {} as StoreCounters;
  for (const f of COUNTER_FIELDS) c[f] = 0;
  return c;
}

interface BatchLike {
  put(key: Buffer, value: Buffer): unknown;
  del?(key: Buffer): unknown;
}

/** Adds a delta record to a batch (no-op when every field is zero). */
export function addCounterDelta(batch: BatchLike, delta: CounterDelta): void {
  const clean: CounterDelta = {};
  let any = false;
  for (const f of COUNTER_FIELDS) {
    const v = delta[f];
    if (v === undefined || v === 0) continue;
    if (!Number.isSafeInteger(v)) throw new RangeError(`counter delta ${f} = ${v}`);
    clean[f] = v;
    any = true;
  }
  if (!any) return;
  batch.put(Buffer.concat([DELTA_PREFIX, Buffer.from(randomBytes(12).toString('hex'), 'latin1')]), jsonValue(clean));
}

/** Writes the base counters (init: an empty store). */
export function putCounterBase(batch: BatchLike, counters: StoreCounters): void {
  batch.put(COUNTERS_KEY, jsonValue({ v: 1, ...counters }));
}

export function sumDelta(a: CounterDelta, b: CounterDelta): CounterDelta {
  const out: CounterDelta = { ...a };
  for (const f of COUNTER_FIELDS) if (b[f] !== undefined) out[f] = (out[f] ?? 0) + b[f]!;
  return out;
}

export function snapshotDelta(records: readonly SnapshotRecord[], sign: 1 | -1): CounterDelta {
  const d = zeroCounters();
  for (const r of records) {
    d.snapshots += sign;
    d.logicalBytes += sign * r.byteLength;
    d.pages += sign * r.pageCount;
    d.zeroPages += sign * r.zeroPages;
    d.manifestBytes += sign * r.manifestBytes;
  }
  return d;
}

/** A pack sealed by the writer: every chunk in it is new to the index. */
export function sealedPackDelta(record: PackRecord): CounterDelta {
  return {
    chunks: record.chunks,
    chunkBytes: record.payloadBytes,
    packs: 1,
    packBytes: record.bytes,
    packPayloadBytes: record.payloadBytes,
  };
}

/**
 * A pack indexed by recovery: its chunks may already be indexed elsewhere (a gc rewrite interrupted
 * after the new pack was renamed into place), so only digests new to the index count as chunks, and
 * re-pointed ones change chunkBytes by their length difference. `prior[i]` is the existing index
 * entry's stored length for entries[i], or undefined.
 */
export function recoveredPackDelta(
  record: PackRecord,
  entries: readonly { digest: Uint8Array; storedLength: number }[],
  prior: readonly (number | undefined)[],
): CounterDelta {
  const d: CounterDelta = { chunks: 0, chunkBytes: 0, packs: 1, packBytes: record.bytes, packPayloadBytes: record.payloadBytes };
  const seen = new Set<string>();
  for (let i = 0; i < entries.length; i++) {
    const key = Buffer.from(entries[i].digest).toString('latin1');
    if (seen.has(key)) continue; // a digest twice in one table: the batch writes one entry (the last)
    seen.add(key);
    if (prior[i] === undefined) {
      d.chunks! += 1;
      d.chunkBytes! += entries[i].storedLength;
    } else d.chunkBytes! += entries[i].storedLength - prior[i]!;
  }
  return d;
}

/** A counter base or delta: any of the fields, each an integer (deltas may be negative). */
const COUNTER_RECORD: RecordSchema<CounterDelta> = {
  name: 'stats counter record',
  fields: Object.fromEntries(COUNTER_FIELDS.map((f) => [f, 'int?'])),
};

export interface CounterState {
  /** undefined: the store predates counters (no base key). */
  counters: StoreCounters | undefined;
  deltaKeys: Buffer[];
}

/** Base + all deltas (one iterator: a consistent view). */
export async function readCounterState(db: StoreDb): Promise<CounterState> {
  let base: StoreCounters | undefined;
  const sum = zeroCounters();
  const deltaKeys: Buffer[] = [];
  for await (const [k, v] of db.iterator(prefixRange(COUNTERS_KEY))) {
    const parsed = parseRecord(v, COUNTER_RECORD);
    if (k.length === COUNTERS_KEY.length) base = { ...zeroCounters(), ...pick(parsed) };
    else {
      deltaKeys.push(k);
      for (const f of COUNTER_FIELDS) sum[f] += parsed[f] ?? 0;
    }
  }
  if (!base) return { counters: undefined, deltaKeys };
  for (const f of COUNTER_FIELDS) base[f] += sum[f];
  return { counters: base, deltaKeys };
}

export async function readCounters(db: StoreDb): Promise<StoreCounters | undefined> {
  return (await readCounterState(db)).counters;
}

/** Folds the deltas into the base. Callers hold the maintenance lock (one fold at a time). */
export async function foldCounters(db: StoreDb): Promise<StoreCounters | undefined> {
  const state = await readCounterState(db);
  if (!state.counters || state.deltaKeys.length === 0) return state.counters;
  const batch = db.batch();
  putCounterBase(batch, state.counters);
  for (const k of state.deltaKeys) batch.del(k);
  await batch.write({ sync: true });
  return state.counters;
}

/**
 * Replaces base and deltas with exact values (repair). Only correct when nothing else writes to the
 * store meanwhile: callers require no open session and an idle pack writer.
 */
export async function resetCounters(db: StoreDb, exact: StoreCounters): Promise<void> {
  const state = await readCounterState(db);
  const batch = db.batch();
  putCounterBase(batch, exact);
  for (const k of state.deltaKeys) batch.del(k);
  await batch.write({ sync: true });
}

export function counterDrift(
  recorded: StoreCounters | undefined,
  exact: StoreCounters,
): Partial<Record<keyof StoreCounters, { counter: number | null; exact: number }>> {
  const out: Partial<Record<keyof StoreCounters, { counter: number | null; exact: number }>> = {};
  for (const f of COUNTER_FIELDS) {
    const c = recorded ? recorded[f] : null;
    if (c !== exact[f]) out[f] = { counter: c, exact: exact[f] };
  }
  return out;
}

function pick(v: CounterDelta): CounterDelta {
  const out: CounterDelta = {};
  for (const f of COUNTER_FIELDS) if (typeof v[f] === 'number') out[f] = v[f];
  return out;
}
