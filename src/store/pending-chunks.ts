/**
 * A session's new chunks not yet handed to the pack writer (issue 11, superseded pre-copy rounds).
 * A pre-copy migration sends a page again when the guest dirtied it again; a chunk new in an early
 * round and replaced in a later one was garbage in a pack until gc. Kept here instead (a copy of
 * each compressed payload, named by digest), they reach the writer only when the session commits,
 * or when they outgrow the bound, and then only those the session's page table still references.
 * Memory: the payloads plus ~45 B a chunk, at most `limitBytes` of payload per session.
 */
import { DIGEST_BYTES } from '../format/pages.js';
import { DigestSet, ensureLength } from '../maintenance/digest-set.js';

/** Payload bytes a session keeps before handing its chunks to the writer (docs/DESIGN.md). */
export const PENDING_LIMIT_BYTES = 128 * 1024 * 1024;

/** The bound: VNSTORE_PENDING_LIMIT_BYTES when set (tests exercise the overflow with small ones). */
export function pendingLimitBytes(): number {
  const v = process.env.VNSTORE_PENDING_LIMIT_BYTES;
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : PENDING_LIMIT_BYTES;
}
const BUFFER_BYTES = 1024 * 1024;

/** A run of kept chunks in one buffer, in the shape PackWriter.appendMany takes. */
export interface PendingRun {
  digests: Uint8Array;
  digestAt: Uint32Array;
  payload: Uint8Array;
  payloadAt: Uint32Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  count: number;
  bytes: number;
}

export class PendingChunks {
  private readonly set = new DigestSet(1024);
  private readonly buffers: Buffer[] = [];
  private used = BUFFER_BYTES; // bytes used in the last buffer (full: none yet)
  private bufferOf = new Uint32Array(1024);
  private offsetOf = new Uint32Array(1024);
  private lengthOf = new Uint32Array(1024);
  private codecOf = new Uint8Array(1024);
  /** Payload bytes kept. */
  bytes = 0;

  constructor(
    readonly limitBytes = pendingLimitBytes(),
    /** Buffers of an earlier, drained PendingChunks: fresh memory costs a fault per 4 KiB (docs/DESIGN.md). */
    private readonly spare: Buffer[] = [],
  ) {}

  /** The buffers, for the next PendingChunks once every run has been copied out. */
  release(): Buffer[] {
    return this.buffers.splice(0).concat(this.spare);
  }

  get count(): number {
    return this.set.size;
  }

  get full(): boolean {
    return this.bytes >= this.limitBytes;
  }

  has(digests: Uint8Array, at = 0): boolean {
    return this.set.has(digests, at);
  }

  /** Ordinal of a kept chunk, or -1. */
  find(digests: Uint8Array, at = 0): number {
    return this.set.find(digests, at);
  }

  /** Keeps a copy of chunk digests[at ..+32] (payload[start ..+length]); false if already kept. */
  add(digests: Uint8Array, at: number, payload: Uint8Array, start: number, length: number, codec: number): boolean {
    const added = [false];
    const ord = this.set.add(digests, at, added);
    if (!added[0]) return false;
    if (this.used + length > BUFFER_BYTES) {
      this.buffers.push(this.spare.pop() ?? Buffer.allocUnsafeSlow(BUFFER_BYTES));
      this.used = 0;
    }
    this.bufferOf = ensureLength(this.bufferOf, ord + 1);
    this.offsetOf = ensureLength(this.offsetOf, ord + 1);
    this.lengthOf = ensureLength(this.lengthOf, ord + 1);
    this.codecOf = ensureLength(this.codecOf, ord + 1);
    this.buffers[this.buffers.length - 1].set(payload.subarray(start, start + length), this.used);
    this.bufferOf[ord] = this.buffers.length - 1;
    this.offsetOf[ord] = this.used;
    this.lengthOf[ord] = length;
    this.codecOf[ord] = codec;
    this.used += length;
    this.bytes += length;
    return true;
  }

  /** The digest of kept chunk `ord` (a view). */
  digest(ord: number): Uint8Array {
    return this.set.digest(ord);
  }

  /** The chunks whose ordinal `keep` marks, grouped by buffer, in the order they were kept. */
  *runs(keep: Uint8Array): Generator<PendingRun> {
    const byBuffer: number[][] = this.buffers.map(() => []);
    for (let ord = 0; ord < this.set.size; ord++) if (keep[ord]) byBuffer[this.bufferOf[ord]].push(ord);
    for (let b = 0; b < this.buffers.length; b++) {
      const ords = byBuffer[b];
      if (ords.length === 0) continue;
      const run: PendingRun = {
        digests: new Uint8Array(ords.length * DIGEST_BYTES),
        digestAt: new Uint32Array(ords.length),
        payload: this.buffers[b],
        payloadAt: new Uint32Array(ords.length),
        lengths: new Uint32Array(ords.length),
        codecs: new Uint8Array(ords.length),
        count: ords.length,
        bytes: 0,
      };
      ords.forEach((ord, k) => {
        run.digests.set(this.set.digest(ord), k * DIGEST_BYTES);
        run.digestAt[k] = k * DIGEST_BYTES;
        run.payloadAt[k] = this.offsetOf[ord];
        run.lengths[k] = this.lengthOf[ord];
        run.codecs[k] = this.codecOf[ord];
        run.bytes += this.lengthOf[ord];
      });
      yield run;
    }
  }
}
