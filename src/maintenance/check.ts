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
import { DIGEST_BYTES, PageKind, type PageTable } from '../format/pages.js';
import { counterDrift, readCounters, resetCounters, zeroCounters, sumDelta, type StoreCounters } from '../store/counters.js';
import type { SnapshotRecord } from '../store/db.js';
import type { Store } from '../store/store.js';
import { checkCatalog } from './check-catalog.js';
import { checkData, selectPacksToRead, type DataOptions } from './check-data.js';
import { checkManifests } from './check-manifests.js';
import { checkIndex, checkPacks } from './check-packs.js';
import { NEXT_FORGET, NEXT_REPAIR, type CheckedCounts, type CheckProblem } from './check-problems.js';
import { DigestSet } from './digest-set.js';
import { withMaintenanceLock } from './fence.js';
import { repairIndex, type RepairReport } from './repair.js';
import { numberedView } from './numbered-store.js';

export type { CheckProblem, ProblemKind } from './check-problems.js';
export type { RepairReport } from './repair.js';

export interface CheckOptions extends DataOptions {
  repairIndex?: boolean;
}

export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  warnings: string[];
  checked: CheckedCounts;
  counters: { recorded: StoreCounters | null; exact: StoreCounters; drift: ReturnType<typeof counterDrift> } | null;
  repair?: RepairReport;
  /** Distinct next commands, most useful first. */
  next: string[];
  seconds: number;
}

export async function checkStore(store: Store, options: CheckOptions = {}): Promise<CheckReport> {
  return withMaintenanceLock(store, async () => {
    const started = performance.now();
    // Format 3 (numbered chunks): the packs' TOCs are the index (check-v3.ts, repair-v3.ts).
    const numbered = store.isNumbered ? numberedView(store) : undefined;
    let repair: RepairReport | undefined;
    // The format-3 modules load lazily: they build on this module's report helpers.
    if (options.repairIndex) repair = numbered ? await (await import('./repair-v3.js')).repairNumbered(numbered) : await repairIndex(store);
    const report = numbered ? await (await import('./check-v3.js')).checkNumbered(numbered, options) : await runCheck(store, options);
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

/** The phases in order; each reads what it needs and returns its problems and its share of the recount. */
async function runCheck(store: Store, options: CheckOptions): Promise<CheckReport> {
  const catalog = await checkCatalog(store);
  const { records } = catalog;
  const manifests = await checkManifests(store, records, catalog.kept);
  const packs = await checkPacks(store);
  const readSet = selectPacksToRead(
    [...packs.packs.values()].filter((ps) => !ps.bad).map((ps) => ps.id),
    options,
  );
  const index = await checkIndex(store, packs, manifests.referenced, readSet);
  const data = await checkData(store, readSet, index.indexedAt);
  const exact = [manifests.counted, packs.counted, index.counted].reduce(sumDelta, zeroCounters()) as StoreCounters;
  const checked: CheckedCounts = { ...manifests.checked, ...packs.checked, ...index.checked, ...data.checked };
  const problems = [...catalog.problems, ...manifests.problems, ...packs.problems];
  const warnings = [...catalog.warnings, ...manifests.warnings];

  const badDigests = new Map([...index.badDigests, ...index.missingByDigest, ...data.badDigests]);
  await markAffected(records, manifests.brokenManifest, manifests.pagesOf, badDigests);
  // Missing chunks: one problem per chunk is noise when a pack vanished; summarise per snapshot set.
  const missing = [...index.missingByDigest.values()];
  if (missing.length > 8) {
    const affected = [...new Set(missing.flatMap((m) => m.affects))].sort();
    problems.push({
      kind: 'chunk-missing',
      message: `${missing.length} chunks used by snapshots are not in the index (first: ${missing[0].chunk})`,
      affects: affected,
      next: NEXT_REPAIR,
    });
  } else problems.push(...missing);
  problems.push(...packs.packProblems.values(), ...index.problems, ...data.problems);
  for (const pr of problems) {
    if (
      (pr.kind === 'chunk-corrupt' ||
        pr.kind === 'chunk-missing' ||
        pr.kind === 'pack-unreadable' ||
        pr.kind === 'pack-missing' ||
        pr.kind === 'pack-size') &&
      pr.affects.length > 0
    ) {
      pr.next = `${NEXT_REPAIR}, then ${NEXT_FORGET(pr.affects)}`;
    }
    pr.affects.sort();
  }

  // ---------------------------------------------------------------- counters
  let counters: CheckReport['counters'] = null;
  const recorded = await readCounters(store.db);
  const quiet = store.sessions.size === 0 && store.writer.unindexedChunks === 0;
  if (quiet) {
    counters = compareCounters(recorded, exact, problems);
  } else warnings.push('counters not compared: sessions are open or chunks are being written');

  return checkReport(problems, warnings, checked, counters);
}

/** A report of these findings (seconds left for the caller). */
export function checkReport(
  problems: CheckProblem[],
  warnings: string[],
  checked: CheckedCounts,
  counters: CheckReport['counters'],
): CheckReport {
  return { ok: problems.length === 0, problems, warnings, checked, counters, next: nextCommands(problems), seconds: 0 };
}

/** The counters against a recount; a drift is a problem. */
export function compareCounters(
  recorded: StoreCounters | undefined,
  exact: StoreCounters,
  problems: CheckProblem[],
): NonNullable<CheckReport['counters']> {
  const drift = counterDrift(recorded, exact);
  if (Object.keys(drift).length > 0) {
    const fields = Object.entries(drift).map(([f, d]) => `${f} ${d!.counter ?? 'unset'} (exact ${d!.exact})`);
    problems.push({ kind: 'counters', message: `stats counters drifted: ${fields.join(', ')}`, affects: [], next: NEXT_REPAIR });
  }
  return { recorded: recorded ?? null, exact, drift };
}

/** Adds to each problem in `badDigests` the snapshots (with readable manifests) that use its digest. */
async function markAffected(
  records: readonly SnapshotRecord[],
  brokenManifest: ReadonlyMap<string, string>,
  pagesOf: (id: string) => Promise<PageTable>,
  badDigests: ReadonlyMap<string, CheckProblem>,
): Promise<void> {
  if (badDigests.size === 0) return;
  const bad = new DigestSet(badDigests.size);
  const byOrd: CheckProblem[] = [];
  for (const [hex, pr] of badDigests) byOrd[bad.add(Buffer.from(hex, 'hex'))] = pr;
  for (const r of records) {
    if (brokenManifest.has(r.id)) continue;
    const pages = await pagesOf(r.id);
    const hit = new Set<CheckProblem>();
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] !== PageKind.Digest) continue;
      const ord = bad.find(pages.digests, i * DIGEST_BYTES);
      if (ord >= 0) hit.add(byOrd[ord]);
    }
    for (const pr of hit) if (!pr.affects.includes(r.id)) pr.affects.push(r.id);
  }
}

export function nextCommands(problems: CheckProblem[]): string[] {
  const out: string[] = [];
  const repairFirst = problems.some((p) => p.next.startsWith(NEXT_REPAIR));
  if (repairFirst) out.push(NEXT_REPAIR);
  const forget = [...new Set(problems.flatMap((p) => p.affects))].sort();
  if (forget.length > 0) out.push(NEXT_FORGET(forget));
  return out;
}
