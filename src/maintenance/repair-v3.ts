/**
 * check --repair-index on a store of format 3. There is no index to rebuild (the TOCs are the index);
 * what repair does is take damaged packs out of it, saving what can be saved:
 *
 *   a pack whose TOC or trailer fails, or that is gone  out of the index (a file: to quarantine/)
 *   a pack with chunks that do not verify               its good chunks copied, with their numbers, to a
 *                                                       new pack; the original to quarantine/
 *   a pack sharing some numbers with older packs        its numbers no other pack holds copied likewise;
 *                                                       the original to quarantine/
 *   a killed gc's copy (every number held elsewhere)    to quarantine/
 *
 * Order for each: the copy sealed first (a kill then leaves a copy of numbers the original still
 * holds, which the next open deletes), then the original moved aside, then a synced batch with the
 * number mark (a quarantined pack's numbers are never given again), then the in-memory index. The
 * snapshots naming numbers that are lost are named by the check that follows.
 */
import { packFileName } from '../format/pack.js';
import { TOC_DIGEST_BYTES } from '../format/pack-v3.js';
import { NEXT_NUMBER_KEY } from '../store/number-allocator.js';
import { quarantinePack } from '../store/quarantine.js';
import { VnstoreError } from '../util/errors.js';
import { emptyRepairReport, type RepairReport } from './repair.js';
import { checkNumberedPacks } from './check-v3.js';
import type { NumberedStore } from './numbered-store.js';
import { copyNumbered, unitsToCopy } from './pack-copy-v3.js';
import { readNumberedPackData } from './pack-data-v3.js';

export async function repairNumbered(store: NumberedStore): Promise<RepairReport> {
  if (store.busy()) throw new VnstoreError('E_SESSION', 'cannot repair while snapshot sessions are open');
  const report = emptyRepairReport();

  const index = store.numbered.index;
  const found = await checkNumberedPacks(store);
  // Gone or unreadable: nothing to save. Their digests are unknown, so the index forgets their
  // fingerprint slots lazily (a slot naming a pack it no longer holds answers "absent").
  const lost = [
    ...found.load.damaged.map((d) => ({ pack: d.pack, why: d.why, file: true })),
    ...found.missing.map((pack) => ({ pack, why: `pack ${packFileName(pack)} is missing`, file: false })),
  ];
  for (const { pack, why, file } of lost) {
    const to = file ? await quarantinePack(store.dir, store.packs, packFileName(pack)) : '';
    await markBatch(store);
    if (index.hasPack(pack)) {
      const count = index.packCount(pack);
      store.numbered.removePack(pack, new Uint8Array(count * TOC_DIGEST_BYTES));
      report.indexEntriesRemoved += count;
    }
    if (file) report.packsQuarantined.push({ pack: packFileName(pack), to, reason: why });
  }
  // Bad chunks inside an intact TOC (every indexed pack is read whole).
  for (const pack of index.packIds.sort((a, b) => a - b)) {
    report.packsScanned++;
    const data = await readNumberedPackData(store.packs, pack);
    if (data.bad.length === 0 || !data.toc) continue;
    const bad = new Set(data.bad.map((b) => b.number));
    await salvage(store, pack, data.toc, (n) => !bad.has(n), `${data.bad.length} chunk(s) do not verify`, report);
  }
  // Numbers twice: keep what only the conflicting pack holds; a killed gc's copy holds nothing new.
  for (const c of [...found.load.conflicting.map((x) => x.pack), ...found.load.copies]) {
    const { toc } = await store.packs.readTocV3(c);
    await salvage(store, c, toc, (n) => !index.locate(n), 'its chunk numbers are held by older packs', report);
  }
  return report;
}

/** Copies the chunks of `pack` that `keep` names into a new pack, then moves `pack` to quarantine/. */
async function salvage(
  store: NumberedStore,
  pack: number,
  toc: Parameters<typeof unitsToCopy>[1],
  keep: (n: number) => boolean,
  why: string,
  report: RepairReport,
): Promise<void> {
  const units = unitsToCopy(pack, toc, keep);
  const copy = units.length > 0 ? await copyNumbered(store, store.reservePackId(), units) : undefined;
  const to = await quarantinePack(store.dir, store.packs, packFileName(pack));
  await markBatch(store);
  const indexed = store.numbered.index.hasPack(pack);
  await store.numbered.replacePacks(indexed ? [{ pack, digests: toc.digests }] : [], copy ? [copy.pack] : []);
  report.packsQuarantined.push({ pack: packFileName(pack), to, reason: why });
  if (copy)
    report.packsSalvaged.push({
      pack: packFileName(pack),
      into: packFileName(copy.pack),
      goodChunks: copy.chunks,
      badChunks: toc.count - copy.chunks,
    });
  if (indexed) report.indexEntriesRemoved += toc.count - (copy?.chunks ?? 0);
  else report.indexEntriesAdded += copy?.chunks ?? 0;
}

/** The number mark, synced: numbers of packs that left are never given again. */
async function markBatch(store: NumberedStore): Promise<void> {
  await store.db.batch().put(NEXT_NUMBER_KEY, store.numbered.allocator.markValue()).write({ sync: true });
}
