/**
 * check, phase 2: every manifest reads, resolves its delta base, and matches its commit record and
 * image digest; kept base manifests are there. Collects the digests the manifests reference.
 */
import { promises as fsp } from 'node:fs';
import { imageDigest } from '../chunk/hash.js';
import { DIGEST_BYTES, PageKind, type PageTable } from '../format/pages.js';
import { zeroCounters, type StoreCounters } from '../store/counters.js';
import type { SnapshotRecord } from '../store/db.js';
import type { KeptBaseRecord } from '../store/keys.js';
import { ManifestLoader } from '../store/manifest-loader.js';
import { Store } from '../store/store.js';
import { CorruptError, MissingError } from '../util/errors.js';
import { NEXT_FORGET, type CheckProblem } from './check-problems.js';
import { DigestSet } from './digest-set.js';

export interface ManifestResult {
  problems: CheckProblem[];
  warnings: string[];
  /** Every digest a manifest names (by ordinal). */
  referenced: DigestSet;
  /** Snapshots that cannot be restored because their own manifest (or a base) is bad. */
  brokenManifest: Map<string, string>;
  /** A snapshot's full page table, through this run's manifest cache. */
  pagesOf(id: string): Promise<PageTable>;
  /** The snapshot and kept-base counters, recounted. */
  counted: StoreCounters;
  checked: { snapshots: number; keptBases: number };
}

export async function checkManifests(
  store: Store,
  records: readonly SnapshotRecord[],
  kept: readonly KeptBaseRecord[],
): Promise<ManifestResult> {
  const problems: CheckProblem[] = [];
  const warnings: string[] = [];
  const counted = zeroCounters();
  const checked = { snapshots: 0, keptBases: 0 };
  const recById = new Map(records.map((r) => [r.id, r]));
  const keptIds = new Set(kept.map((k) => k.id));
  const loader = new ManifestLoader((id) => store.manifestPath(id));
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
    counted.snapshots++;
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
      if ((m.header.baseId ?? null) !== (r.base ?? null))
        mismatch.push(`delta base ${m.header.baseId ?? '(none)'} vs ${r.base ?? '(none)'}`);
      if (Buffer.from(m.header.imageDigest).toString('hex') !== r.imageDigest) mismatch.push('image digest');
      else if (imageDigest(m.pages, m.header.byteLength).toString('hex') !== r.imageDigest)
        mismatch.push('page digests do not hash to the image digest');
      if (zeroPages !== r.zeroPages) mismatch.push(`zero pages ${zeroPages} vs ${r.zeroPages}`);
      if (m.fileBytes !== r.manifestBytes) mismatch.push(`file size ${m.fileBytes} vs ${r.manifestBytes}`);
      if (mismatch.length > 0) {
        problems.push(manifestMismatch(r.id, mismatch));
        brokenManifest.set(r.id, 'manifest mismatch');
      }
      const pages = m.pages;
      for (let i = 0; i < pages.pageCount; i++) if (pages.kinds[i] === PageKind.Digest) referenced.add(pages.digests, i * DIGEST_BYTES);
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      problems.push({
        kind: err instanceof MissingError ? 'manifest-missing' : 'manifest-corrupt',
        message: err.message,
        snapshot: r.id,
        affects: [r.id],
        next: NEXT_FORGET([r.id]),
      });
      brokenManifest.set(r.id, err.message);
    }
    counted.logicalBytes += byteLength;
    counted.pages += pageCount;
    counted.zeroPages += zeroPages;
    counted.manifestBytes += fileBytes;
  }
  for (const k of kept) {
    checked.keptBases++;
    counted.keptBases++;
    const st = await fsp.stat(store.manifestPath(k.id)).catch(() => undefined);
    counted.keptBaseBytes += st?.size ?? k.manifestBytes;
    if (!st) {
      const dependants = records.filter((r) => chainOf(r.id).includes(k.id)).map((r) => r.id);
      if (dependants.length > 0 && !dependants.every((id) => brokenManifest.has(id))) {
        problems.push(missingKeptBase(k.id, dependants));
      }
    }
  }
  // A broken manifest also breaks every snapshot delta-encoded through it.
  for (const pr of problems) {
    if (!pr.snapshot || !pr.kind.startsWith('manifest')) continue;
    for (const r of records)
      if (r.id !== pr.snapshot && chainOf(r.id).includes(pr.snapshot) && !pr.affects.includes(r.id)) pr.affects.push(r.id);
  }
  const manifestNames = await fsp.readdir(Store.paths(store.dir).manifests);
  for (const name of manifestNames) {
    const m = /^([0-9a-f]{16})\.vnm$/.exec(name);
    if (m && !recById.has(m[1]) && !keptIds.has(m[1]))
      warnings.push(`manifest ${name} belongs to no committed snapshot (removed on next open unless a session is committing it)`);
  }
  return { problems, warnings, referenced, brokenManifest, pagesOf: async (id) => (await loader.load(id)).pages, counted, checked };
}

/** A kept base manifest that is gone, and the snapshots delta-encoded through it. */
export function missingKeptBase(id: string, dependants: string[]): CheckProblem {
  return {
    kind: 'manifest-missing',
    message: `kept base manifest ${id} is missing`,
    snapshot: id,
    affects: dependants,
    next: NEXT_FORGET(dependants),
  };
}

/** A manifest that disagrees with its commit record, and how. */
export function manifestMismatch(id: string, mismatch: string[]): CheckProblem {
  return {
    kind: 'manifest-mismatch',
    message: `manifest of snapshot ${id} disagrees with its commit record (${mismatch.join('; ')})`,
    snapshot: id,
    affects: [id],
    next: NEXT_FORGET([id]),
  };
}
