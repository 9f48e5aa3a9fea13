/**
 * LevelDB key layout (one database, one-byte key prefixes; raw bytes to keep index entries small):
 *   'c' + digest[32]        → chunk location: varint pack | varint offset | varint storedLength·4+codec
 *   'p' + u32be pack id     → JSON PackRecord: the pack is sealed and all its chunks are indexed
 *   's' + snapshot id       → JSON SnapshotRecord: the commit record; a snapshot exists iff this does
 *   'v' + vm + 0x00 + id    → empty: per-VM listing
 *   'g' + group id          → JSON GroupRecord: snapshots committed together as one group
 *   'm' + name              → JSON store metadata (counters)
 *   'h' + snapshot id       → JSON HeldPrepared: a prepared snapshot kept across restarts (held.ts)
 * See docs/FORMAT.md.
 */
import { randomBytes } from 'node:crypto';
import { Level } from 'level';
import type { ChunkLocation } from '../index/chunk-table.js';
import { PAGE_SIZE } from '../format/pages.js';
import { CONTAINER_CODEC } from '../format/pack.js';
import { ByteReader, putVarint } from '../format/varint.js';
import { CATALOG_DAMAGE_ADVICE, CorruptError, VnstoreError } from '../util/errors.js';

export type StoreDb = Level<Buffer, Buffer>;

export const KEY_CHUNK = 0x63; // 'c'
export const KEY_PACK = 0x70; // 'p'
export const KEY_SNAPSHOT = 0x73; // 's'
export const KEY_VM = 0x76; // 'v'
export const KEY_GROUP = 0x67; // 'g'
export const KEY_META = 0x6d; // 'm'

/** 'm' "chunkgen": a random token rewritten in every batch that changes chunk entries (see table-file.ts). */
export const CHUNK_GEN_KEY = Buffer.concat([Buffer.of(KEY_META), Buffer.from('chunkgen', 'latin1')]);
/**
 * The highest pack id at the last clean close of a full open (decimal text). Packs above it were
 * sealed by a process that did not close cleanly; the next full open drops those no snapshot uses.
 */
export const CLEAN_PACK_KEY = Buffer.concat([Buffer.of(KEY_META), Buffer.from('cleanpack', 'latin1')]);

/** Adds a fresh chunk-generation token to a batch that changes chunk entries; returns the token. */
export function stampChunkGeneration(batch: { put(key: Buffer, value: Buffer): unknown }): Buffer {
  const token = randomBytes(16);
  batch.put(CHUNK_GEN_KEY, token);
  return token;
}

/** A key range no key of ours falls in: every prefix byte above is below 0xff. */
const EMPTY_RANGE = [Buffer.from([0xff, 0xff, 0xff]), Buffer.from([0xff, 0xff, 0xff, 0xff])] as const;

/**
 * Writes LevelDB's memtable to a table file now (a compaction of a range that holds no keys: LevelDB
 * flushes the memtable first, and there is nothing else to compact). Otherwise the next open replays
 * the write-ahead log entry by entry and writes that table itself: after a put that indexed 74,547
 * chunks, the next command's open took 170-230 ms instead of 20-26 ms (docs/DESIGN.md).
 */
export function flushMemtable(db: StoreDb): Promise<void> {
  return compactRange(db, EMPTY_RANGE);
}

/** Every key of ours: each starts with a prefix byte below 0xff. */
const ALL_KEYS = [Buffer.of(0x00), Buffer.of(0xff)] as const;

/**
 * Compacts the whole database now: its tables are rewritten without the entries that later writes
 * replaced or deleted. `vnstore compact` rewrites every moved chunk's index entry, and LevelDB kept
 * both versions until its own compactions reached them: on real guest memory the index after
 * compact was twice its size (12.6 MB against 6.4 MB after this, which took 0.22 s; bench/RESULTS.md).
 */
export function compactAllKeys(db: StoreDb): Promise<void> {
  return compactRange(db, ALL_KEYS);
}

/** classic-level's compactRange, which is not in `level`'s typings (hence the cast). */
function compactRange(db: StoreDb, [start, end]: readonly [Buffer, Buffer]): Promise<void> {
  return (db as unknown as { compactRange(start: Buffer, end: Buffer): Promise<void> }).compactRange(start, end);
}

export function openDb(dir: string): StoreDb {
  return new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
}

/**
 * Why LevelDB would not open, by classic-level's codes: the open fails with LEVEL_DATABASE_NOT_OPEN
 * and the cause's code says LEVEL_LOCKED, LEVEL_CORRUPTION or LEVEL_IO_ERROR. Anything but a lock or
 * a full disk is reported as damage, as before.
 */
export function levelOpenError(err: unknown, dbDir: string): Error {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
  const message = String(cause?.message ?? (err as Error).message);
  if (cause?.code === 'LEVEL_LOCKED') return new VnstoreError('E_LOCKED', `store index ${dbDir} is locked by another process`);
  // Opening LevelDB writes (log replay, new log and manifest): a full disk is not corruption. LevelDB
  // reports it as a plain IO error (LEVEL_IO_ERROR, no errno): its text is all there is to go on.
  if (/No space left on device/i.test(message))
    return new VnstoreError('E_NO_SPACE', `store index ${dbDir} cannot be opened: no space left on device`, { cause: err });
  return new CorruptError(`store index ${dbDir} cannot be opened: ${message}`, { cause: err });
}

