/**
 * Received PAGES gathered into one page job's worth before they go to the session. An agent sends at
 * most MAX_PAGES_PER_BATCH (256) pages per frame, and each writeScattered call is a hash job of its
 * own: a cold 256 MiB snapshot cost the server 256 jobs, each lending two 4 MiB slabs to a worker and
 * back, and V8 counts every such transfer as new external memory: 17-32 full garbage collections
 * per snapshot (bench/RESULTS.md, issue 12 on format 3). Gathered, the same pages make 64 jobs.
 *
 * The gathered pages are written before any request of their session that could see them: a
 * PREPARE, or an OFFER or ZERO that touches a page index in the gathered span (`touches`). Pages of
 * distinct indices commute, so the page table ends as if each frame had been written on arrival.
 */
import { DIGEST_BYTES, PAGE_SIZE } from '../format/pages.js';
import { BLOCK_PAGES } from '../store/job-sizes.js';
import type { SlabPool } from '../chunk/slab-pool.js';

/** Bytes of a gather's page buffer (one page job's worth): the size of the slabs its pool lends. */
export const GATHER_BYTES = BLOCK_PAGES * PAGE_SIZE;

export interface GatheredPages {
  indices: Uint32Array;
  digests: Uint8Array;
  data: Uint8Array;
}

export class PageGather {
  constructor(private readonly pool: SlabPool) {}

  private readonly indices = new Uint32Array(BLOCK_PAGES);
  private readonly digests = new Uint8Array(BLOCK_PAGES * DIGEST_BYTES);
  /** Lent by `pool` from the first page added until `release` (memory reused across sessions). */
  private data: Uint8Array | undefined;
  private count = 0;
  private low = Infinity;
  private high = -1;

  get size(): number {
    return this.count;
  }

  /** Whether `n` more pages fit. */
  fits(n: number): boolean {
    return this.count + n <= BLOCK_PAGES;
  }

  get full(): boolean {
    return this.count === BLOCK_PAGES;
  }

  /** Copies `n` pages in (the caller checked they fit): page k of `data` is page `indices[k]`, digest k its checked digest. */
  add(indices: Uint32Array, digests: Uint8Array, data: Uint8Array): void {
    const n = indices.length;
    const at = this.count;
    this.data ??= this.pool.take(GATHER_BYTES);
    this.indices.set(indices, at);
    this.digests.set(digests.subarray(0, n * DIGEST_BYTES), at * DIGEST_BYTES);
    this.data.set(data.subarray(0, n * PAGE_SIZE), at * PAGE_SIZE);
    for (let k = 0; k < n; k++) {
      if (indices[k] < this.low) this.low = indices[k];
      if (indices[k] > this.high) this.high = indices[k];
    }
    this.count += n;
  }

  /** Whether a write of pages `first .. last` may touch a gathered page (by the gathered span). */
  touches(first: number, last: number): boolean {
    return this.count > 0 && first <= this.high && last >= this.low;
  }

  /** Whether any of `indices` may be a gathered page. */
  touchesAny(indices: Uint32Array): boolean {
    if (this.count === 0) return false;
    for (let k = 0; k < indices.length; k++) if (indices[k] >= this.low && indices[k] <= this.high) return true;
    return false;
  }

  /** Whether any (first, count) pair of `ranges` may touch a gathered page. */
  touchesRanges(ranges: Uint32Array): boolean {
    for (let r = 0; r < ranges.length; r += 2) if (ranges[r + 1] > 0 && this.touches(ranges[r], ranges[r] + ranges[r + 1] - 1)) return true;
    return false;
  }

  /** Gives the page buffer back to the pool, once nothing gathered is left and no view of `take` is in use. */
  release(): void {
    if (this.count > 0 || !this.data) return;
    this.pool.give(this.data);
    this.data = undefined;
  }

  /**
   * The gathered pages, emptied: views of this gather's buffers, valid until the next `add` or `release` (the
   * session copies what it keeps before its write call settles).
   */
  take(): GatheredPages {
    const n = this.count;
    this.count = 0;
    this.low = Infinity;
    this.high = -1;
    return {
      indices: this.indices.subarray(0, n),
      digests: this.digests.subarray(0, n * DIGEST_BYTES),
      data: this.data!.subarray(0, n * PAGE_SIZE),
    };
  }
}
