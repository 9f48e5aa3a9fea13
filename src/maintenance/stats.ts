/**
 * stats: what the store holds and what it saves.
 *
 * The summary comes from the counters (counters.ts), read in constant time. Figures that depend on
 * which snapshots share which chunks (bytes only a VM or snapshot holds, the sharing matrix, garbage)
 * need one pass over the committed manifests and the index: `detail` (implied by vm / snapshot).
 * `exact` recounts the summary from manifests, pack records and the index and reports any drift.
 * On format 3 (stats-v3.ts) chunks are numbers: the same figures from manifests v2 and the packs' TOCs.
 * Field names are documented in docs/OPERATIONS.md and stable.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { PAGE_SIZE, PageKind, DIGEST_BYTES } from '../format/pages.js';
import { storedShare, TOC_ENTRY_BYTES } from '../format/pack.js';
import {
  KEY_CHUNK,
  KEY_GROUP,
  KEY_PACK,
  decodeChunkValue,
  PACK_RECORD,
  parseRecord,
  prefixRange,
  scanChunkIndex,
  type SnapshotRecord,
} from '../store/db.js';
import { Store, TABLE_FILE } from '../store/store.js';
import { VnstoreError } from '../util/errors.js';
import {
  counterDrift,
  FOLD_AFTER_DELTAS,
  foldCounters,
  readCounterState,
  resetCounters,
  zeroCounters,
  type StoreCounters,
} from '../store/counters.js';
import { DigestSet } from './digest-set.js';
import { SharingTally, type SharingResult } from './stats-sharing.js';
import { addCatalogCounts } from './stats-catalog.js';
import { withMaintenanceLock } from './fence.js';
import { collectInFlight, listCommitted } from './live.js';
import { ManifestLoader } from '../store/manifest-loader.js';
import { numberedChunkCounters, numberedDetail, numberedRecount } from './stats-v3.js';

export interface StatsOptions {
  detail?: boolean;
  vm?: string;
  snapshot?: string;
  exact?: boolean;
}

export interface StatsSummary {
  snapshots: number;
  vms: number;
  groups: number;
  logicalBytes: number;
  pages: number;
  zeroPages: number;
  nonZeroPages: number;
  distinctChunks: number;
  /** distinctChunks × 4096: the distinct non-zero content before compression. */
  chunkRawBytes: number;
  /** Compressed payload of the distinct indexed chunks. */
  storedBytes: number;
  packs: number;
  packBytes: number;
  packPayloadBytes: number;
  manifestBytes: number;
  keptBaseManifests: number;
  keptBaseManifestBytes: number;
  indexBytes: number;
  tableBytes: number;
  /** packBytes + manifestBytes + keptBaseManifestBytes + indexBytes + tableBytes. */
  onDiskBytes: number;
  /**
   * Everything on disk that is not chunk payload: pack headers, tables and trailers, manifests, the
   * index (db/) and the saved chunk table. onDiskBytes - packPayloadBytes.
   */
  metadataBytes: number;
  /** metadataBytes / onDiskBytes (issue 16's budget is 2%). */
  metadataFraction: number | null;
  quarantineBytes: number;
  /**
   * nonZeroPages / chunks: with the summary alone `chunks` is distinctChunks (garbage included until
   * gc); with detail it is referencedChunks (dedupBasis says which).
   */
  dedupRatio: number | null;
  dedupBasis: 'indexed-chunks' | 'referenced-chunks';
  /** detail only: distinct chunks referenced by committed snapshots. */
  referencedChunks?: number;
  /** chunkRawBytes / storedBytes. */
  compressionRatio: number | null;
  /** logicalBytes / onDiskBytes. */
  reduction: number | null;
}

export interface VmStats {
  vm: string;
  snapshots: number;
  logicalBytes: number;
  zeroPages: number;
  /** Σ addedBytes of its snapshots: what each added to the store when it was stored. */
  addedBytes: number;
  latest: string;
  /** detail only: distinct chunks its snapshots reference, and those no other VM references. */
  distinctChunks?: number;
  uniqueChunks?: number;
  /** Payload + table-of-contents bytes of its unique chunks: what forgetting all of it frees (after gc). */
  uniqueBytes?: number;
}

