/**
 * Manifest format 2 (store format 3): pages named by chunk number (pure encode/decode, no I/O). See
 * docs/FORMAT.md, "Manifest file (.vnm, version 2)".
 *
 * Runs over page indices: ZERO, SAME (the base's number at the same index), NUMBERS (a start and
 * count consecutive numbers) and LIST (one number a page). Numbers are written as zigzag deltas from
 * `next`, the number after the last one named, so a first snapshot whose new pages were numbered in
 * page order costs a few bytes a run, and a consecutive one is SAME runs.
 */
import { crc32 } from 'node:zlib';
import { CorruptError } from '../util/errors.js';
import { beginManifest, checkManifestPlan, decodeManifestHeaderOf, type ManifestHeader } from './manifest.js';
import { PageKind } from './pages.js';
import { ByteReader, varintBytes } from './varint.js';

export const MANIFEST_VERSION_NUMBERED = 2;

const RUN_ZERO = 0;
const RUN_SAME = 1;
const RUN_NUMBERS = 2;
const RUN_LIST = 3;
/** Consecutive numbers shorter than this go into LIST runs (1 B an entry continuing its predecessor). */
export const MIN_NUMBERS_RUN = 4;

/** A page table naming chunks by number: per page Zero or Digest (a numbered chunk), or Unset. */
export class NumberedPages {
  readonly kinds: Uint8Array;
  readonly numbers: Float64Array;
  constructor(readonly pageCount: number) {
    this.kinds = new Uint8Array(pageCount);
    this.numbers = new Float64Array(pageCount);
  }
  setZero(i: number): void {
    this.kinds[i] = PageKind.Zero;
  }
  setNumber(i: number, n: number): void {
    this.kinds[i] = PageKind.Digest;
    this.numbers[i] = n;
  }
}

export interface ManifestV2Stats {
  runs: number;
  /** Pages in NUMBERS and LIST runs. */
  numberedEntries: number;
  sameEntries: number;
  zeroPages: number;
}

export interface ManifestV2Plan {
  /**
   * Each run's head, count * 4 + kind, as the file writes it. A typed array: JS arrays of a 256 MiB
   * image's ~25,000 runs grew through fresh large-object memory, 2 ms of page faults per array.
   */
  heads: Uint32Array;
  stats: ManifestV2Stats;
  /** Exact bytes of the encoded runs. */
  bodyBytes: number;
  base?: NumberedPages;
}

function zigzag(d: number): number {
  return d >= 0 ? 2 * d : -2 * d - 1;
}

function unzigzag(z: number): number {
  return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
}

/** varintBytes for the counts and deltas of a plan: comparisons, not divisions (a plan sizes ~25,000 runs a 256 MiB image). */
function sizeOf(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : varintBytes(v);
}

/** The run kind of page i (every page Zero or numbered): ZERO, SAME (the base's number) or NUMBERS. */
function runKindAt(pages: NumberedPages, base: NumberedPages | undefined, i: number): number {
  const k = pages.kinds[i];
  if (k === PageKind.Zero) return RUN_ZERO;
  if (k !== PageKind.Digest) throw new RangeError(`page ${i} has no content`);
  if (base && i < base.pageCount && base.kinds[i] === PageKind.Digest && base.numbers[i] === pages.numbers[i]) return RUN_SAME;
  return RUN_NUMBERS;
}

/**
 * Plans the runs of `pages` (every page Zero or numbered) against an optional base: ZERO, SAME, then
 * each stretch of other pages split into NUMBERS runs (at least MIN_NUMBERS_RUN consecutive numbers)
 * and LIST runs between them. One pass, no closure and no object a run: a commit plans every snapshot
 * once or twice (issue 12: two plans were a quarter of an empty snapshot's commit).
 */
export function planManifestV2(pages: NumberedPages, base?: NumberedPages): ManifestV2Plan {
  const heads = new RunHeads();
  const numbers = pages.numbers;
  const n = pages.pageCount;
  let bodyBytes = 0;
  let zeroPages = 0;
  let sameEntries = 0;
  let numberedEntries = 0;
  let next = 0;
  let i = 0;
  while (i < n) {
    const kind = runKindAt(pages, base, i);
    let j = i + 1;
    while (j < n && runKindAt(pages, base, j) === kind) j++;
    if (kind !== RUN_NUMBERS) {
      bodyBytes += heads.push((j - i) * 4 + kind);
      if (kind === RUN_ZERO) zeroPages += j - i;
      else sameEntries += j - i;
      i = j;
      continue;
    }
    numberedEntries += j - i;
    // Split [i, j) into consecutive stretches; short ones gather into LIST runs.
    let listStart = -1;
    let a = i;
    while (a <= j) {
      let b = a + 1;
      while (b < j && numbers[b] === numbers[b - 1] + 1) b++;
      // A NUMBERS run here (a stretch long enough), or the end: the LIST gathered so far goes first.
      const numbersRun = a < j && b - a >= MIN_NUMBERS_RUN;
      if (listStart >= 0 && (numbersRun || a === j)) {
        bodyBytes += heads.push((a - listStart) * 4 + RUN_LIST);
        for (let k = listStart; k < a; k++) {
          bodyBytes += sizeOf(zigzag(numbers[k] - next));
          next = numbers[k] + 1;
        }
        listStart = -1;
      }
      if (a === j) break;
      if (numbersRun) {
        bodyBytes += heads.push((b - a) * 4 + RUN_NUMBERS) + sizeOf(zigzag(numbers[a] - next));
        next = numbers[b - 1] + 1;
      } else if (listStart < 0) listStart = a;
      a = b;
    }
    i = j;
  }
  return { heads: heads.list(), stats: { runs: heads.count, numberedEntries, sameEntries, zeroPages }, bodyBytes, base };
}

