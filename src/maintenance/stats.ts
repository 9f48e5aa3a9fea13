/**
 * stats: what the store holds and what it saves.
 *
 * The summary comes from the counters (counters.ts), read in constant time. Figures that depend on
 * which snapshots share which chunks (bytes only a VM or snapshot holds, the sharing matrix, garbage)
 * need one pass over the committed manifests and the index: `detail` (implied by vm / snapshot).
 * `exact` recounts the summary from manifests, pack records and the index and reports any drift.
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
import { CorruptError, VnstoreError } from '../util/errors.js';
import {
  counterDrift,
  FOLD_AFTER_DELTAS,
  foldCounters,
  readCounterState,
  resetCounters,
  zeroCounters,
  type StoreCounters,
} from '../store/counters.js';
import { DigestSet, ensureLength } from './digest-set.js';
import { withMaintenanceLock } from './fence.js';
import { listKeptBases } from '../store/keys.js';
import { collectInFlight, listCommitted } from './live.js';
import { ManifestLoader } from '../store/manifest-loader.js';
import { numberedChunkCounters } from './stats-v3.js';

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
    // Format 3: the summary only, for now (detail and exact read digest-keyed index entries).
    if (options.detail || options.vm !== undefined || options.snapshot !== undefined || options.exact)
      store.refuseNumbered('stats --detail, --vm, --snapshot or --exact');
    let snapshotFilter: SnapshotRecord | undefined;
    if (options.snapshot !== undefined) snapshotFilter = await store.resolveSnapshot(options.snapshot);
    if (options.vm !== undefined && !records.some((r) => r.vm === options.vm))
      throw new VnstoreError('E_NOT_FOUND', `no snapshots of VM ${options.vm} in this store`);
    const detail = options.detail || options.vm !== undefined || options.snapshot !== undefined;
    let exact: StoreCounters | undefined;
    let source: StatsReport['source'] = 'counters';
    if (options.exact || (!state.counters && !store.isNumbered)) exact = await recount(store, records);
    if (!state.counters && !store.isNumbered) {
      source = 'recount';
      // A store from before counters: initialise them (only when nothing else writes meanwhile).
      if (store.sessions.size === 0 && store.writer.unindexedChunks === 0) {
        await resetCounters(store.db, exact!);
        state = await readCounterState(store.db);
      }
    }
    // Format 3: chunk and pack figures from the packs (a seal writes no counter delta there).
    const c = store.isNumbered
      ? { ...(state.counters ?? zeroCounters()), ...(await numberedChunkCounters(store)) }
      : (state.counters ?? exact!);
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
      const drift = counterDrift(state.counters, exact);
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
  for (const r of records ?? (await listCommitted(store))) {
    c.snapshots++;
    try {
      const m = await loader.load(r.id);
      c.logicalBytes += m.header.byteLength;
      c.pages += m.pages.pageCount;
      c.zeroPages += m.pages.countKind(PageKind.Zero);
      c.manifestBytes += m.fileBytes;
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      // Unreadable manifest (check reports it): count what the commit record says.
      c.logicalBytes += r.byteLength;
      c.pages += r.pageCount;
      c.zeroPages += r.zeroPages;
      c.manifestBytes += r.manifestBytes;
    }
  }
  for (const k of await listKeptBases(store.db)) {
    c.keptBases++;
    const st = await fsp.stat(path.join(Store.paths(store.dir).manifests, `${k.id}.vnm`)).catch(() => undefined);
    c.keptBaseBytes += st?.size ?? k.manifestBytes;
  }
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
  const vmIndex = new Map(vmNames.map((v, i) => [v, i]));
  const V = vmNames.length;
  const W = Math.max(1, Math.ceil(V / 32));
  const set = new DigestSet(1 << 16);
  let owner = new Int32Array(1 << 16); // snapshot index + 1; -1 = several
  let lastSeen = new Int32Array(1 << 16); // snapshot index + 1 that last counted it
  let vmMask = new Uint32Array((1 << 16) * W);
  const snapDistinct = new Array<number>(records.length).fill(0);
  const loader = new ManifestLoader((id) => store.manifestPath(id), 12);
  const added = [false];
  for (let si = 0; si < records.length; si++) {
    const r = records[si];
    const vi = vmIndex.get(r.vm)!;
    const pages = (await loader.load(r.id)).pages;
    for (let i = 0; i < pages.pageCount; i++) {
      if (pages.kinds[i] !== PageKind.Digest) continue;
      const ord = set.add(pages.digests, i * DIGEST_BYTES, added);
      if (added[0]) {
        const cap = set.ordinalCapacity;
        owner = ensureLength(owner, cap);
        lastSeen = ensureLength(lastSeen, cap);
        vmMask = ensureLength(vmMask, cap * W);
      }
      if (lastSeen[ord] === si + 1) continue;
      lastSeen[ord] = si + 1;
      snapDistinct[si]++;
      owner[ord] = owner[ord] === 0 ? si + 1 : -1;
      vmMask[ord * W + (vi >>> 5)] |= 1 << (vi & 31);
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
  const snapUniqueChunks = new Array<number>(records.length).fill(0);
  const snapUniqueBytes = new Array<number>(records.length).fill(0);
  const vmUniqueChunks = new Array<number>(V).fill(0);
  const vmUniqueBytes = new Array<number>(V).fill(0);
  const shared = Array.from({ length: V }, () => new Array<number>(V).fill(0));
  let missing = 0;
  const bits: number[] = [];
  for (let ord = 0; ord < set.size; ord++) {
    if (!indexed[ord]) missing++;
    const bytes = indexed[ord] ? size[ord] + TOC_ENTRY_BYTES : 0;
    if (owner[ord] > 0) {
      snapUniqueChunks[owner[ord] - 1]++;
      snapUniqueBytes[owner[ord] - 1] += bytes;
    }
    bits.length = 0;
    for (let w = 0; w < W; w++) {
      let m = vmMask[ord * W + w];
      while (m !== 0) {
        const b = 31 - Math.clz32(m & -m);
        bits.push(w * 32 + b);
        m &= m - 1;
      }
    }
    if (bits.length === 1) {
      vmUniqueChunks[bits[0]]++;
      vmUniqueBytes[bits[0]] += bytes;
    }
    for (const a of bits) for (const b of bits) shared[a][b]++;
  }
  for (const v of report.vmStats) {
    const i = vmIndex.get(v.vm)!;
    v.distinctChunks = shared[i][i];
    v.uniqueChunks = vmUniqueChunks[i];
    v.uniqueBytes = vmUniqueBytes[i];
  }
  report.snapshotStats = records.map((r, si) => ({
    id: r.id,
    vm: r.vm,
    group: r.group ?? null,
    time: r.time,
    logicalBytes: r.byteLength,
    zeroPages: r.zeroPages,
    addedBytes: r.addedBytes,
    manifestBytes: r.manifestBytes,
    distinctChunks: snapDistinct[si],
    uniqueChunks: snapUniqueChunks[si],
    uniqueBytes: snapUniqueBytes[si],
  }));
  report.sharing = {
    vms: vmNames,
    sharedChunks: shared,
    fraction: shared.map((row, a) => row.map((n) => (shared[a][a] > 0 ? n / shared[a][a] : null))),
  };
  const unindexed = c.packPayloadBytes - c.chunkBytes;
  report.garbage = {
    chunks: garbageChunks,
    payloadBytes: garbageBytes,
    unindexedPayloadBytes: unindexed,
    totalPayloadBytes: garbageBytes + unindexed,
  };
  report.missingChunks = missing;
  report.summary.referencedChunks = set.size;
  report.summary.dedupRatio = ratio(report.summary.nonZeroPages, set.size);
  report.summary.dedupBasis = 'referenced-chunks';
}
