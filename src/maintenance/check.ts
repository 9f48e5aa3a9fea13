/**
 * check: is everything the catalog promises actually there and intact?
 *
 *   structure (always)  every indexed pack exists, has its size, and its table of contents parses
 *                       (checksums) and agrees with every index entry pointing into it; every pack
 *                       file is indexed; every manifest reads, matches its commit record and image
 *                       digest, resolves its delta base; every chunk a manifest names is indexed;
 *                       catalog keys agree ('s' / 'v' / 'g' / 'k'); counters equal a recount.
 *   --read-data [PCT]   re-reads packs (all, or a random PCT% of them), checks the payload checksum,
 *                       decodes and re-hashes every chunk.
 *   --repair-index      rebuilds the chunk index from the packs (decoding and re-hashing every chunk,
 *                       since a pack's table of contents keeps only digest prefixes); a pack with bad
 *                       chunks has its good chunks copied to a new pack and is moved to quarantine/,
 *                       an unreadable one is quarantined; catalog listings and counters are rebuilt.
 *
 * Each problem names the pack / chunk / snapshot, the snapshots it affects, and the command to run.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { imageDigest } from '../chunk/hash.js';
import {
  packFileName,
  parsePackFileName,
  parsePackHeader,
  parsePackToc,
  parsePackTrailer,
  PACK_HEADER_BYTES,
  PACK_TRAILER_BYTES,
  TOC_ENTRY_BYTES,
  TOC_PREFIX_BYTES,
  type PackEntry,
} from '../format/pack.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind } from '../format/pages.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import {
  chunkKey,
  decodeChunkValue,
  encodeChunkValue,
  jsonValue,
  KEY_CHUNK,
  KEY_GROUP,
  KEY_PACK,
  KEY_SNAPSHOT,
  KEY_VM,
  packKey,
  parseRecord,
  parseSnapshotRecord,
  GROUP_RECORD,
  PACK_RECORD,
  SNAPSHOT_RECORD,
  prefixedKey,
  prefixRange,
  scanChunkIndex,
  stampChunkGeneration,
  vmKey,
  type GroupRecord,
  type PackRecord,
  type SnapshotRecord,
} from '../store/db.js';
import { nameChunk, readPackTocAt } from '../store/pack-reader.js';
import { Store } from '../store/store.js';
import { CATALOG_DAMAGE_ADVICE, CorruptError, VnstoreError } from '../util/errors.js';
import { counterDrift, readCounters, resetCounters, zeroCounters, type StoreCounters } from './counters.js';
import { DigestSet, ensureLength } from './digest-set.js';
import { withMaintenanceLock } from './fence.js';
import { listDeletedPacks, listKeptBases } from './keys.js';
import { ManifestLoader } from './manifests.js';
import { quarantinePack, verifyChunks, writePack, type StoredChunk } from './pack-io.js';

export type ProblemKind =
  | 'pack-missing'
  | 'pack-unreadable'
  | 'pack-size'
  | 'pack-unindexed'
  | 'index-entry'
  | 'chunk-missing'
  | 'chunk-corrupt'
  | 'payload-checksum'
  | 'manifest-missing'
  | 'manifest-corrupt'
  | 'manifest-mismatch'
  | 'catalog'
  | 'counters';

export interface CheckProblem {
  kind: ProblemKind;
  message: string;
  pack?: string;
  chunk?: string;
  snapshot?: string;
  /** Committed snapshots that cannot be restored because of this problem. */
  affects: string[];
  /** The command to run next. */
  next: string;
}

export interface CheckOptions {
  readData?: boolean;
  /** Percentage of packs to read (implies readData); default 100. */
  readDataSubsetPct?: number;
  repairIndex?: boolean;
  /** Random source for the subset (tests). */
  random?: () => number;
}

export interface RepairReport {
  packsScanned: number;
  packsQuarantined: { pack: string; to: string; reason: string }[];
  packsSalvaged: { pack: string; into: string; goodChunks: number; badChunks: number }[];
  indexEntriesAdded: number;
  indexEntriesChanged: number;
  indexEntriesRemoved: number;
  catalogFixes: number;
  countersReset: boolean;
}

export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  warnings: string[];
  checked: {
    snapshots: number;
    keptBases: number;
    packs: number;
    chunks: number;
    packsRead: number;
    chunksRead: number;
    bytesRead: number;
  };
  counters: { recorded: StoreCounters | null; exact: StoreCounters; drift: ReturnType<typeof counterDrift> } | null;
  repair?: RepairReport;
  /** Distinct next commands, most useful first. */
  next: string[];
  seconds: number;
}

const NEXT_REPAIR = 'vnstore check --repair-index';
/**
 * What heals snapshots whose data is lost: forgetting them, or a put of the same image. The put must
 * be parentless: a put against a parent takes the pages equal to the parent's as stored, without
 * looking them up, so it would not store a lost chunk again.
 */
