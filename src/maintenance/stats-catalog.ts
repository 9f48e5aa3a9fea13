/**
 * The catalog's share of a counter recount, whatever the manifest version: committed snapshots'
 * logical bytes, pages, zero pages and manifest sizes from their manifests (the commit record's
 * figures for an unreadable one, which check reports), and the kept delta bases' manifest files.
 */
import { promises as fsp } from 'node:fs';
import type { StoreCounters } from '../store/counters.js';
import type { SnapshotRecord, StoreDb } from '../store/db.js';
import { listKeptBases } from '../store/keys.js';
import { CorruptError } from '../util/errors.js';

export interface ManifestFigures {
  byteLength: number;
  pageCount: number;
  zeroPages: number;
  fileBytes: number;
}

export async function addCatalogCounts(
  c: StoreCounters,
  records: SnapshotRecord[],
  db: StoreDb,
  manifestPath: (id: string) => string,
  figures: (id: string) => Promise<ManifestFigures>,
): Promise<void> {
  for (const r of records) {
    c.snapshots++;
    let f: ManifestFigures;
    try {
      f = await figures(r.id);
    } catch (err) {
      if (!(err instanceof CorruptError)) throw err;
      f = { byteLength: r.byteLength, pageCount: r.pageCount, zeroPages: r.zeroPages, fileBytes: r.manifestBytes };
    }
    c.logicalBytes += f.byteLength;
    c.pages += f.pageCount;
    c.zeroPages += f.zeroPages;
    c.manifestBytes += f.fileBytes;
  }
  for (const k of await listKeptBases(db)) {
    c.keptBases++;
    const st = await fsp.stat(manifestPath(k.id)).catch(() => undefined);
    c.keptBaseBytes += st?.size ?? k.manifestBytes;
  }
}
