/**
 * check, phases 3 and 4: every indexed pack is there, has its recorded size, and its table of
 * contents parses; every pack file is indexed; every index entry agrees with the table of contents
 * it points into, and every digest a manifest names is indexed.
 */
import { promises as fsp } from 'node:fs';
import { CONTAINER_CODEC, packFileName, parsePackFileName, storedShare, TOC_PREFIX_BYTES, type PackEntry } from '../format/pack.js';
import { locationKey } from './pack-data.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { zeroCounters, type StoreCounters } from '../store/counters.js';
import { decodeChunkValue, KEY_CHUNK, KEY_PACK, parseRecord, PACK_RECORD, prefixRange, type PackRecord } from '../store/db.js';
import type { PackReader } from '../store/pack-reader.js';
import type { Store } from '../store/store.js';
import { CorruptError } from '../util/errors.js';
import { indexOfSorted } from '../util/search.js';
import { NEXT_REPAIR, type CheckProblem } from './check-problems.js';
import { ensureLength, type DigestSet } from './digest-set.js';

export interface PackState {
  id: number;
  name: string;
  record?: PackRecord;
  fileBytes?: number;
  toc?: PackEntry[];
  tocOffsets?: Float64Array;
  bad: boolean;
}

export interface PacksResult {
  /** Indexed packs, by id. */
  packs: Map<number, PackState>;
  /** The problem of each bad indexed pack (missing, truncated, unreadable). */
  packProblems: Map<number, CheckProblem>;
  /** Pack files the index does not know. */
  problems: CheckProblem[];
  /** The pack counters, recounted. */
  counted: StoreCounters;
  checked: { packs: number };
}

export async function checkPacks(store: Store): Promise<PacksResult> {
  const problems: CheckProblem[] = [];
  const counted = zeroCounters();
  const checked = { packs: 0 };
  const packs = new Map<number, PackState>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_PACK)))) {
    const rec = parseRecord(v, PACK_RECORD);
    packs.set(rec.id, { id: rec.id, name: packFileName(rec.id), record: rec, bad: false });
    counted.packs++;
    counted.packBytes += rec.bytes;
    counted.packPayloadBytes += rec.payloadBytes;
  }
  const packProblems = new Map<number, CheckProblem>();
  for (const ps of packs.values()) {
    checked.packs++;
    const st = await fsp.stat(store.packs.packPath(ps.id)).catch(() => undefined);
    if (!st) {
      ps.bad = true;
      packProblems.set(ps.id, {
        kind: 'pack-missing',
        message: `pack ${ps.name} is missing`,
        pack: ps.name,
        affects: [],
        next: NEXT_REPAIR,
      });
      continue;
    }
    ps.fileBytes = st.size;
    try {
      const toc = await readToc(store.packs, ps.id);
      ps.toc = toc;
      ps.tocOffsets = Float64Array.from(toc.map((e) => e.offset));
      if (st.size !== ps.record!.bytes || toc.length !== ps.record!.chunks) {
        throw new CorruptError(
          `pack ${ps.name}: ${st.size} bytes and ${toc.length} chunks, its record says ${ps.record!.bytes} bytes and ${ps.record!.chunks} chunks`,
        );
      }
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      ps.bad = true;
      const truncated = st.size < ps.record!.bytes;
      packProblems.set(ps.id, {
        kind: truncated ? 'pack-size' : 'pack-unreadable',
        message: truncated ? `pack ${ps.name} is truncated (${st.size} of ${ps.record!.bytes} bytes): ${err.message}` : err.message,
        pack: ps.name,
        affects: [],
        next: NEXT_REPAIR,
      });
    }
  }
  for (const name of await fsp.readdir(store.packs.packsDir)) {
    const id = parsePackFileName(name);
    if (id === undefined || packs.has(id)) continue;
    problems.push({ kind: 'pack-unindexed', message: `pack ${name} is not in the index`, pack: name, affects: [], next: NEXT_REPAIR });
  }
  return { packs, packProblems, problems, counted, checked };
}

export interface IndexResult {
  problems: CheckProblem[];
  /** Digests whose stored copy is unusable (hex → the problem): the snapshots using them are affected. */
  badDigests: Map<string, CheckProblem>;
  /** Referenced digests the index lacks (hex → the problem). */
  missingByDigest: Map<string, CheckProblem>;
  /** For each pack of `readSet`: the indexed digest at each offset. */
  indexedAt: Map<number, Map<number, Buffer>>;
  /** The chunk counters, recounted. */
  counted: StoreCounters;
  checked: { chunks: number };
}

