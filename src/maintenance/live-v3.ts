/**
 * What is live in a store of format 3: a bitset over chunk numbers, set from the manifests of
 * committed snapshots, held prepared snapshots and prepares whose commit is not there yet (a kept
 * delta base's manifest stays, its chunks need not), and what in-flight work references. A number costs one
 * bit whatever the store's size, and numbers never change, so the set is exact (format 2 kept a set
 * of 32-byte digests).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { ManifestHeader } from '../format/manifest.js';
import { decodeManifestV2Header, decodeManifestV2Pages, type NumberedPages } from '../format/manifest-v2.js';
import { PageKind } from '../format/pages.js';
import { KEY_SNAPSHOT, parseSnapshotRecord, prefixRange, type SnapshotRecord, type StoreDb } from '../store/db.js';
import { listHeld } from '../store/held.js';
import { listKeptBases, type KeptBaseRecord } from '../store/keys.js';
import { storePaths } from '../store/paths.js';
import { MAX_BASE_DEPTH } from '../store/manifest-loader.js';
import { CorruptError, MissingError } from '../util/errors.js';

/** A growable bitset over chunk numbers. */
export class NumberSet {
  private bits = new Uint32Array(1024);
  private count = 0;

  get size(): number {
    return this.count;
  }

  add(n: number): void {
    const w = Math.floor(n / 32);
    if (w >= this.bits.length) {
      const grown = new Uint32Array(Math.max(w + 1, this.bits.length * 2));
      grown.set(this.bits);
      this.bits = grown;
    }
    const m = 1 << (n % 32);
    if ((this.bits[w] & m) === 0) {
      this.bits[w] |= m;
      this.count++;
    }
  }

  has(n: number): boolean {
    const w = Math.floor(n / 32);
    return w < this.bits.length && (this.bits[w] & (1 << (n % 32))) !== 0;
  }

  /** Adds every numbered page of a snapshot. */
  addPages(pages: NumberedPages): void {
    for (let i = 0; i < pages.pageCount; i++) if (pages.kinds[i] === PageKind.Digest) this.add(pages.numbers[i]);
  }
}

/**
 * Loads numbered manifests once each: a delta chain's bases are resolved through the same cache, so
 * every file is read once however many snapshots share it (stats --detail and gc's mark share one).
 */
export class NumberedManifests {
  private readonly cache = new Map<string, Promise<{ header: ManifestHeader; pages: NumberedPages }>>();
  constructor(readonly manifestsDir: string) {}

  load(id: string): Promise<{ header: ManifestHeader; pages: NumberedPages }> {
    return this.loadChain(id, []);
  }

  private loadChain(id: string, chain: string[]): Promise<{ header: ManifestHeader; pages: NumberedPages }> {
    // A cycle of bases would wait on its own pending load; the depth bound refuses it first.
    if (chain.length > MAX_BASE_DEPTH + 1) return Promise.reject(new CorruptError(`manifest of snapshot ${chain[0]}: base chain too deep`));
    let hit = this.cache.get(id);
    if (!hit) {
      hit = this.read(id, [...chain, id]);
      this.cache.set(id, hit);
    } else if (chain.includes(id)) {
      return Promise.reject(new CorruptError(`manifest of snapshot ${chain[0]}: its delta bases form a cycle through ${id}`));
    }
    return hit;
  }

  private async read(id: string, chain: string[]): Promise<{ header: ManifestHeader; pages: NumberedPages }> {
    let bytes: Buffer;
    try {
      bytes = await fsp.readFile(path.join(this.manifestsDir, `${id}.vnm`));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      throw missingManifest(chain[0], err);
    }
    const { header, reader } = decodeManifestV2Header(bytes, id);
    if (header.meta.id !== id) throw new CorruptError(`manifest of snapshot ${id} names snapshot ${header.meta.id}`);
    let base: NumberedPages | undefined;
    if (header.baseId !== undefined) {
      try {
        base = (await this.loadChain(header.baseId, chain)).pages;
      } catch (err) {
        if (err instanceof MissingError) throw missingManifest(chain[0], err);
        throw err;
      }
    }
    return { header, pages: decodeManifestV2Pages(header, reader, id, base) };
  }
}

/** The snapshot asked for is named, whichever file of its chain is gone. */
function missingManifest(id: string, cause: unknown): MissingError {
  return new MissingError(`manifest of snapshot ${id} (or of its delta base) is missing; run 'vnstore check'`, { cause });
}

export interface LiveNumbers {
  live: NumberSet;
  committed: SnapshotRecord[];
  kept: KeptBaseRecord[];
  /** Held prepared snapshots and manifests of prepares not yet committed. */
  inFlightManifests: number;
  sessions: number;
  /** Snapshot ids in-flight work uses as delta bases (sessions' parents, uncommitted manifests' bases). */
  inFlightBases: Set<string>;
}

/** Committed snapshot records, in id (= time) order. */
export async function listCommittedRecords(db: StoreDb): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  for await (const [k, v] of db.iterator(prefixRange(Buffer.of(KEY_SNAPSHOT))))
    out.push(parseSnapshotRecord(v, k.subarray(1).toString('utf8')));
  return out;
}

/**
 * Marks every live number. `inFlight` (the open store's sessions and unsealed chunks) runs first,
 * then the manifest directory is listed, then the catalog read: a session that commits meanwhile has
 * written its manifest before its record, so one of the two sees it. A caller that reads the same
 * manifests afterwards (stats --detail) passes its `manifests`, so each file is read once.
 */
export async function markLiveNumbers(
  dir: string,
  db: StoreDb,
  inFlight?: (into: NumberSet) => Promise<{ sessions: number; bases: string[] }>,
  manifests = new NumberedManifests(storePaths(dir).manifests),
): Promise<LiveNumbers> {
  const live = new NumberSet();
  const fromSessions = inFlight ? await inFlight(live) : { sessions: 0, bases: [] };
  const inFlightBases = new Set(fromSessions.bases);
  const manifestsDir = storePaths(dir).manifests;
  const onDisk: string[] = [];
  for (const name of await fsp.readdir(manifestsDir)) {
    const m = /^([0-9a-f]{16})\.vnm$/.exec(name);
    if (m) onDisk.push(m[1]);
  }
  const committed = await listCommittedRecords(db);
  const kept = await listKeptBases(db);
  const held = await listHeld(db);
  // A kept base's manifest stays for its children's SAME runs; its own chunks are live only when a
  // snapshot names them (as on format 2).
  for (const r of committed) live.addPages((await manifests.load(r.id)).pages);
  const named = new Set<string>([...committed.map((r) => r.id), ...kept.map((k) => k.id)]);
  let inFlightManifests = 0;
  for (const id of [...held.map((h) => h.record.id), ...onDisk]) {
    if (named.has(id)) continue;
    named.add(id);
    inFlightManifests++;
    try {
      const m = await manifests.load(id);
      live.addPages(m.pages);
      if (m.header.baseId !== undefined) inFlightBases.add(m.header.baseId);
    } catch (err) {
      // A prepare aborted (its file removed) while we looked: nothing to keep.
      if (!(err instanceof MissingError)) throw err;
    }
  }
  return { live, committed, kept, inFlightManifests, sessions: fromSessions.sessions, inFlightBases };
}

export function manifestPathOf(dir: string, id: string): string {
  return path.join(storePaths(dir).manifests, `${id}.vnm`);
}
