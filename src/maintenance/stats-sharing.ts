/**
 * The sharing arithmetic of `stats --detail`, whatever names a chunk: each snapshot's references
 * arrive as chunk ordinals (a DigestSet ordinal on format 1/2, the chunk number on format 3), and the
 * result is the per-snapshot and per-VM distinct and unique chunks, unique bytes and the VM sharing
 * matrix. The callers say what a chunk costs on disk and which ordinals are stored.
 */
import { ensureLength } from './digest-set.js';

export interface SharingResult {
  /** Ordinals referenced by at least one snapshot. */
  referenced: number;
  /** Referenced ordinals no pack holds. */
  missing: number;
  snapDistinct: number[];
  snapUniqueChunks: number[];
  snapUniqueBytes: number[];
  vmUniqueChunks: number[];
  vmUniqueBytes: number[];
  /** shared[a][b]: chunks both VM a and VM b reference (shared[a][a]: VM a's distinct chunks). */
  shared: number[][];
}

export class SharingTally {
  private readonly words: number;
  private owner = new Int32Array(1 << 16); // snapshot index + 1; -1 = several; 0 = none
  private lastSeen = new Int32Array(1 << 16); // snapshot index + 1 that last counted it
  private vmMask: Uint32Array;
  private readonly snapDistinct: number[];
  private top = 0; // one past the highest ordinal seen

  constructor(
    snapshots: number,
    private readonly vms: number,
  ) {
    this.words = Math.max(1, Math.ceil(vms / 32));
    this.vmMask = new Uint32Array((1 << 16) * this.words);
    this.snapDistinct = new Array<number>(snapshots).fill(0);
  }

  /** Snapshot `si` (of VM `vi`) references chunk `ord`. Snapshots arrive in order, each once. */
  see(ord: number, si: number, vi: number): void {
    if (ord >= this.owner.length) {
      this.owner = ensureLength(this.owner, ord + 1);
      this.lastSeen = ensureLength(this.lastSeen, ord + 1);
      this.vmMask = ensureLength(this.vmMask, this.owner.length * this.words);
    }
    if (ord >= this.top) this.top = ord + 1;
    if (this.lastSeen[ord] === si + 1) return;
    this.lastSeen[ord] = si + 1;
    this.snapDistinct[si]++;
    this.owner[ord] = this.owner[ord] === 0 ? si + 1 : -1;
    this.vmMask[ord * this.words + (vi >>> 5)] |= 1 << (vi & 31);
  }

  referenced(ord: number): boolean {
    return ord < this.top && this.owner[ord] !== 0;
  }

  /** `bytesOf(ord)`: what the chunk costs on disk (payload + its table entry), or undefined when no pack holds it. */
  result(bytesOf: (ord: number) => number | undefined): SharingResult {
    const V = this.vms;
    const W = this.words;
    const S = this.snapDistinct.length;
    const out: SharingResult = {
      referenced: 0,
      missing: 0,
      snapDistinct: this.snapDistinct,
      snapUniqueChunks: new Array<number>(S).fill(0),
      snapUniqueBytes: new Array<number>(S).fill(0),
      vmUniqueChunks: new Array<number>(V).fill(0),
      vmUniqueBytes: new Array<number>(V).fill(0),
      shared: Array.from({ length: V }, () => new Array<number>(V).fill(0)),
    };
    const bits: number[] = [];
    for (let ord = 0; ord < this.top; ord++) {
      const owner = this.owner[ord];
      if (owner === 0) continue;
      out.referenced++;
      const stored = bytesOf(ord);
      if (stored === undefined) out.missing++;
      const bytes = stored ?? 0;
      if (owner > 0) {
        out.snapUniqueChunks[owner - 1]++;
        out.snapUniqueBytes[owner - 1] += bytes;
      }
      bits.length = 0;
      for (let w = 0; w < W; w++) {
        let m = this.vmMask[ord * W + w];
        while (m !== 0) {
          const b = 31 - Math.clz32(m & -m);
          bits.push(w * 32 + b);
          m &= m - 1;
        }
      }
      if (bits.length === 1) {
        out.vmUniqueChunks[bits[0]]++;
        out.vmUniqueBytes[bits[0]] += bytes;
      }
      for (const a of bits) for (const b of bits) out.shared[a][b]++;
    }
    return out;
  }
}