/** A plan's run heads as they are appended, in a typed array that doubles when full. */
class RunHeads {
  private heads = new Uint32Array(1024);
  count = 0;

  /** Appends `head`; returns its encoded size. */
  push(head: number): number {
    if (this.count === this.heads.length) {
      const grown = new Uint32Array(this.heads.length * 2);
      grown.set(this.heads);
      this.heads = grown;
    }
    this.heads[this.count++] = head;
    return sizeOf(head);
  }

  /** The heads appended so far. */
  list(): Uint32Array {
    return this.heads.subarray(0, this.count);
  }
}

/**
 * At most the bodyBytes of planManifestV2(pages) without a base, in one pass over the kinds: its ZERO
 * runs are each maximal run of zero pages (as in any plan), and each stretch of L numbered pages
 * between them costs at least one run header of L pages and one number (varint sizes add up to at
 * least the size of their sum). A delta plan smaller than this wins without planning the full one.
 */
export function fullPlanBytesAtLeast(pages: NumberedPages): number {
  const kinds = pages.kinds;
  const n = pages.pageCount;
  let bytes = 0;
  let i = 0;
  while (i < n) {
    const zero = kinds[i] === PageKind.Zero;
    let j = i + 1;
    while (j < n && (kinds[j] === PageKind.Zero) === zero) j++;
    bytes += zero ? sizeOf((j - i) * 4 + RUN_ZERO) : sizeOf((j - i) * 4 + RUN_NUMBERS) + 1;
    i = j;
  }
  return bytes;
}

/** Encodes `pages` (every page Zero or numbered) against an optional base. */
export function encodeManifestV2(
  header: ManifestHeader,
  pages: NumberedPages,
  base?: NumberedPages,
  plan: ManifestV2Plan = planManifestV2(pages, base),
): { bytes: Buffer; stats: ManifestV2Stats } {
  checkManifestPlan(header, pages.pageCount, base, plan.base);
  const w = beginManifest(header, MANIFEST_VERSION_NUMBERED, plan.stats.runs, plan.bodyBytes);
  let page = 0;
  let next = 0;
  for (let r = 0; r < plan.heads.length; r++) {
    const head = plan.heads[r];
    const kind = head % 4;
    const count = (head - kind) / 4;
    w.varint(head);
    if (kind === RUN_NUMBERS) {
      w.varint(zigzag(pages.numbers[page] - next));
      next = pages.numbers[page + count - 1] + 1;
    } else if (kind === RUN_LIST) {
      for (let k = page; k < page + count; k++) {
        w.varint(zigzag(pages.numbers[k] - next));
        next = pages.numbers[k] + 1;
      }
    }
    page += count;
  }
  w.u32(crc32(w.finish()));
  return { bytes: w.finish(), stats: plan.stats };
}

export function decodeManifestV2Header(bytes: Uint8Array, name: string): { header: ManifestHeader; reader: ByteReader } {
  return decodeManifestHeaderOf(bytes, name, MANIFEST_VERSION_NUMBERED);
}

/** Decodes the runs into a full numbered page table; `base` must be the resolved base when baseId is set. */
export function decodeManifestV2Pages(header: ManifestHeader, reader: ByteReader, name: string, base?: NumberedPages): NumberedPages {
  if (header.baseId !== undefined && !base) throw new RangeError('base table required');
  const what = `manifest ${name}`;
  const pages = new NumberedPages(header.pageCount);
  const runs = reader.varint();
  let i = 0;
  let next = 0;
  const number = (): number => {
    const n = next + unzigzag(reader.varint());
    if (!Number.isSafeInteger(n) || n < 0) throw new CorruptError(`${what}: chunk number out of range`);
    next = n + 1;
    return n;
  };
  for (let r = 0; r < runs; r++) {
    const h = reader.varint();
    const kind = h % 4;
    const count = Math.floor(h / 4);
    if (count === 0 || i + count > header.pageCount) throw new CorruptError(`${what}: run overflows the page count`);
    if (kind === RUN_ZERO) {
      pages.kinds.fill(PageKind.Zero, i, i + count);
    } else if (kind === RUN_SAME) {
      if (!base || i + count > base.pageCount) throw new CorruptError(`${what}: SAME run outside its base`);
      for (let k = i; k < i + count; k++) {
        if (base.kinds[k] !== PageKind.Digest) throw new CorruptError(`${what}: SAME run over a non-numbered base page`);
      }
      pages.numbers.set(base.numbers.subarray(i, i + count), i);
      pages.kinds.fill(PageKind.Digest, i, i + count);
    } else if (kind === RUN_NUMBERS) {
      const start = number();
      if (!Number.isSafeInteger(start + count)) throw new CorruptError(`${what}: chunk number out of range`);
      for (let k = 0; k < count; k++) pages.numbers[i + k] = start + k;
      next = start + count;
      pages.kinds.fill(PageKind.Digest, i, i + count);
    } else {
      for (let k = i; k < i + count; k++) pages.numbers[k] = number();
      pages.kinds.fill(PageKind.Digest, i, i + count);
    }
    i += count;
  }
  if (i !== header.pageCount || reader.remaining !== 0) throw new CorruptError(`${what}: runs do not cover the image exactly`);
  return pages;
}
