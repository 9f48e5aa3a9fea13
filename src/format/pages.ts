/** In-memory page table of one VM image: per page index, zero or a 32-byte chunk digest. */
export const PAGE_SIZE = 4096;
export const DIGEST_BYTES = 32;

export enum PageKind {
  Unset = 0,
  Zero = 1,
  Digest = 2,
}

/**
 * Whether the 32-byte digests at a[aOffset..] and b[bOffset..] are equal (in place, no views), or
 * their first `bytes` bytes (a digest prefix, as a restore's SPARSE_DATA frame carries).
 */
export function digestsEqual(a: Uint8Array, aOffset: number, b: Uint8Array, bOffset: number, bytes = DIGEST_BYTES): boolean {
  for (let k = 0; k < bytes; k++) if (a[aOffset + k] !== b[bOffset + k]) return false;
  return true;
}

export class PageTable {
  kinds: Uint8Array;
  digests: Uint8Array;
  /** `capacity`: pages to make room for up front (a session that expects to grow to that size). */
  constructor(
    public pageCount: number,
    capacity = pageCount,
  ) {
    const cap = Math.max(pageCount, capacity);
    this.kinds = new Uint8Array(cap);
    this.digests = new Uint8Array(cap * DIGEST_BYTES);
  }

  /** Grows capacity so page index `index` is addressable (sessions of unknown size). */
  ensure(index: number): void {
    if (index < this.pageCount) return;
    const count = index + 1;
    if (count > this.kinds.length) {
      const cap = Math.max(count, this.kinds.length * 2, 256);
      const kinds = new Uint8Array(cap);
      kinds.set(this.kinds);
      const digests = new Uint8Array(cap * DIGEST_BYTES);
      digests.set(this.digests);
      this.kinds = kinds;
      this.digests = digests;
    }
    this.pageCount = count;
  }

  /** Truncates or grows to exactly `count` pages; new pages are Unset. */
  resize(count: number): void {
    if (count > this.pageCount) this.ensure(count - 1);
    else {
      this.kinds.fill(PageKind.Unset, count, this.pageCount);
      this.pageCount = count;
    }
  }

  digestAt(i: number): Uint8Array {
    return this.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
  }

  setZero(i: number): void {
    this.kinds[i] = PageKind.Zero;
  }

  setDigest(i: number, digest: Uint8Array, digestOffset = 0): void {
    this.kinds[i] = PageKind.Digest;
    // A byte loop, not subarray + set: a view per page cost 10-15 ms per 128 MiB snapshot's
    // inherited pages, and more again in its garbage collection (issue 12's profiles).
    const d = this.digests;
    if ((i + 1) * DIGEST_BYTES > d.length || digestOffset + DIGEST_BYTES > digest.length)
      throw new RangeError(`page ${i}: digest out of range`);
    for (let k = 0, to = i * DIGEST_BYTES; k < DIGEST_BYTES; k++) d[to + k] = digest[digestOffset + k];
  }

  sameDigest(i: number, other: Uint8Array, otherOffset: number): boolean {
    return digestsEqual(this.digests, i * DIGEST_BYTES, other, otherOffset);
  }

  countKind(kind: PageKind): number {
    let n = 0;
    for (let i = 0; i < this.pageCount; i++) if (this.kinds[i] === kind) n++;
    return n;
  }
}