const NEXT_FORGET = (ids: string[]) =>
  ids.length > 0 ? `vnstore forget ${ids.join(' ')} (or put the same image again with 'vnstore put --parent none': that stores lost chunks anew and heals them)` : NEXT_REPAIR;

interface PackState {
  id: number;
  name: string;
  record?: PackRecord;
  fileBytes?: number;
  toc?: PackEntry[];
  tocOffsets?: Float64Array;
  bad: boolean;
}

export async function checkStore(store: Store, options: CheckOptions = {}): Promise<CheckReport> {
  return withMaintenanceLock(store, async () => {
    const started = performance.now();
    let repair: RepairReport | undefined;
    if (options.repairIndex) repair = await repairIndex(store);
    const report = await runCheck(store, options);
    if (repair) {
      report.repair = repair;
      // Counters: a repair makes them exact.
      if (report.counters && Object.keys(report.counters.drift).length > 0) {
        await resetCounters(store.db, report.counters.exact);
        report.counters = { recorded: report.counters.exact, exact: report.counters.exact, drift: {} };
        report.problems = report.problems.filter((p) => p.kind !== 'counters');
        repair.countersReset = true;
      }
      // What a repair leaves is beyond it (chunks lost with their pack): advising the repair that was
      // just run would lead nowhere; say what heals the snapshots affected.
      for (const p of report.problems) if (p.affects.length > 0 && p.next.startsWith(NEXT_REPAIR)) p.next = NEXT_FORGET(p.affects);
      report.ok = report.problems.length === 0;
      report.next = nextCommands(report.problems);
    }
    report.seconds = (performance.now() - started) / 1000;
    return report;
  });
}

/**
 * Commit records, in id order; a damaged one (does not parse, fails its schema, carries another id)
 * is a problem of its own, and the check goes on with the others to show the whole damage.
 */
