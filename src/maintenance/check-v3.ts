/**
 * check on a store of format 3, where the packs' TOCs are the index:
 *
 *   packs (always)      every pack file's header, trailer and TOC parse (readTocV3, from the files
 *                       now, not from what the open loaded); no number is in two packs (a
 *                       conflicting pack, or a killed gc's copy the next open deletes); every pack
 *                       the open indexed is still there
 *   manifests (always)  every committed snapshot's manifest reads and matches its commit record;
 *                       every number it names is in a pack; kept base manifests are there; the
 *                       catalog keys agree; with --read-data, the digests of its pages (hashed from
 *                       their bytes: a TOC keeps 24 bytes of each) hash to its image digest, for
 *                       every snapshot whose packs were all read
 *   --read-data [PCT]   packs re-read whole: payload checksum, every chunk decoded and hashed
 *                       against the digest prefix its TOC keeps
 *   counters            equal a recount (when nothing is in flight)
 *
 * Each problem names the pack / chunk number / snapshot and the snapshots it affects.
 */
import { promises as fsp } from 'node:fs';
import { imageDigest } from '../chunk/hash.js';
import type { ManifestHeader } from '../format/manifest.js';
import type { NumberedPages } from '../format/manifest-v2.js';
import { packFileName, parsePackFileName } from '../format/pack.js';
import { DIGEST_BYTES, PageKind, PageTable } from '../format/pages.js';
import { readCounters, zeroCounters, type StoreCounters } from '../store/counters.js';
import type { SnapshotRecord } from '../store/db.js';
import { loadNumberIndex, type NumberIndexLoad } from '../store/number-load.js';
import { storePaths } from '../store/paths.js';
import { CorruptError, MissingError } from '../util/errors.js';
import { checkReport, compareCounters, type CheckReport } from './check.js';
import { checkCatalog } from './check-catalog.js';
import { manifestMismatch, missingKeptBase } from './check-manifests.js';
import { selectPacksToRead, type DataOptions } from './check-data.js';
import { NEXT_FORGET, NEXT_REPAIR, type CheckedCounts, type CheckProblem } from './check-problems.js';
import { manifestPathOf, NumberedManifests } from './live-v3.js';
import type { NumberedStore } from './numbered-store.js';
import { readNumberedPackData } from './pack-data-v3.js';

/** What the pack phase found: a fresh index from the files, and each chunk number's problem. */
export interface NumberedPacksResult {
  load: NumberIndexLoad;
  problems: CheckProblem[];
  /** Numbers whose stored copy is unusable → their problem (snapshots naming them are affected). */
  badNumbers: Map<number, CheckProblem>;
  /** Packs the open store indexes whose file is gone. */
  missing: number[];
}