export function chunkKey(digest: Uint8Array): Buffer {
  const k = Buffer.allocUnsafe(33);
  k[0] = KEY_CHUNK;
  k.set(digest, 1);
  return k;
}

/**
 * Chunk location as varints: pack id, offset, then storedLength·4 + codec (codec < 4 in format v1; a
 * larger codec gets a 4th varint). 6-8 bytes instead of 11: the index is the store's largest metadata.
 * A page in a zstd container (codec 2, pack format 2) adds a 4th varint, member + 16·(pages - 1)
 * (1-2 B): offset and length then name the container's frame.
 */
export function encodeChunkValue(loc: ChunkLocation): Buffer {
  // Hand-rolled varints: this runs once per new chunk when a pack is sealed.
  const out = Buffer.allocUnsafe(24);
  let p = putVarint(out, 0, loc.pack);
  p = putVarint(out, p, loc.offset);
  if (loc.codec === CONTAINER_CODEC) {
    p = putVarint(out, p, loc.storedLength * 4 + loc.codec);
    p = putVarint(out, p, (loc.member ?? 0) + 16 * ((loc.pages ?? 1) - 1));
  } else if (loc.codec < 4) p = putVarint(out, p, loc.storedLength * 4 + loc.codec);
  else {
    p = putVarint(out, p, loc.storedLength * 4);
    p = putVarint(out, p, loc.codec);
  }
  return out.subarray(0, p);
}

export function decodeChunkValue(v: Uint8Array): ChunkLocation {
  const r = new ByteReader(v, 'chunk index entry');
  const pack = r.varint();
  const offset = r.varint();
  const lc = r.varint();
  if (lc % 4 === CONTAINER_CODEC) {
    const mp = r.varint();
    const member = mp % 16;
    const pages = Math.floor(mp / 16) + 1;
    if (pages > 16 || member >= pages) throw new CorruptError(`chunk index entry: container member ${member} of ${pages} pages`);
    return { pack, offset, storedLength: Math.floor(lc / 4), codec: CONTAINER_CODEC, member, pages };
  }
  const codec = r.remaining > 0 ? r.varint() : lc % 4;
  return { pack, offset, storedLength: Math.floor(lc / 4), codec };
}

export function packKey(packId: number): Buffer {
  const k = Buffer.allocUnsafe(5);
  k[0] = KEY_PACK;
  k.writeUInt32BE(packId, 1);
  return k;
}

export function prefixedKey(prefix: number, rest: string): Buffer {
  return Buffer.concat([Buffer.of(prefix), Buffer.from(rest, 'utf8')]);
}

export function vmKey(vm: string, id: string): Buffer {
  return Buffer.concat([Buffer.of(KEY_VM), Buffer.from(vm, 'utf8'), Buffer.of(0), Buffer.from(id, 'utf8')]);
}

/** Range options covering every key that starts with `prefix`. */
export function prefixRange(prefix: Buffer): { gte: Buffer; lt: Buffer } {
  const lt = Buffer.from(prefix);
  let i = lt.length - 1;
  while (i >= 0 && lt[i] === 0xff) i--;
  if (i < 0) throw new RangeError('prefix of 0xff bytes');
  lt[i]++;
  return { gte: prefix, lt: lt.subarray(0, i + 1) };
}

export function jsonValue(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), 'utf8');
}

/**
 * What each field of a catalog record must be: a string, a non-negative integer ('count'), any
 * integer ('int'), a list of strings; '?' = may be absent.
 */
type FieldKind = 'string' | 'string?' | 'count' | 'count?' | 'int?' | 'strings';

export interface RecordSchema<T> {
  /** What the record is, as the error names it ("snapshot record"). */
  name: string;
  fields: Record<string, FieldKind>;
  /** Checks beyond the field types; returns what is wrong. */
  check?: (r: T) => string | undefined;
}

/**
 * Parses a JSON record read from LevelDB and checks it against its schema. LevelDB verifies no block
 * checksum on reads (classic-level offers no verify_checksums option), so damaged table bytes can
 * come back as a value: they must read as damage (CorruptError, exit 7), never as an internal error.
 */
export function parseRecord<T>(v: Uint8Array, schema: RecordSchema<T>, key?: string): T {
  let r: unknown;
  try {
    r = JSON.parse(Buffer.from(v.buffer, v.byteOffset, v.length).toString('utf8'));
  } catch (err) {
    throw damagedRecord(schema, key, `does not parse (${(err as Error).message})`);
  }
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw damagedRecord(schema, key, 'is not an object');
  const fields = r as Record<string, unknown>;
  for (const [name, kind] of Object.entries(schema.fields)) {
    const x = fields[name];
    if (x === undefined && kind.endsWith('?')) continue;
    if (!fieldIs(x, kind)) throw damagedRecord(schema, key, `has a bad ${name} (${JSON.stringify(x) ?? 'absent'})`);
  }
  const wrong = schema.check?.(r as T);
  if (wrong) throw damagedRecord(schema, key, wrong);
  return r as T;
}