async function readSnapshotRecords(store: Store, problems: CheckProblem[]): Promise<SnapshotRecord[]> {
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

async function runCheck(store: Store, options: CheckOptions): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const warnings: string[] = [];
  const p = Store.paths(store.dir);
  const exact = zeroCounters();
  const checked = { snapshots: 0, keptBases: 0, packs: 0, chunks: 0, packsRead: 0, chunksRead: 0, bytesRead: 0 };

  // ---------------------------------------------------------------- catalog
  const records = await readSnapshotRecords(store, problems);
  const recById = new Map(records.map((r) => [r.id, r]));
  const kept = await listKeptBases(store.db);
  const keptIds = new Set(kept.map((k) => k.id));
  const vmKeys = new Set<string>();
  for await (const k of store.db.keys(prefixRange(Buffer.of(KEY_VM)))) vmKeys.add(k.subarray(1).toString('utf8'));
  for (const r of records) {
    const key = `${r.vm}\0${r.id}`;
    if (!vmKeys.delete(key)) problems.push({ kind: 'catalog', message: `snapshot ${r.id} has no per-VM listing entry`, snapshot: r.id, affects: [], next: NEXT_REPAIR });
  }
  for (const k of vmKeys) {
    const [vm, id] = k.split('\0');
    problems.push({ kind: 'catalog', message: `VM listing of ${vm} names snapshot ${id}, which has no commit record`, snapshot: id, affects: [], next: NEXT_REPAIR });
  }
  const groups = new Map<string, GroupRecord>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_GROUP)))) {
    const g = parseRecord(v, GROUP_RECORD);
    groups.set(g.id, g);
  }
  for (const g of groups.values()) {
    for (const id of g.snapshots) {
      const r = recById.get(id);
      if (!r) problems.push({ kind: 'catalog', message: `group ${g.id} lists snapshot ${id}, which has no commit record`, affects: [], next: NEXT_REPAIR });
      else if (r.group !== g.id) problems.push({ kind: 'catalog', message: `group ${g.id} lists snapshot ${id}, which belongs to group ${r.group ?? '(none)'}`, snapshot: id, affects: [], next: NEXT_REPAIR });
    }
  }
  for (const r of records) {
    if (r.group === undefined) continue;
    const g = groups.get(r.group);
    if (!g) problems.push({ kind: 'catalog', message: `snapshot ${r.id} belongs to group ${r.group}, which has no group record`, snapshot: r.id, affects: [], next: NEXT_REPAIR });
    else if (!g.snapshots.includes(r.id)) warnings.push(`group record ${r.group} does not list its member ${r.id} (written before groups were merged); '${NEXT_REPAIR}' rewrites it`);
  }
  for (const d of await listDeletedPacks(store.db)) warnings.push(`pack ${packFileName(d.id)} is being deleted by gc (finished on next open)`);

  // ---------------------------------------------------------------- manifests
  const loader = new ManifestLoader(store);
  const referenced = new DigestSet(1 << 16);
  /** Snapshots that cannot be restored because their own manifest (or a base) is bad. */
  const brokenManifest = new Map<string, string>();
  // Dependants: a bad base breaks everything whose chain runs through it.
  const baseOf = new Map<string, string | undefined>();
  for (const k of kept) baseOf.set(k.id, k.base);
  for (const r of records) baseOf.set(r.id, r.base);
  const chainOf = (id: string): string[] => {
    const out: string[] = [];
    let b = baseOf.get(id);
    for (let n = 0; b !== undefined && n < 64; n++, b = baseOf.get(b)) out.push(b);
    return out;
  };
  for (const r of records) {
    checked.snapshots++;
    exact.snapshots++;
    let fileBytes = r.manifestBytes;
    let byteLength = r.byteLength;
    let pageCount = r.pageCount;
    let zeroPages = r.zeroPages;
    try {
      if (r.base !== undefined && !recById.has(r.base) && !keptIds.has(r.base)) {
        throw new CorruptError(`snapshot ${r.id}: its delta base ${r.base} is neither a snapshot nor a kept base manifest`);
      }
      const m = await loader.load(r.id);
      fileBytes = m.fileBytes;
      byteLength = m.header.byteLength;
      pageCount = m.pages.pageCount;
      zeroPages = m.pages.countKind(PageKind.Zero);
      const mismatch: string[] = [];
      if (m.header.byteLength !== r.byteLength) mismatch.push(`byte length ${m.header.byteLength} vs ${r.byteLength}`);
      if (m.pages.pageCount !== r.pageCount) mismatch.push(`page count ${m.pages.pageCount} vs ${r.pageCount}`);
      if ((m.header.baseId ?? null) !== (r.base ?? null)) mismatch.push(`delta base ${m.header.baseId ?? '(none)'} vs ${r.base ?? '(none)'}`);
      if (Buffer.from(m.header.imageDigest).toString('hex') !== r.imageDigest) mismatch.push('image digest');
      else if (imageDigest(m.pages, m.header.byteLength).toString('hex') !== r.imageDigest) mismatch.push('page digests do not hash to the image digest');
      if (zeroPages !== r.zeroPages) mismatch.push(`zero pages ${zeroPages} vs ${r.zeroPages}`);
      if (m.fileBytes !== r.manifestBytes) mismatch.push(`file size ${m.fileBytes} vs ${r.manifestBytes}`);
      if (mismatch.length > 0) {
        problems.push({ kind: 'manifest-mismatch', message: `manifest of snapshot ${r.id} disagrees with its commit record (${mismatch.join('; ')})`, snapshot: r.id, affects: [r.id], next: NEXT_FORGET([r.id]) });
        brokenManifest.set(r.id, 'manifest mismatch');
      }
      const pages = m.pages;
      for (let i = 0; i < pages.pageCount; i++) if (pages.kinds[i] === PageKind.Digest) referenced.add(pages.digests, i * DIGEST_BYTES);
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      const missing = /is missing/.test(err.message) && !/delta base/.test(err.message);
      problems.push({ kind: missing ? 'manifest-missing' : 'manifest-corrupt', message: err.message, snapshot: r.id, affects: [r.id], next: NEXT_FORGET([r.id]) });
      brokenManifest.set(r.id, err.message);
    }
    exact.logicalBytes += byteLength;
    exact.pages += pageCount;
    exact.zeroPages += zeroPages;
    exact.manifestBytes += fileBytes;
  }
  for (const k of kept) {
    checked.keptBases++;
    exact.keptBases++;
    const st = await fsp.stat(path.join(p.manifests, `${k.id}.vnm`)).catch(() => undefined);
    exact.keptBaseBytes += st?.size ?? k.manifestBytes;
    if (!st) {
      const dependants = records.filter((r) => chainOf(r.id).includes(k.id)).map((r) => r.id);
      if (dependants.length > 0 && !dependants.every((id) => brokenManifest.has(id))) {
        problems.push({ kind: 'manifest-missing', message: `kept base manifest ${k.id} is missing`, snapshot: k.id, affects: dependants, next: NEXT_FORGET(dependants) });
      }
    }
  }
  // A broken manifest also breaks every snapshot delta-encoded through it.
  for (const pr of problems) {
    if (!pr.snapshot || !pr.kind.startsWith('manifest')) continue;
    for (const r of records) if (r.id !== pr.snapshot && chainOf(r.id).includes(pr.snapshot) && !pr.affects.includes(r.id)) pr.affects.push(r.id);
  }
  const manifestNames = await fsp.readdir(p.manifests);
  for (const name of manifestNames) {
    const m = /^([0-9a-f]{16})\.vnm$/.exec(name);
    if (m && !recById.has(m[1]) && !keptIds.has(m[1])) warnings.push(`manifest ${name} belongs to no committed snapshot (removed on next open unless a session is committing it)`);
  }

  // ---------------------------------------------------------------- packs
  const packs = new Map<number, PackState>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_PACK)))) {
    const rec = parseRecord(v, PACK_RECORD);
    packs.set(rec.id, { id: rec.id, name: packFileName(rec.id), record: rec, bad: false });
    exact.packs++;
    exact.packBytes += rec.bytes;
    exact.packPayloadBytes += rec.payloadBytes;
  }
  const packProblems = new Map<number, CheckProblem>();
  for (const ps of packs.values()) {
    checked.packs++;
    const file = path.join(p.packs, ps.name);
    const st = await fsp.stat(file).catch(() => undefined);
    if (!st) {
      ps.bad = true;
      packProblems.set(ps.id, { kind: 'pack-missing', message: `pack ${ps.name} is missing`, pack: ps.name, affects: [], next: NEXT_REPAIR });
      continue;
    }
    ps.fileBytes = st.size;
    try {
      const toc = await readToc(file, ps.name);
      ps.toc = toc;
      ps.tocOffsets = Float64Array.from(toc.map((e) => e.offset));
      if (st.size !== ps.record!.bytes || toc.length !== ps.record!.chunks) {
        throw new CorruptError(`pack ${ps.name}: ${st.size} bytes and ${toc.length} chunks, its record says ${ps.record!.bytes} bytes and ${ps.record!.chunks} chunks`);
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
  for (const name of await fsp.readdir(p.packs)) {
    const id = parsePackFileName(name);
    if (id === undefined || packs.has(id)) continue;
    problems.push({ kind: 'pack-unindexed', message: `pack ${name} is not in the index`, pack: name, affects: [], next: NEXT_REPAIR });
  }

  // ---------------------------------------------------------------- index
  /** Referenced digests found in the index (by ordinal). */
  let indexedFlag = new Uint8Array(referenced.size);
  /** Digests whose stored copy is unusable → the snapshots using them are affected. */
  const badDigests = new Map<string, CheckProblem>();
  const indexProblems: CheckProblem[] = [];
  // For --read-data: the indexed digest at each (pack, offset) of the packs to read.
  const readSet = selectPacksToRead([...packs.values()].filter((ps) => !ps.bad).map((ps) => ps.id), options);
  const indexedAt = new Map<number, Map<number, Buffer>>();
  for (const id of readSet) indexedAt.set(id, new Map());
  const it = store.db.iterator(prefixRange(Buffer.of(KEY_CHUNK)));
  try {
    for (;;) {
      const batch = await it.nextv(4096);
      if (batch.length === 0) break;
      for (const [k, v] of batch) {
        checked.chunks++;
        exact.chunks++;
        let loc: ChunkLocation;
        try {
          loc = decodeChunkValue(v);
        } catch {
          indexProblems.push({ kind: 'index-entry', message: `index entry of chunk ${k.subarray(1).toString('hex')} does not decode`, chunk: k.subarray(1).toString('hex'), affects: [], next: NEXT_REPAIR });
          continue;
        }
        exact.chunkBytes += loc.storedLength;
        const ord = referenced.find(k, 1);
        if (ord >= 0) indexedFlag[ord] = 1;
        const hex = () => k.subarray(1).toString('hex');
        const ps = packs.get(loc.pack);
        if (!ps) {
          const pr: CheckProblem = { kind: 'index-entry', message: `chunk ${hex()} is indexed in pack ${packFileName(loc.pack)}, which is not an indexed pack`, chunk: hex(), pack: packFileName(loc.pack), affects: [], next: NEXT_REPAIR };
          indexProblems.push(pr);
          badDigests.set(hex(), pr);
          continue;
        }
        if (ps.bad) {
          badDigests.set(hex(), packProblems.get(ps.id)!);
          continue;
        }
        const e = findTocEntry(ps, loc.offset);
        if (!e || e.storedLength !== loc.storedLength || e.codec !== loc.codec || !k.subarray(1, 1 + TOC_PREFIX_BYTES).equals(e.digestPrefix)) {
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
        indexedAt.get(loc.pack)?.set(loc.offset, Buffer.from(k.subarray(1)));
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
    const pr: CheckProblem = { kind: 'chunk-missing', message: `chunk ${hex} is used by a snapshot but is not in the index`, chunk: hex, affects: [], next: NEXT_REPAIR };
    missingByDigest.set(hex, pr);
    badDigests.set(hex, pr);
  }

  // ---------------------------------------------------------------- data
  const dataProblems: CheckProblem[] = [];
  if (options.readData || options.readDataSubsetPct !== undefined) {
    for (const id of readSet) {
      const ps = packs.get(id)!;
      const res = await readPackData(store, path.join(p.packs, ps.name), ps.name, indexedAt.get(id)!);
      checked.packsRead++;
      checked.chunksRead += res.chunks;
      checked.bytesRead += res.bytes;
      if (res.error) {
        const pr: CheckProblem = { kind: 'pack-unreadable', message: res.error, pack: ps.name, affects: [], next: NEXT_REPAIR };
        dataProblems.push(pr);
        for (const d of indexedAt.get(id)!.values()) badDigests.set(d.toString('hex'), pr);
        continue;
      }
      for (const b of res.bad) {
        const hex = b.digest?.toString('hex');
        const pr: CheckProblem = {
          kind: 'chunk-corrupt',
          message: `pack ${ps.name}: chunk ${b.index} at offset ${b.offset}${hex ? ` (${hex})` : ' (not indexed)'} ${b.why}`,
          pack: ps.name,
          chunk: hex,
          affects: [],
          next: 'vnstore check --repair-index',
        };
        dataProblems.push(pr);
        if (hex) badDigests.set(hex, pr);
      }
      if (res.bad.length === 0 && !res.payloadCrcOk) {
        dataProblems.push({ kind: 'payload-checksum', message: `pack ${ps.name}: payload checksum mismatch although every chunk verifies`, pack: ps.name, affects: [], next: NEXT_REPAIR });
      }
    }
  }

  // ---------------------------------------------------------------- affected snapshots
  if (badDigests.size > 0) {
    const bad = new DigestSet(badDigests.size);
    const byOrd: CheckProblem[] = [];
    for (const [hex, pr] of badDigests) byOrd[bad.add(Buffer.from(hex, 'hex'))] = pr;
    for (const r of records) {
      if (brokenManifest.has(r.id)) continue;
      const pages = (await loader.load(r.id)).pages;
      const hit = new Set<CheckProblem>();
      for (let i = 0; i < pages.pageCount; i++) {
        if (pages.kinds[i] !== PageKind.Digest) continue;
        const ord = bad.find(pages.digests, i * DIGEST_BYTES);
        if (ord >= 0) hit.add(byOrd[ord]);
      }
      for (const pr of hit) if (!pr.affects.includes(r.id)) pr.affects.push(r.id);
    }
  }
  // Missing chunks: one problem per chunk is noise when a pack vanished; summarise per snapshot set.
  const missing = [...missingByDigest.values()];
  if (missing.length > 8) {
    const affected = [...new Set(missing.flatMap((m) => m.affects))].sort();
    problems.push({ kind: 'chunk-missing', message: `${missing.length} chunks used by snapshots are not in the index (first: ${missing[0].chunk})`, affects: affected, next: NEXT_REPAIR });
  } else problems.push(...missing);
  problems.push(...packProblems.values(), ...indexProblems, ...dataProblems);
  for (const pr of problems) {
    if ((pr.kind === 'chunk-corrupt' || pr.kind === 'chunk-missing' || pr.kind === 'pack-unreadable' || pr.kind === 'pack-missing' || pr.kind === 'pack-size') && pr.affects.length > 0) {
      pr.next = `${NEXT_REPAIR}, then ${NEXT_FORGET(pr.affects)}`;
    }
    pr.affects.sort();
  }

  // ---------------------------------------------------------------- counters
  let counters: CheckReport['counters'] = null;
  const recorded = await readCounters(store.db);
  const quiet = store.sessions.size === 0 && store.writer.unindexedChunks === 0;
  if (quiet) {
    const drift = counterDrift(recorded, exact);
    counters = { recorded: recorded ?? null, exact, drift };
    if (Object.keys(drift).length > 0) {
      const fields = Object.entries(drift).map(([f, d]) => `${f} ${d!.counter ?? 'unset'} (exact ${d!.exact})`);
      problems.push({ kind: 'counters', message: `stats counters drifted: ${fields.join(', ')}`, affects: [], next: NEXT_REPAIR });
    }
  } else warnings.push('counters not compared: sessions are open or chunks are being written');

  return {
    ok: problems.length === 0,
    problems,
    warnings,
    checked,
    counters,
    next: nextCommands(problems),
    seconds: 0,
  };
}

function nextCommands(problems: CheckProblem[]): string[] {
  const out: string[] = [];
  const repairFirst = problems.some((p) => p.next.startsWith(NEXT_REPAIR));
  if (repairFirst) out.push(NEXT_REPAIR);
  const forget = [...new Set(problems.flatMap((p) => p.affects))].sort();
  if (forget.length > 0) out.push(NEXT_FORGET(forget));
  return out;
}

function findTocEntry(ps: PackState, offset: number): PackEntry | undefined {
  const offs = ps.tocOffsets!;
  let lo = 0;
  let hi = offs.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (offs[mid] === offset) return ps.toc![mid];
    if (offs[mid] < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

function selectPacksToRead(ids: number[], options: CheckOptions): number[] {
  if (!options.readData && options.readDataSubsetPct === undefined) return [];
  const pct = options.readDataSubsetPct ?? 100;
  if (!(pct > 0 && pct <= 100)) throw new VnstoreError('E_USAGE', `--read-data-subset must be a percentage in (0, 100], got ${pct}`);
  if (pct >= 100) return ids;
  const n = Math.max(1, Math.ceil((ids.length * pct) / 100));
  const random = options.random ?? Math.random;
  const pool = [...ids];
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, Math.min(n, pool.length)).sort((a, b) => a - b);
}

/** The pack's table of contents, with prefixes copied out of the read buffer. */
async function readToc(file: string, name: string): Promise<PackEntry[]> {
  return (await readPackTocAt(file, name)).map((e) => ({ ...e, digestPrefix: Buffer.from(e.digestPrefix) }));
}

interface BadChunk {
  index: number;
  offset: number;
  digest?: Buffer;
  why: string;
}

interface PackData {
  error?: string;
  chunks: number;
  bytes: number;
  payloadCrcOk: boolean;
  bad: BadChunk[];
  /** Every chunk that verified, with its full digest. */
  good: { entry: PackEntry; digest: Buffer }[];
}

/**
 * Reads a whole pack, checks its structure and payload checksum, and verifies every chunk: indexed
 * chunks against their full digest (in the page workers), the others by decoding and re-hashing
 * against the digest prefix in the table of contents.
 */
async function readPackData(store: Store, file: string, name: string, indexedAt: Map<number, Buffer>): Promise<PackData> {
  let data: Buffer;
  try {
    data = await fsp.readFile(file);
  } catch (err) {
    return { error: `pack ${name}: cannot be read (${(err as Error).message})`, chunks: 0, bytes: 0, payloadCrcOk: false, bad: [], good: [] };
  }
  let entries: PackEntry[];
  let payloadCrc: number;
  try {
    parsePackHeader(data.subarray(0, PACK_HEADER_BYTES), name);
    if (data.length < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) throw new CorruptError(`pack ${name}: too short (${data.length} bytes)`);
    const trailer = parsePackTrailer(data.subarray(data.length - PACK_TRAILER_BYTES), data.length, name);
    entries = parsePackToc(data.subarray(trailer.tocOffset, trailer.tocOffset + trailer.count * TOC_ENTRY_BYTES), trailer, name);
    payloadCrc = trailer.payloadCrc;
  } catch (err) {
    if (!(err instanceof CorruptError)) throw err;
    return { error: err.message, chunks: 0, bytes: data.length, payloadCrcOk: false, bad: [], good: [] };
  }
  const end = entries.length > 0 ? entries[entries.length - 1].offset + entries[entries.length - 1].storedLength : PACK_HEADER_BYTES;
  const payloadCrcOk = crc32(data.subarray(PACK_HEADER_BYTES, end)) === payloadCrc >>> 0;
  const bad: BadChunk[] = [];
  const good: PackData['good'] = [];
  const withDigest: { i: number; chunk: StoredChunk }[] = [];
  const page = new Uint8Array(PAGE_SIZE);
  entries.forEach((e, i) => {
    const payload = data.subarray(e.offset, e.offset + e.storedLength);
    const d = indexedAt.get(e.offset);
    if (d) {
      withDigest.push({ i, chunk: { digest: d, payload, codec: e.codec } });
      return;
    }
    const named = nameChunk(payload, e, page);
    if ('why' in named) bad.push({ index: i, offset: e.offset, why: named.why });
    else good.push({ entry: e, digest: named.digest });
  });
  const badIdx = new Set(await verifyChunks(store, withDigest.map((w) => w.chunk)));
  withDigest.forEach((w, k) => {
    const e = entries[w.i];
    if (badIdx.has(k)) bad.push({ index: w.i, offset: e.offset, digest: Buffer.from(w.chunk.digest), why: 'is corrupt (does not decode to its digest)' });
    else if (!Buffer.from(w.chunk.digest).subarray(0, TOC_PREFIX_BYTES).equals(e.digestPrefix)) bad.push({ index: w.i, offset: e.offset, digest: Buffer.from(w.chunk.digest), why: 'does not match its table of contents' });
    else good.push({ entry: e, digest: Buffer.from(w.chunk.digest) });
  });
  bad.sort((a, b) => a.index - b.index);
  good.sort((a, b) => a.entry.offset - b.entry.offset);
  return { chunks: entries.length, bytes: data.length, payloadCrcOk, bad, good };
}

// ------------------------------------------------------------------ repair

/**
 * Rebuilds the chunk index and the pack records from the packs themselves, quarantining what cannot
 * be read and salvaging the good chunks of damaged packs. Needs exclusive use of the store.
 */
async function repairIndex(store: Store): Promise<RepairReport> {
  if (store.sessions.size > 0) throw new VnstoreError('E_SESSION', 'cannot repair the index while snapshot sessions are open');
  await store.writer.flush();
  const p = Store.paths(store.dir);
  const report: RepairReport = { packsScanned: 0, packsQuarantined: [], packsSalvaged: [], indexEntriesAdded: 0, indexEntriesChanged: 0, indexEntriesRemoved: 0, catalogFixes: 0, countersReset: false };
  // Current index, to prefer existing locations among duplicates and to update the table by diff.
  const current = new DigestSet(1 << 16);
  let curLoc: Float64Array = new Float64Array(1 << 16); // pack · 2^32 + offset
  const noIndexed = new Map<number, Buffer>();
  await scanChunkEntries(store, (k, loc) => {
    const ord = current.add(k, 1);
    curLoc = ensureLength(curLoc, ord + 1);
    curLoc[ord] = loc.pack * 2 ** 32 + loc.offset;
  });
  const desired = new DigestSet(Math.max(1024, current.size));
  let desLoc: ChunkLocation[] = [];
  const packRecords: PackRecord[] = [];
  const oldRecords = new Map<number, PackRecord>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_PACK)))) {
    const r = parseRecord(v, PACK_RECORD);
    oldRecords.set(r.id, r);
  }
  const names = (await fsp.readdir(p.packs)).filter((n) => parsePackFileName(n) !== undefined).sort();
  const consider = (id: number, good: { entry: PackEntry; digest: Buffer }[], offsets?: number[]) => {
    good.forEach((g, i) => {
      const loc: ChunkLocation = { pack: id, offset: offsets ? offsets[i] : g.entry.offset, storedLength: g.entry.storedLength, codec: g.entry.codec };
      const ord = desired.add(g.digest);
      const prev = desLoc[ord];
      const c = current.find(g.digest);
      const keepPrev = prev && c >= 0 && curLoc[c] === prev.pack * 2 ** 32 + prev.offset;
      if (!keepPrev) desLoc[ord] = loc;
    });
  };
  const damaged: { id: number; name: string; res: PackData }[] = [];
  for (const name of names) {
    const id = parsePackFileName(name)!;
    report.packsScanned++;
    const file = path.join(p.packs, name);
    const res = await readPackData(store, file, name, noIndexed);
    if (res.error || res.bad.length > 0) {
      damaged.push({ id, name, res });
      continue;
    }
    const st = await fsp.stat(file);
    const payloadBytes = res.good.reduce((s, g) => s + g.entry.storedLength, 0);
    packRecords.push({ id, chunks: res.chunks, bytes: st.size, payloadBytes, sealedAt: oldRecords.get(id)?.sealedAt ?? st.mtime.toISOString() });
    consider(id, res.good);
  }
  if (damaged.length > 0) {
    // What the index knows about the damaged packs: with a full digest, a chunk can be verified (and
    // saved) even when the pack's table of contents is unreadable or the pack is truncated.
    const known = new Map<number, { digest: Buffer; loc: ChunkLocation }[]>();
    for (const d of damaged) known.set(d.id, []);
    await scanChunkEntries(store, (k, loc) => known.get(loc.pack)?.push({ digest: Buffer.from(k.subarray(1)), loc }));
    for (const d of damaged) {
      const file = path.join(p.packs, d.name);
      const data = await fsp.readFile(file).catch(() => Buffer.alloc(0));
      const chunks: StoredChunk[] = [];
      const entries: { entry: PackEntry; digest: Buffer }[] = [];
      const have = new Set<string>();
      for (const g of d.res.good) {
        chunks.push({ digest: g.digest, payload: data.subarray(g.entry.offset, g.entry.offset + g.entry.storedLength), codec: g.entry.codec });
        entries.push(g);
        have.add(g.digest.toString('latin1'));
      }
      const candidates = known.get(d.id)!.filter((e) => !have.has(e.digest.toString('latin1')) && e.loc.offset >= PACK_HEADER_BYTES && e.loc.offset + e.loc.storedLength <= data.length);
      const cand: StoredChunk[] = candidates.map((e) => ({ digest: e.digest, payload: data.subarray(e.loc.offset, e.loc.offset + e.loc.storedLength), codec: e.loc.codec }));
      const badIdx = new Set(await verifyChunks(store, cand));
      candidates.forEach((e, i) => {
        if (badIdx.has(i)) return;
        chunks.push(cand[i]);
        entries.push({ entry: { digestPrefix: e.digest.subarray(0, TOC_PREFIX_BYTES), offset: e.loc.offset, storedLength: e.loc.storedLength, codec: e.loc.codec }, digest: e.digest });
      });
      // Good chunks into a new pack (durable first), then the damaged pack goes aside, never deleted.
      let into = '(none)';
      if (chunks.length > 0) {
        const newId = store.writer.reservePackId();
        const { record, chunks: written } = await writePack(store, newId, chunks);
        packRecords.push(record);
        consider(newId, entries, Array.from({ length: written.count }, (_, i) => written.offsets[i]));
        into = packFileName(newId);
      }
      const to = await quarantinePack(store, d.name);
      const lost = Math.max(0, (d.res.error ? known.get(d.id)!.length : d.res.chunks) - chunks.length);
      report.packsSalvaged.push({ pack: d.name, into, goodChunks: chunks.length, badChunks: lost });
      report.packsQuarantined.push({ pack: d.name, to: path.relative(store.dir, to), reason: d.res.error ?? `${d.res.bad.length} corrupt chunk(s)` });
    }
  }
  desLoc = desLoc.slice(0, desired.size);

  // The diff against the current index, written in bounded batches; the last one (synced) carries
  // the pack records, the catalog fixes and the new chunk generation. A crash part-way leaves entries
  // that each point at a valid copy or at nothing: run the repair again.
  const seen = new Uint8Array(desired.size);
  const puts: { digest: Buffer; loc: ChunkLocation; existed: boolean }[] = [];
  const toRemove: Buffer[] = [];
  await scanChunkEntries(store, (k, loc) => {
    const digest = Buffer.from(k.subarray(1));
    const ord = desired.find(digest);
    if (ord < 0) {
      toRemove.push(digest);
      return;
    }
    seen[ord] = 1;
    const want = desLoc[ord];
    if (want.pack !== loc.pack || want.offset !== loc.offset || want.storedLength !== loc.storedLength || want.codec !== loc.codec) {
      puts.push({ digest, loc: want, existed: true });
    }
  });
  for (let ord = 0; ord < desired.size; ord++) {
    if (!seen[ord]) puts.push({ digest: Buffer.from(desired.digest(ord)), loc: desLoc[ord], existed: false });
  }
  report.indexEntriesRemoved = toRemove.length;
  report.indexEntriesChanged = puts.filter((u) => u.existed).length;
  report.indexEntriesAdded = puts.length - report.indexEntriesChanged;
  let batch = store.db.batch();
  let ops = 0;
  for (const d of toRemove) {
    batch.del(chunkKey(d));
    if (++ops % 10_000 === 0) await batch.write().then(() => (batch = store.db.batch()));
  }
  for (const u of puts) {
    batch.put(chunkKey(u.digest), encodeChunkValue(u.loc));
    if (++ops % 10_000 === 0) await batch.write().then(() => (batch = store.db.batch()));
  }
  const goodIds = new Set(packRecords.map((r) => r.id));
  for (const id of oldRecords.keys()) if (!goodIds.has(id)) batch.del(packKey(id));
  for (const r of packRecords) batch.put(packKey(r.id), jsonValue(r));
  report.catalogFixes = await repairCatalog(store, batch);
  const token = stampChunkGeneration(batch);
  await batch.write({ sync: true });
  store.chunkGen.token = token;
  store.chunkGen.saved = false;
  for (const d of toRemove) if (store.table.get(d)?.ambiguous === false) store.table.remove(d);
  for (const u of puts) {
    if (u.existed) store.table.relocate(u.digest, u.loc);
    else store.table.insert(u.digest, u.loc);
  }
  return report;
}

async function scanChunkEntries(store: Store, fn: (key: Buffer, loc: ChunkLocation) => void): Promise<void> {
  // An entry that does not decode points nowhere: the caller reports it against a pack that cannot exist.
  await scanChunkIndex(store.db, (k, loc) => fn(k, loc ?? { pack: 0xffffffff, offset: 0, storedLength: 0, codec: 0 }));
}

/** Per-VM listings and group records rebuilt from the commit records. */
async function repairCatalog(store: Store, batch: { put(k: Buffer, v: Buffer): unknown; del(k: Buffer): unknown }): Promise<number> {
  let fixes = 0;
  const records: SnapshotRecord[] = [];
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_SNAPSHOT)))) records.push(parseRecord(v, SNAPSHOT_RECORD));
  const want = new Set(records.map((r) => vmKey(r.vm, r.id).toString('latin1')));
  for await (const k of store.db.keys(prefixRange(Buffer.of(KEY_VM)))) {
    if (!want.delete(k.toString('latin1'))) {
      batch.del(k);
      fixes++;
    }
  }
  for (const k of want) {
    batch.put(Buffer.from(k, 'latin1'), Buffer.alloc(0));
    fixes++;
  }
  const groups = new Map<string, SnapshotRecord[]>();
  for (const r of records) {
    if (r.group === undefined) continue;
    let l = groups.get(r.group);
    if (!l) groups.set(r.group, (l = []));
    l.push(r);
  }
  const existing = new Map<string, GroupRecord>();
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_GROUP)))) {
    const g = parseRecord(v, GROUP_RECORD);
    existing.set(g.id, g);
  }
  for (const [id, g] of existing) {
    const members = groups.get(id);
    if (!members) {
      batch.del(prefixedKey(KEY_GROUP, id));
      fixes++;
      continue;
    }
    const ids = members.map((r) => r.id);
    if (ids.join() !== [...g.snapshots].sort().join()) {
      batch.put(prefixedKey(KEY_GROUP, id), jsonValue({ id, time: g.time, snapshots: ids } satisfies GroupRecord));
      fixes++;
    }
  }
  for (const [id, members] of groups) {
    if (existing.has(id)) continue;
    batch.put(prefixedKey(KEY_GROUP, id), jsonValue({ id, time: members[0].time, snapshots: members.map((r) => r.id) } satisfies GroupRecord));
    fixes++;
  }
  return fixes;
}
