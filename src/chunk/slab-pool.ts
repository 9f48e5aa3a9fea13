/**
 * Reusable shared buffers ("slabs") for page jobs. The main thread lends a worker a slab for a job's
 * output (compressed payloads, a restored window), the worker fills it in place, and the main thread
 * gives it back once it is done with the bytes.
 *
 * Why: fresh memory costs a page fault per 4 KiB on first touch (about 11 µs each on the project
 * machine, more than hashing the page; bench/RESULTS.md), and a block pipeline that allocated its
 * output buffers anew paid that for every block. Slabs are plain ArrayBuffers that travel by
 * transfer (to the worker with the job, back with the result), not SharedArrayBuffers: V8 copies
 * out of shared memory with relaxed atomic loads, several times slower than memcpy.
 */
export class SlabPool {
  private readonly free: ArrayBuffer[] = [];

  constructor(
    /** Size of a pooled slab; larger requests get a one-off buffer. */
    readonly slabBytes: number,
    /** Slabs kept for reuse at most (the rest are left to the garbage collector). */
    private readonly keep: number,
  ) {}

  /** A view of exactly `bytes` bytes at the start of a slab. Its contents are whatever the last user left. */
  take(bytes: number): Uint8Array {
    if (bytes > this.slabBytes) return new Uint8Array(bytes);
    return new Uint8Array(this.free.pop() ?? new ArrayBuffer(this.slabBytes), 0, bytes);
  }

  /**
   * Returns the slab under `view` (as handed back by a worker, or never sent); the caller must not
   * use it afterwards. Detached, one-off and foreign buffers are ignored.
   */
  give(view: Uint8Array | undefined): void {
    const ab = view?.buffer;
    if (ab instanceof ArrayBuffer && ab.byteLength === this.slabBytes && this.free.length < this.keep && !this.free.includes(ab)) {
      this.free.push(ab);
    }
  }
}

/** The transfer list for lending `view`'s slab to another thread (empty when there is none). */
export function slabTransfer(view: Uint8Array | undefined): ArrayBuffer[] {
  const ab = view?.buffer;
  return ab instanceof ArrayBuffer && ab.byteLength > 0 ? [ab] : [];
}