function fieldIs(x: unknown, kind: FieldKind): boolean {
  switch (kind) {
    case 'string':
    case 'string?':
      return typeof x === 'string';
    case 'count':
    case 'count?':
      return Number.isSafeInteger(x) && (x as number) >= 0;
    case 'int?':
      return Number.isSafeInteger(x);
    case 'strings':
      return Array.isArray(x) && x.every((e) => typeof e === 'string');
  }
}

function damagedRecord(schema: { name: string }, key: string | undefined, why: string): CorruptError {
  return new CorruptError(`store catalog (db/) is damaged: ${schema.name}${key ? ` ${key}` : ''} ${why}; ${CATALOG_DAMAGE_ADVICE}`);
}

const HEX_ID = /^[0-9a-f]{16}$/;

export const SNAPSHOT_RECORD: RecordSchema<SnapshotRecord> = {
  name: 'snapshot record',
  fields: {
    id: 'string',
    vm: 'string',
    group: 'string?',
    epoch: 'count?',
    time: 'string',
    parent: 'string?',
    base: 'string?',
    baseDepth: 'count',
    byteLength: 'count',
    pageCount: 'count',
    zeroPages: 'count',
    imageDigest: 'string',
    newChunks: 'count',
    newChunkBytes: 'count',
    manifestBytes: 'count',
    addedBytes: 'count',
  },
  check: (r) =>
    !HEX_ID.test(r.id)
      ? `has a bad id ${JSON.stringify(r.id)}`
      : (r.parent !== undefined && !HEX_ID.test(r.parent)) || (r.base !== undefined && !HEX_ID.test(r.base))
        ? 'names a bad parent or base'
        : !/^[0-9a-f]{64}$/.test(r.imageDigest)
          ? 'has a bad image digest'
          : r.pageCount !== Math.ceil(r.byteLength / PAGE_SIZE) || r.zeroPages > r.pageCount
            ? 'has page counts that do not fit its length'
            : undefined,
};

/** A commit record read under its key: also the id it carries must be the key's. */
export function parseSnapshotRecord(v: Uint8Array, id: string): SnapshotRecord {
  const r = parseRecord(v, SNAPSHOT_RECORD, id);
  if (r.id !== id) throw damagedRecord(SNAPSHOT_RECORD, id, `names snapshot ${JSON.stringify(r.id)}`);
  return r;
}

export const PACK_RECORD: RecordSchema<PackRecord> = {
  name: 'pack record',
  fields: { id: 'count', chunks: 'count', bytes: 'count', payloadBytes: 'count', sealedAt: 'string' },
  check: (r) => (r.payloadBytes > r.bytes ? 'has more payload than bytes' : undefined),
};

export const GROUP_RECORD: RecordSchema<GroupRecord> = {
  name: 'group record',
  fields: { id: 'string', time: 'string', snapshots: 'strings' },
  check: (r) => (r.snapshots.every((id) => HEX_ID.test(id)) ? undefined : 'lists a bad snapshot id'),
};

export interface PackRecord {
  id: number;
  chunks: number;
  /** Whole file size, header and table included. */
  bytes: number;
  payloadBytes: number;
  sealedAt: string;
}

export interface SnapshotRecord {
  id: string;
  vm: string;
  group?: string;
  epoch?: number;
  time: string;
  parent?: string;
  /** Snapshot whose manifest this one is delta-encoded against (usually the parent). */
  base?: string;
  baseDepth: number;
  byteLength: number;
  pageCount: number;
  zeroPages: number;
  imageDigest: string;
  /** Chunks first stored by this snapshot, and their stored (compressed) bytes. */
  newChunks: number;
  newChunkBytes: number;
  manifestBytes: number;
  /** Bytes this snapshot added to the store: new chunk payloads, their pack table entries, its manifest. */
  addedBytes: number;
}

export interface GroupRecord {
  id: string;
  time: string;
  snapshots: string[];
}

/**
 * Calls `fn` for every chunk index entry, in key order, through one iterator (a consistent view).
 * nextv() moves thousands of entries per native call. A value that does not decode is passed as
 * undefined (check reports it; other callers treat it as corruption).
 */
export async function scanChunkIndex(db: StoreDb, fn: (key: Buffer, loc: ChunkLocation | undefined) => void): Promise<void> {
  const it = db.iterator(prefixRange(Buffer.of(KEY_CHUNK)));
  try {
    for (;;) {
      const entries = await it.nextv(4096);
      if (entries.length === 0) break;
      for (const [k, v] of entries) {
        let loc: ChunkLocation | undefined;
        try {
          loc = decodeChunkValue(v);
        } catch {
          loc = undefined;
        }
        fn(k, loc);
      }
    }
  } finally {
    await it.close();
  }
}