export interface SnapshotStats {
  id: string;
  vm: string;
  group: string | null;
  time: string;
  logicalBytes: number;
  zeroPages: number;
  addedBytes: number;
  manifestBytes: number;
  distinctChunks?: number;
  uniqueChunks?: number;
  /** Payload + table-of-contents bytes of chunks no other snapshot references. */
  uniqueBytes?: number;
}

export interface StatsReport {
  store: string;
  /** 'counters': summary from counters; 'recount': no counters yet, recounted (and initialised). */
  source: 'counters' | 'recount';
  summary: StatsSummary;
  vmStats: VmStats[];
  snapshotStats?: SnapshotStats[];
  sharing?: { vms: string[]; sharedChunks: number[][]; fraction: (number | null)[][] };
  garbage?: {
    /** Indexed chunks no committed snapshot (or open session) references. */
    chunks: number;
    payloadBytes: number;
    /** Payload in packs that the index does not point at (superseded copies). */
    unindexedPayloadBytes: number;
    totalPayloadBytes: number;
  };
  missingChunks?: number;
  exact?: { counters: StoreCounters; drift: ReturnType<typeof counterDrift>; drifted: boolean };
  seconds: number;
}

export async function storeStats(store: Store, options: StatsOptions = {}): Promise<StatsReport> {
  return withMaintenanceLock(store, async () => {
    const started = performance.now();
    let state = await readCounterState(store.db);
    if (state.counters && state.deltaKeys.length > FOLD_AFTER_DELTAS) await foldCounters(store.db);
    const records = await listCommitted(store);
    let snapshotFilter: SnapshotRecord | undefined;
    if (options.snapshot !== undefined) snapshotFilter = await store.resolveSnapshot(options.snapshot);
    if (options.vm !== undefined && !records.some((r) => r.vm === options.vm))
      throw new VnstoreError('E_NOT_FOUND', `no snapshots of VM ${options.vm} in this store`);
    const detail = options.detail || options.vm !== undefined || options.snapshot !== undefined;
    let exact: StoreCounters | undefined;
    let source: StatsReport['source'] = 'counters';
    // Format 3: chunk and pack figures from the packs (a seal writes no counter delta there).
    const numberedChunks = store.isNumbered ? await numberedChunkCounters(store) : undefined;
    if (numberedChunks) {
      if (options.exact) exact = await numberedRecount(store, records, numberedChunks);
    } else if (options.exact || !state.counters) exact = await recount(store, records);
    if (!state.counters && !store.isNumbered) {
      source = 'recount';
      // A store from before counters: initialise them (only when nothing else writes meanwhile).
      if (store.sessions.size === 0 && store.writer.unindexedChunks === 0) {
        await resetCounters(store.db, exact!);
        state = await readCounterState(store.db);
      }
    }
    const c = numberedChunks ? { ...(state.counters ?? zeroCounters()), ...numberedChunks } : (state.counters ?? exact!);
    const p = Store.paths(store.dir);
    let groups = 0;
    for await (const _ of store.db.keys(prefixRange(Buffer.of(KEY_GROUP)))) groups++;
    const indexBytes = await dirBytes(p.db);
    const tableBytes = (await fsp.stat(path.join(store.dir, TABLE_FILE)).catch(() => undefined))?.size ?? 0;
    const quarantineBytes = await dirBytes(p.quarantine);
    const vmNames = [...new Set(records.map((r) => r.vm))].sort();
    const onDisk = c.packBytes + c.manifestBytes + c.keptBaseBytes + indexBytes + tableBytes;
    const summary: StatsSummary = {
      snapshots: c.snapshots,
      vms: vmNames.length,
      groups,
      logicalBytes: c.logicalBytes,
      pages: c.pages,
      zeroPages: c.zeroPages,
      nonZeroPages: c.pages - c.zeroPages,
      distinctChunks: c.chunks,
      chunkRawBytes: c.chunks * PAGE_SIZE,
      storedBytes: c.chunkBytes,
      packs: c.packs,
      packBytes: c.packBytes,
      packPayloadBytes: c.packPayloadBytes,
      manifestBytes: c.manifestBytes,
      keptBaseManifests: c.keptBases,
      keptBaseManifestBytes: c.keptBaseBytes,
      indexBytes,
      tableBytes,
      onDiskBytes: onDisk,
      metadataBytes: onDisk - c.packPayloadBytes,
      metadataFraction: onDisk > 0 ? (onDisk - c.packPayloadBytes) / onDisk : null,
      quarantineBytes,
      dedupRatio: ratio(c.pages - c.zeroPages, c.chunks),
      dedupBasis: 'indexed-chunks',
      compressionRatio: ratio(c.chunks * PAGE_SIZE, c.chunkBytes),
      reduction: ratio(c.logicalBytes, onDisk),
    };
    const vmStats: VmStats[] = vmNames.map((vm) => {
      const mine = records.filter((r) => r.vm === vm);
      return {
        vm,
        snapshots: mine.length,
        logicalBytes: mine.reduce((s, r) => s + r.byteLength, 0),
        zeroPages: mine.reduce((s, r) => s + r.zeroPages, 0),
        addedBytes: mine.reduce((s, r) => s + r.addedBytes, 0),
        latest: mine[mine.length - 1].id,
      };
    });
    const report: StatsReport = { store: store.dir, source, summary, vmStats, seconds: 0 };
    if (exact && options.exact) {
      // On format 3 the chunk and pack figures of both sides are the packs' own: only the catalog's can drift.
      const drift = counterDrift(numberedChunks && state.counters ? c : state.counters, exact);
      report.exact = { counters: exact, drift, drifted: Object.keys(drift).length > 0 };
    }
    if (detail) await addDetail(store, records, vmNames, report, c);
    if (options.vm !== undefined) {
      report.vmStats = report.vmStats.filter((v) => v.vm === options.vm);
      report.snapshotStats = report.snapshotStats?.filter((s) => s.vm === options.vm);
    }
    if (snapshotFilter) report.snapshotStats = report.snapshotStats?.filter((s) => s.id === snapshotFilter.id);
    report.seconds = (performance.now() - started) / 1000;
    return report;
  });
}

