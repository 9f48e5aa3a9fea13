/**
 * What is live: the digests of every committed manifest, plus what in-flight work may still
 * reference (open sessions, their parents, prepared-but-uncommitted manifests, unsealed chunks);
 * and which manifests must stay on disk as delta bases.
 */
import { promises as fsp } from 'node:fs';
import { DIGEST_BYTES, PageKind, type PageTable } from '../format/pages.js';
import { KEY_SNAPSHOT, parseRecord, prefixedKey, prefixRange, SNAPSHOT_RECORD, type SnapshotRecord } from '../store/db.js';
import { Store } from '../store/store.js';
import { CorruptError, MissingError } from '../util/errors.js';
import { DigestSet } from './digest-set.js';
import { keptBaseKey, type KeptBaseRecord } from '../store/keys.js';

/** Adds every digest page of `pages`; skips pages equal to `prev` at the same index (already added). */
export function addPageDigests(set: DigestSet, pages: PageTable, prev?: PageTable): void {
  const kinds = pages.kinds;
  const d = pages.digests;
  for (let i = 0; i < pages.pageCount; i++) {
    if (kinds[i] !== PageKind.Digest) continue;
    if (prev && i < prev.pageCount && prev.kinds[i] === PageKind.Digest && pages.sameDigest(i, prev.digests, i * DIGEST_BYTES)) continue;
    set.add(d, i * DIGEST_BYTES);
  }
}

export interface InFlight {
  /** Snapshot ids that in-flight work uses as delta base (they become bases on commit). */
  bases: Set<string>;
  sessions: number;
  preparedManifests: number;
}

/**
 * Collects what in-flight work references (`ignore`: manifest files known not to be in flight, e.g.
 * those forget is about to delete). The session part runs synchronously first (a session
 * that leaves `store.sessions` afterwards has already written its manifest, which the directory
 * listing that follows sees; one committed meanwhile is listed by the caller's later catalog scan).
 */
export async function collectInFlight(store: Store, into: DigestSet, ignore: ReadonlySet<string> = new Set()): Promise<InFlight> {
  const inflight: InFlight = { bases: new Set(), sessions: 0, preparedManifests: 0 };
  for (const s of store.sessions) {
    inflight.sessions++;
    for (const d of s.liveDigests()) into.add(d);
    if (s.parent) {
      addPageDigests(into, s.parent.pages);
      inflight.bases.add(s.parent.id);
    }
  }
  for (const digest of store.writer.unindexedDigests()) into.add(digest);
  // Manifests written by prepare() whose commit record is not (yet) there.
  const ids: string[] = [];
  for (const name of await fsp.readdir(Store.paths(store.dir).manifests)) {
    const m = /^([0-9a-f]{16})\.vnm$/.exec(name);
    if (m && !ignore.has(m[1])) ids.push(m[1]);
  }
  if (ids.length === 0) return inflight;
  const committed = await store.db.getMany(ids.map((id) => prefixedKey(KEY_SNAPSHOT, id)));
  const kept = await store.db.getMany(ids.map((id) => keptBaseKey(id)));
  for (let i = 0; i < ids.length; i++) {
    if (committed[i] !== undefined || kept[i] !== undefined) continue;
    try {
      const header = await store.readManifestHeader(ids[i]);
      addPageDigests(into, await store.loadPages(ids[i]));
      if (header.baseId) inflight.bases.add(header.baseId);
      inflight.preparedManifests++;
    } catch (err) {
      // Aborted (file removed, its own or its base's) while we looked: nothing to keep.
      if (!(err instanceof MissingError || (err instanceof CorruptError && err.cause instanceof MissingError))) throw err;
    }
  }
  return inflight;
}

/** Committed snapshot records, in id (= time) order, from one consistent iterator. */
export async function listCommitted(store: Store): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  for await (const v of store.db.values(prefixRange(Buffer.of(KEY_SNAPSHOT)))) out.push(parseRecord(v, SNAPSHOT_RECORD));
  return out;
}

/** Adds the digests of every given committed snapshot (bases resolved, consecutive pages skipped). */
export async function markSnapshots(store: Store, records: readonly SnapshotRecord[], into: DigestSet): Promise<void> {
  const lastByVm = new Map<string, PageTable>();
  for (const r of records) {
    const pages = await store.loadPages(r.id);
    addPageDigests(into, pages, lastByVm.get(r.vm));
    lastByVm.set(r.vm, pages);
  }
}

/**
 * Manifests that must stay on disk because a delta chain runs through them: walks the base chain of
 * every `start` id through `baseOf` (committed records and kept bases alike) and returns every id met
 * on the way (the starts themselves excluded unless another chain reaches them).
 */
export function baseChainIds(starts: Iterable<string>, baseOf: (id: string) => string | undefined): Set<string> {
  const out = new Set<string>();
  for (const s of starts) {
    let b = baseOf(s);
    let guard = 0;
    while (b !== undefined && !out.has(b) && guard++ < 64) {
      out.add(b);
      b = baseOf(b);
    }
  }
  return out;
}

export function baseLookup(records: readonly SnapshotRecord[], kept: readonly KeptBaseRecord[]): (id: string) => string | undefined {
  const m = new Map<string, string | undefined>();
  for (const k of kept) m.set(k.id, k.base);
  for (const r of records) m.set(r.id, r.base);
  return (id) => m.get(id);
}

export function manifestFile(store: Store, id: string): string {
  return store.manifestPath(id);
}