export async function checkIndex(
  store: Store,
  packs: PacksResult,
  referenced: DigestSet,
  readSet: readonly number[],
): Promise<IndexResult> {
  const counted = zeroCounters();
  const checked = { chunks: 0 };
  const { packProblems } = packs;
  /** Referenced digests found in the index (by ordinal). */
  let indexedFlag = new Uint8Array(referenced.size);
  /** Digests whose stored copy is unusable → the snapshots using them are affected. */
  const badDigests = new Map<string, CheckProblem>();
  const indexProblems: CheckProblem[] = [];
  // For --read-data: the indexed digest at each (pack, offset) of the packs to read.
  const indexedAt = new Map<number, Map<number, Buffer>>();
  for (const id of readSet) indexedAt.set(id, new Map());
  const it = store.db.iterator(prefixRange(Buffer.of(KEY_CHUNK)));
  try {
    for (;;) {
      const batch = await it.nextv(4096);
      if (batch.length === 0) break;
      for (const [k, v] of batch) {
        checked.chunks++;
        counted.chunks++;
        let loc: ChunkLocation;
        try {
          loc = decodeChunkValue(v);
        } catch {
          indexProblems.push({
            kind: 'index-entry',
            message: `index entry of chunk ${k.subarray(1).toString('hex')} does not decode`,
            chunk: k.subarray(1).toString('hex'),
            affects: [],
            next: NEXT_REPAIR,
          });
          continue;
        }
        counted.chunkBytes += storedShare(loc);
        const ord = referenced.find(k, 1);
        if (ord >= 0) indexedFlag[ord] = 1;
        const hex = () => k.subarray(1).toString('hex');
        const ps = packs.packs.get(loc.pack);
        if (!ps) {
          const pr: CheckProblem = {
            kind: 'index-entry',
            message: `chunk ${hex()} is indexed in pack ${packFileName(loc.pack)}, which is not an indexed pack`,
            chunk: hex(),
            pack: packFileName(loc.pack),
            affects: [],
            next: NEXT_REPAIR,
          };
          indexProblems.push(pr);
          badDigests.set(hex(), pr);
          continue;
        }
        if (ps.bad) {
          badDigests.set(hex(), packProblems.get(ps.id)!);
          continue;
        }
        const e = findTocEntry(ps, loc.offset, loc.member ?? 0);
        if (
          !e ||
          e.storedLength !== loc.storedLength ||
          e.codec !== loc.codec ||
          (e.codec === CONTAINER_CODEC && e.pages !== loc.pages) ||
          !k.subarray(1, 1 + TOC_PREFIX_BYTES).equals(e.digestPrefix)
        ) {
          const pr: CheckProblem = {
            kind: 'index-entry',
            message: `index entry of chunk ${hex()} (pack ${ps.name}, offset ${loc.offset}, ${loc.storedLength} B, codec ${loc.codec}) disagrees with the pack's table of contents`,
            chunk: hex(),
            pack: ps.name,
            affects: [],
            next: NEXT_REPAIR,
          };
          indexProblems.push(pr);
          badDigests.set(hex(), pr);
          continue;
        }
        indexedAt.get(loc.pack)?.set(locationKey(loc.offset, loc.member), Buffer.from(k.subarray(1)));
      }
    }
  } finally {
    await it.close();
  }
  indexedFlag = ensureLength(indexedFlag, referenced.size);
  const missingByDigest = new Map<string, CheckProblem>();
  for (let ord = 0; ord < referenced.size; ord++) {
    if (indexedFlag[ord]) continue;
    const hex = Buffer.from(referenced.digest(ord)).toString('hex');
    const pr: CheckProblem = {
      kind: 'chunk-missing',
      message: `chunk ${hex} is used by a snapshot but is not in the index`,
      chunk: hex,
      affects: [],
      next: NEXT_REPAIR,
    };
    missingByDigest.set(hex, pr);
    badDigests.set(hex, pr);
  }
  return { problems: indexProblems, badDigests, missingByDigest, indexedAt, counted, checked };
}

/** The entry at `offset` (page `member` there when it is a container's frame). */
function findTocEntry(ps: PackState, offset: number, member: number): PackEntry | undefined {
  let i = indexOfSorted(ps.tocOffsets!, offset);
  if (i < 0) return undefined;
  while (i > 0 && ps.tocOffsets![i - 1] === offset) i--; // a container's pages share its offset
  const e = ps.toc![i + member];
  return e && e.offset === offset && e.member === member ? e : undefined;
}

/** The pack's table of contents, with prefixes copied out of the read buffer. */
async function readToc(packs: PackReader, id: number): Promise<PackEntry[]> {
  return (await packs.readToc(id)).map((e) => ({ ...e, digestPrefix: Buffer.from(e.digestPrefix) }));
}