function ratio(a: number, b: number): number | null {
  return b > 0 ? a / b : null;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const st = await fsp.stat(path.join(dir, n)).catch(() => undefined);
    if (st?.isFile()) total += st.size;
  }
  return total;
}

/** The counters, recomputed from manifests, kept bases, pack records and the index. */
export async function recount(store: Store, records?: SnapshotRecord[]): Promise<StoreCounters> {
  const c = zeroCounters();
  const loader = new ManifestLoader((id) => store.manifestPath(id));
  await addCatalogCounts(
    c,
    records ?? (await listCommitted(store)),
    store.db,
    (id) => store.manifestPath(id),
    async (id) => {
      const m = await loader.load(id);
      return {
        byteLength: m.header.byteLength,
        pageCount: m.pages.pageCount,
        zeroPages: m.pages.countKind(PageKind.Zero),
        fileBytes: m.fileBytes,
      };
    },
  );
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_PACK)))) {
    const rec = parseRecord(v, PACK_RECORD);
    c.packs++;
    c.packBytes += rec.bytes;
    c.packPayloadBytes += rec.payloadBytes;
  }
  await scanChunkIndex(store.db, (_k, loc) => {
    c.chunks++;
    c.chunkBytes += loc ? storedShare(loc) : 0;
  });
  return c;
}

/**
 * One pass over the committed manifests (who references which chunk) and one over the index (each
 * chunk's stored size): unique bytes per snapshot and VM, the sharing matrix, garbage.
 */
