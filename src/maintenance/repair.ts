/**
 * check --repair-index: rebuilds the chunk index and the pack records from the packs themselves,
 * salvaging the good chunks of damaged packs into a new pack and quarantining the damaged ones
 * (never deleting them); catalog listings are rebuilt from the commit records.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packFileName, parsePackFileName, PACK_HEADER_BYTES, storedShare, TOC_PREFIX_BYTES, type PackEntry } from '../format/pack.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import {
  jsonValue,
  KEY_GROUP,
  KEY_PACK,
  KEY_SNAPSHOT,
  KEY_VM,
  parseRecord,
  GROUP_RECORD,
  PACK_RECORD,
  SNAPSHOT_RECORD,
  prefixedKey,
  prefixRange,
  scanChunkIndex,
  vmKey,
  type GroupRecord,
  type PackRecord,
  type SnapshotRecord,
} from '../store/db.js';
import { IndexBatch } from '../store/index-batch.js';
import { chunkLocation, type PackChunks } from '../store/pack-file.js';
import { entryLocation } from '../store/pack-reader.js';
import { Store } from '../store/store.js';
import { VnstoreError } from '../util/errors.js';
import { DigestSet, ensureLength } from './digest-set.js';
import { verifyChunks, writePack, type StoredChunk } from './pack-io.js';
import { quarantinePack } from '../store/quarantine.js';
import { readPackData, type PackData } from './pack-data.js';

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

/** A report of a repair that did nothing yet. */
export function emptyRepairReport(): RepairReport {
  return {
    packsScanned: 0,
    packsQuarantined: [],
    packsSalvaged: [],
    indexEntriesAdded: 0,
    indexEntriesChanged: 0,
    indexEntriesRemoved: 0,
    catalogFixes: 0,
    countersReset: false,
  };
}

/**
 * Rebuilds the chunk index and the pack records from the packs themselves, quarantining what cannot
 * be read and salvaging the good chunks of damaged packs. Needs exclusive use of the store.
 */
export async function repairIndex(store: Store): Promise<RepairReport> {
  store.refuseNumbered('repair'); // format 3: docs/FORMAT3-STATUS.md step 6
  if (store.sessions.size > 0) throw new VnstoreError('E_SESSION', 'cannot repair the index while snapshot sessions are open');
  await store.writer.flush();
  const p = Store.paths(store.dir);
  const report = emptyRepairReport();
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
  const consider = (id: number, good: { entry: PackEntry; digest: Buffer }[], written?: PackChunks) => {
    good.forEach((g, i) => {
      const loc = written ? chunkLocation(id, written, i) : entryLocation(id, g.entry);
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
    const res = await readPackData(store, id, noIndexed);
    if (res.error || res.bad.length > 0) {
      damaged.push({ id, name, res });
      continue;
    }
    const st = await fsp.stat(file);
    const payloadBytes = res.good.reduce((s, g) => s + storedShare(g.entry), 0);
    packRecords.push({
      id,
      chunks: res.chunks,
      bytes: st.size,
      payloadBytes,
      sealedAt: oldRecords.get(id)?.sealedAt ?? st.mtime.toISOString(),
    });
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
        chunks.push({
          digest: g.digest,
          payload: data.subarray(g.entry.offset, g.entry.offset + g.entry.storedLength),
          codec: g.entry.codec,
          member: g.entry.member,
          pages: g.entry.pages,
        });
        entries.push(g);
        have.add(g.digest.toString('latin1'));
      }
      const candidates = known
        .get(d.id)!
        .filter(
          (e) =>
            !have.has(e.digest.toString('latin1')) && e.loc.offset >= PACK_HEADER_BYTES && e.loc.offset + e.loc.storedLength <= data.length,
        );
      const cand: StoredChunk[] = candidates.map((e) => ({
        digest: e.digest,
        payload: data.subarray(e.loc.offset, e.loc.offset + e.loc.storedLength),
        codec: e.loc.codec,
        member: e.loc.member,
        pages: e.loc.pages,
      }));
      const badIdx = new Set(await verifyChunks(store, cand));
      candidates.forEach((e, i) => {
        if (badIdx.has(i)) return;
        chunks.push(cand[i]);
        entries.push({
          entry: {
            digestPrefix: e.digest.subarray(0, TOC_PREFIX_BYTES),
            offset: e.loc.offset,
            storedLength: e.loc.storedLength,
            codec: e.loc.codec,
            member: e.loc.member ?? 0,
            pages: e.loc.pages ?? 1,
          },
          digest: e.digest,
        });
      });
      // Good chunks into a new pack (durable first), then the damaged pack goes aside, never deleted.
      let into = '(none)';
      if (chunks.length > 0) {
        const newId = store.writer.reservePackId();
        const { record, chunks: written } = await writePack(store, newId, chunks);
        packRecords.push(record);
        consider(newId, entries, written);
        into = packFileName(newId);
      }
      const to = await quarantinePack(store.dir, store.packs, d.name);
      const lost = Math.max(0, (d.res.error ? known.get(d.id)!.length : d.res.chunks) - chunks.length);
      report.packsSalvaged.push({ pack: d.name, into, goodChunks: chunks.length, badChunks: lost });
      report.packsQuarantined.push({
        pack: d.name,
        to: path.relative(store.dir, to),
        reason: d.res.error ?? `${d.res.bad.length} corrupt chunk(s)`,
      });
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
    if (
      want.pack !== loc.pack ||
      want.offset !== loc.offset ||
      want.storedLength !== loc.storedLength ||
      want.codec !== loc.codec ||
      want.member !== loc.member ||
      want.pages !== loc.pages
    ) {
      puts.push({ digest, loc: want, existed: true });
    }
  });
  for (let ord = 0; ord < desired.size; ord++) {
    if (!seen[ord]) puts.push({ digest: Buffer.from(desired.digest(ord)), loc: desLoc[ord], existed: false });
  }
  report.indexEntriesRemoved = toRemove.length;
  report.indexEntriesChanged = puts.filter((u) => u.existed).length;
  report.indexEntriesAdded = puts.length - report.indexEntriesChanged;
  // Bounded batches; each stamps a new chunk generation, so a crash part-way leaves the saved table stale.
  let batch = new IndexBatch(store.db);
  let ops = 0;
  const next = async () => {
    if (++ops % 10_000 !== 0) return;
    await batch.write();
    batch = new IndexBatch(store.db);
  };
  for (const d of toRemove) {
    batch.removeChunk(d);
    await next();
  }
  for (const u of puts) {
    batch.putChunk(u.digest, u.loc);
    await next();
  }
  const goodIds = new Set(packRecords.map((r) => r.id));
  for (const id of oldRecords.keys()) if (!goodIds.has(id)) batch.removePack(id);
  for (const r of packRecords) batch.putPackRecord(r);
  report.catalogFixes = await repairCatalog(store, batch);
  const token = await batch.write({ sync: true });
  store.indexChanged(token, { removed: toRemove, relocated: puts.filter((u) => u.existed), inserted: puts.filter((u) => !u.existed) });
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
    batch.put(
      prefixedKey(KEY_GROUP, id),
      jsonValue({ id, time: members[0].time, snapshots: members.map((r) => r.id) } satisfies GroupRecord),
    );
    fixes++;
  }
  return fixes;
}
