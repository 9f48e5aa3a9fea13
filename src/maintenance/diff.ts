/**
 * diff: how the pages of snapshot B differ from those of snapshot A, by region and in total. Pure:
 * works on two page tables (from the manifests), never on the data, so it costs a manifest read each.
 *
 * Each page index falls in exactly one class:
 *   added       B has it, A is shorter
 *   removed     A has it, B is shorter
 *   becameZero  non-zero in A, zero in B
 *   changed     in both, content differs otherwise (including zero in A, non-zero in B)
 *   unchanged   same content in both (same digest, or zero in both)
 */
import { DIGEST_BYTES, PageKind, digestsEqual, type PageTable } from '../format/pages.js';

export interface PageDiffCounts {
  changed: number;
  added: number;
  removed: number;
  becameZero: number;
  unchanged: number;
}

export interface RegionDiff extends PageDiffCounts {
  index: number;
  firstPage: number;
  /** Pages of the region in the longer snapshot (the last region may be short). */
  pages: number;
}

export interface PageDiff {
  regionPages: number;
  total: PageDiffCounts;
  regions: RegionDiff[];
}

/** 256 MiB of 4 KiB pages. */
export const DEFAULT_REGION_PAGES = 65_536;

function zeroCounts(): PageDiffCounts {
  return { changed: 0, added: 0, removed: 0, becameZero: 0, unchanged: 0 };
}

/** Unset pages (never written) read back as zeros, like zero pages. */
const isZero = (t: PageTable, i: number) => t.kinds[i] !== PageKind.Digest;

export function diffPages(a: PageTable, b: PageTable, regionPages = DEFAULT_REGION_PAGES): PageDiff {
  if (!Number.isSafeInteger(regionPages) || regionPages < 1)
    throw new RangeError(`regionPages must be a whole number >= 1, got ${regionPages}`);
  const n = Math.max(a.pageCount, b.pageCount);
  const total = zeroCounts();
  const regions: RegionDiff[] = [];
  for (let first = 0, index = 0; first < n; first += regionPages, index++) {
    const end = Math.min(n, first + regionPages);
    const r: RegionDiff = { index, firstPage: first, pages: end - first, ...zeroCounts() };
    for (let i = first; i < end; i++) {
      if (i >= a.pageCount) r.added++;
      else if (i >= b.pageCount) r.removed++;
      else if (isZero(b, i)) {
        if (isZero(a, i)) r.unchanged++;
        else r.becameZero++;
      } else if (!isZero(a, i) && digestsEqual(a.digests, i * DIGEST_BYTES, b.digests, i * DIGEST_BYTES)) r.unchanged++;
      else r.changed++;
    }
    for (const k of Object.keys(total) as (keyof PageDiffCounts)[]) total[k] += r[k];
    regions.push(r);
  }
  return { regionPages, total, regions };
}