export async function checkNumbered(store: NumberedStore, options: DataOptions = {}): Promise<CheckReport> {
  const started = performance.now();
  const catalog = await checkCatalog(store);
  const packs = await checkNumberedPacks(store);
  const readSet = selectPacksToRead(
    packs.load.index.packIds.sort((a, b) => a - b),
    options,
  );
  const checked: CheckedCounts = {
    snapshots: 0,
    keptBases: 0,
    packs: packs.load.index.packIds.length + packs.load.damaged.length + packs.load.conflicting.length + packs.load.copies.length,
    chunks: packs.load.index.size,
    packsRead: 0,
    chunksRead: 0,
    bytesRead: 0,
  };
  const problems = [...catalog.problems, ...packs.problems];
  const warnings = [...catalog.warnings];
  // Whole digests of the chunks of the packs read (32 B an entry, by pack): what image digests need.
  const hashed = new Map<number, Uint8Array>();
  for (const id of readSet) {
    const data = await readNumberedPackData(store.packs, id);
    if (data.digests) hashed.set(id, data.digests);
    checked.packsRead++;
    checked.chunksRead += data.chunks;
    checked.bytesRead += data.bytes;
    const name = packFileName(id);
    for (const b of data.bad) {
      const pr: CheckProblem = {
        kind: 'chunk-corrupt',
        message: `pack ${name}: chunk ${b.number} (entry ${b.entry}) ${b.why}`,
        pack: name,
        chunk: String(b.number),
        affects: [],
        next: NEXT_REPAIR,
      };
      problems.push(pr);
      packs.badNumbers.set(b.number, pr);
    }
    if (data.error) problems.push({ kind: 'pack-unreadable', message: data.error, pack: name, affects: [], next: NEXT_REPAIR });
    else if (data.bad.length === 0 && !data.payloadCrcOk) {
      problems.push({
        kind: 'payload-checksum',
        message: `pack ${name}: payload checksum mismatch although every chunk verifies`,
        pack: name,
        affects: [],
        next: NEXT_REPAIR,
      });
    }
  }
  const exact = zeroCounters();
  await checkNumberedManifests(store, packs, catalog, problems, checked, exact, hashed);
  for (const pr of problems) pr.affects.sort();
  let counters: CheckReport['counters'] = null;
  if (!store.busy()) {
    for (const id of packs.load.index.packIds) {
      const { toc, tocOffset } = await store.packs.readTocV3(id);
      exact.packs++;
      exact.packBytes += (await fsp.stat(store.packs.packPath(id))).size;
      exact.packPayloadBytes += tocOffset - 16;
      exact.chunks += toc.count;
      exact.chunkBytes += tocOffset - 16;
    }
    // Format 3 keeps no pack or chunk counters (stats reads them from the packs): only the catalog's are compared.
    const recorded = await readCounters(store.db);
    counters = compareCounters(recorded && { ...recorded, ...pick(exact, PACK_FIELDS) }, exact, problems);
  } else warnings.push('counters not compared: the store is open for sessions');
  const report = checkReport(problems, warnings, checked, counters);
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

const PACK_FIELDS = ['chunks', 'chunkBytes', 'packs', 'packBytes', 'packPayloadBytes'] as const;

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Pick<T, K> {
  const out = {} as Pick<T, K>;
  for (const k of keys) out[k] = o[k];
  return out;
}

/** The pack phase: every pack file's TOC, numbers in one pack each, the open's packs still there. */
export async function checkNumberedPacks(store: NumberedStore): Promise<NumberedPacksResult> {
  const problems: CheckProblem[] = [];
  const badNumbers = new Map<number, CheckProblem>();
  const ids: number[] = [];
  for (const name of await fsp.readdir(storePaths(store.dir).packs)) {
    const id = parsePackFileName(name);
    if (id !== undefined) ids.push(id);
  }
  const load = await loadNumberIndex(store.packs, ids);
  for (const name of store.quarantinedOnOpen) {
    problems.push({
      kind: 'pack-unreadable',
      message: `pack ${name} was damaged and was moved to quarantine/ when the store was opened`,
      pack: name,
      affects: [],
      next: NEXT_REPAIR,
    });
  }
  for (const d of load.damaged) {
    problems.push({ kind: 'pack-unreadable', message: d.why, pack: packFileName(d.pack), affects: [], next: NEXT_REPAIR });
  }
  for (const c of load.conflicting) {
    problems.push({
      kind: 'number-conflict',
      message: `pack ${packFileName(c.pack)} holds chunk numbers that pack(s) ${c.overlaps.map(packFileName).join(', ')} hold too (it is left out)`,
      pack: packFileName(c.pack),
      affects: [],
      next: NEXT_REPAIR,
    });
  }
  for (const c of load.copies) {
    problems.push({
      kind: 'number-conflict',
      message: `pack ${packFileName(c)} repeats chunks of older packs: a copy left by a killed gc or compact (the next open deletes it)`,
      pack: packFileName(c),
      affects: [],
      next: NEXT_REPAIR,
    });
  }
  const onDisk = new Set(ids);
  const missing = store.numbered.index.packIds.filter((id) => !onDisk.has(id)).sort((a, b) => a - b);
  for (const id of missing) {
    problems.push({
      kind: 'pack-missing',
      message: `pack ${packFileName(id)} is missing`,
      pack: packFileName(id),
      affects: [],
      next: NEXT_REPAIR,
    });
  }
  return { load, problems, badNumbers, missing };
}

/**
 * The manifest phase: each committed snapshot against its record, its numbers against the packs,
 * its image digest against the TOC digests; the snapshots each bad number affects.
 */
async function checkNumberedManifests(
  store: NumberedStore,
  packs: NumberedPacksResult,
  catalog: Awaited<ReturnType<typeof checkCatalog>>,
  problems: CheckProblem[],
  checked: CheckedCounts,
  exact: StoreCounters,
  hashed: Map<number, Uint8Array>,
): Promise<void> {
  const manifests = new NumberedManifests(storePaths(store.dir).manifests);
  const missing = new Map<number, string[]>();
  for (const r of catalog.records) {
    checked.snapshots++;
    exact.snapshots++;
    exact.logicalBytes += r.byteLength;
    exact.pages += r.pageCount;
    exact.zeroPages += r.zeroPages;
    let m: { header: ManifestHeader; pages: NumberedPages };
    let bytes: number;
    try {
      m = await manifests.load(r.id);
      bytes = (await fsp.stat(manifestPathOf(store.dir, r.id))).size;
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      const kind = err instanceof MissingError ? 'manifest-missing' : 'manifest-corrupt';
      problems.push({ kind, message: err.message, snapshot: r.id, affects: [r.id], next: NEXT_FORGET([r.id]) });
      continue;
    }
    exact.manifestBytes += bytes;
    const pages = m.pages;
    const mismatch = recordMismatch(r, m.header, pages, bytes);
    if (mismatch.length > 0) {
      problems.push(manifestMismatch(r.id, mismatch));
      continue;
    }
    // Numbers no pack holds, and numbers whose chunk is damaged.
    const hit = new Set<CheckProblem>();
    let complete = true;
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] !== PageKind.Digest) continue;
      const n = pages.numbers[i];
      const bad = packs.badNumbers.get(n);
      if (bad) hit.add(bad);
      if (packs.load.index.locate(n)) continue;
      complete = false;
      const ids = missing.get(n) ?? [];
      if (!ids.includes(r.id)) ids.push(r.id);
      missing.set(n, ids);
    }
    for (const pr of hit) pr.affects.push(r.id);
    if (!complete || hit.size > 0) continue; // a damaged chunk is reported once, as such
    const digests = hashedPages(packs.load, hashed, pages);
    if (digests && !imageDigest(digests, m.header.byteLength).equals(m.header.imageDigest)) {
      problems.push({
        kind: 'manifest-mismatch',
        message: `snapshot ${r.id}: the digests of its chunks do not hash to its image digest`,
        snapshot: r.id,
        affects: [r.id],
        next: NEXT_FORGET([r.id]),
      });
    }
  }
  if (missing.size > 0) {
    const numbers = [...missing.keys()].sort((a, b) => a - b);
    problems.push({
      kind: 'chunk-missing',
      message: `${numbers.length} chunk number(s) used by snapshots are in no pack (first: ${numbers[0]})`,
      chunk: String(numbers[0]),
      affects: [...new Set([...missing.values()].flat())],
      next: NEXT_REPAIR,
    });
  }
  for (const k of catalog.kept) {
    checked.keptBases++;
    exact.keptBases++;
    const st = await fsp.stat(manifestPathOf(store.dir, k.id)).catch(() => undefined);
    exact.keptBaseBytes += st?.size ?? k.manifestBytes;
    if (!st) {
      const dependants = catalog.records.filter((r) => r.base === k.id).map((r) => r.id);
      problems.push(missingKeptBase(k.id, dependants));
    }
  }
  for (const pr of problems) {
    if ((pr.kind === 'chunk-corrupt' || pr.kind === 'chunk-missing') && pr.affects.length > 0)
      pr.next = `${NEXT_REPAIR}, then ${NEXT_FORGET(pr.affects)}`;
  }
}