async function addDetail(store: Store, records: SnapshotRecord[], vmNames: string[], report: StatsReport, c: StoreCounters): Promise<void> {
  if (store.isNumbered) {
    applyDetail(report, records, vmNames, await numberedDetail(store, records, vmNames), c);
    return;
  }
  const vmIndex = new Map(vmNames.map((v, i) => [v, i]));
  const set = new DigestSet(1 << 16);
  const tally = new SharingTally(records.length, vmNames.length);
  const loader = new ManifestLoader((id) => store.manifestPath(id), 12);
  for (let si = 0; si < records.length; si++) {
    const vi = vmIndex.get(records[si].vm)!;
    const pages = (await loader.load(records[si].id)).pages;
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] === PageKind.Digest) tally.see(set.add(pages.digests, i * DIGEST_BYTES), si, vi);
    }
  }
  // In-flight work's chunks are not garbage.
  const inflight = new DigestSet(1024);
  await collectInFlight(store, inflight);
  const size = new Uint32Array(set.size);
  const indexed = new Uint8Array(set.size);
  let garbageChunks = 0;
  let garbageBytes = 0;
  const it = store.db.iterator(prefixRange(Buffer.of(KEY_CHUNK)));
  try {
    for (;;) {
      const entries = await it.nextv(4096);
      if (entries.length === 0) break;
      for (const [k, v] of entries) {
        const len = storedShare(decodeChunkValue(v));
        const ord = set.find(k, 1);
        if (ord >= 0) {
          size[ord] = len;
          indexed[ord] = 1;
        } else if (!inflight.has(k, 1)) {
          garbageChunks++;
          garbageBytes += len;
        }
      }
    }
  } finally {
    await it.close();
  }
  const sharing = tally.result((ord) => (indexed[ord] ? size[ord] + TOC_ENTRY_BYTES : undefined));
  applyDetail(report, records, vmNames, { sharing, garbageChunks, garbageBytes }, c);
}

/** Detail figures into the report (both formats): per VM, per snapshot, sharing, garbage, dedup over referenced chunks. */
function applyDetail(
  report: StatsReport,
  records: SnapshotRecord[],
  vmNames: string[],
  d: { sharing: SharingResult; garbageChunks: number; garbageBytes: number },
  c: Pick<StoreCounters, 'packPayloadBytes' | 'chunkBytes'>,
): void {
  const { sharing: r } = d;
  const vmIndex = new Map(vmNames.map((v, i) => [v, i]));
  for (const v of report.vmStats) {
    const i = vmIndex.get(v.vm)!;
    v.distinctChunks = r.shared[i][i];
    v.uniqueChunks = r.vmUniqueChunks[i];
    v.uniqueBytes = r.vmUniqueBytes[i];
  }
  report.snapshotStats = records.map((rec, si) => ({
    id: rec.id,
    vm: rec.vm,
    group: rec.group ?? null,
    time: rec.time,
    logicalBytes: rec.byteLength,
    zeroPages: rec.zeroPages,
    addedBytes: rec.addedBytes,
    manifestBytes: rec.manifestBytes,
    distinctChunks: r.snapDistinct[si],
    uniqueChunks: r.snapUniqueChunks[si],
    uniqueBytes: r.snapUniqueBytes[si],
  }));
  report.sharing = {
    vms: vmNames,
    sharedChunks: r.shared,
    fraction: r.shared.map((row, a) => row.map((n) => (r.shared[a][a] > 0 ? n / r.shared[a][a] : null))),
  };
  const unindexed = c.packPayloadBytes - c.chunkBytes;
  report.garbage = {
    chunks: d.garbageChunks,
    payloadBytes: d.garbageBytes,
    unindexedPayloadBytes: unindexed,
    totalPayloadBytes: d.garbageBytes + unindexed,
  };
  report.missingChunks = r.missing;
  report.summary.referencedChunks = r.referenced;
  report.summary.dedupRatio = ratio(report.summary.nonZeroPages, r.referenced);
  report.summary.dedupBasis = 'referenced-chunks';
}