/**
 * A snapshot's page table with each page's whole digest as check --read-data hashed it, or undefined
 * when a page's pack was not read (or its chunk is bad: reported already).
 */
function hashedPages(load: NumberIndexLoad, hashed: Map<number, Uint8Array>, pages: NumberedPages): PageTable | undefined {
  if (hashed.size === 0) return undefined;
  const table = new PageTable(pages.pageCount);
  for (let p = 0; p < pages.pageCount; p++) {
    if (pages.kinds[p] !== PageKind.Digest) {
      table.setZero(p);
      continue;
    }
    const at = load.index.locate(pages.numbers[p]);
    const column = at && hashed.get(at.pack);
    if (!column) return undefined;
    table.setDigest(p, column, at.entry * DIGEST_BYTES);
  }
  return table;
}

/** How a manifest disagrees with its commit record (empty: it agrees). */
function recordMismatch(r: SnapshotRecord, header: ManifestHeader, pages: NumberedPages, bytes: number): string[] {
  let zero = 0;
  for (let i = 0; i < pages.pageCount; i++) if (pages.kinds[i] === PageKind.Zero) zero++;
  const out: string[] = [];
  if (header.byteLength !== r.byteLength) out.push(`byte length ${header.byteLength} vs ${r.byteLength}`);
  if (pages.pageCount !== r.pageCount) out.push(`page count ${pages.pageCount} vs ${r.pageCount}`);
  if ((header.baseId ?? null) !== (r.base ?? null)) out.push(`delta base ${header.baseId ?? '(none)'} vs ${r.base ?? '(none)'}`);
  if (Buffer.from(header.imageDigest).toString('hex') !== r.imageDigest) out.push('image digest');
  if (zero !== r.zeroPages) out.push(`zero pages ${zero} vs ${r.zeroPages}`);
  if (bytes !== r.manifestBytes) out.push(`file size ${bytes} vs ${r.manifestBytes}`);
  return out;
}
