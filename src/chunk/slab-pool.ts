/**
 * Reusable buffers ("slabs") for page jobs. The main thread lends a worker a slab for a job's input
 * pages or output (compressed payloads, a restored window), the worker reads or fills it in place, and
 * the main thread gives it back once it is done with the bytes.
 *
 * Why: fresh memory costs a page fault per 4 KiB on first touch (about 11 µs each on the project
 * machine, more than hashing the page; bench/RESULTS.md), and a block pipeline that allocated its
 * buffers anew paid that for every block.
 *
 * A pool for slabs that cross to workers is `shared` (SharedArrayBuffers, posted without a transfer
 * list). Plain ArrayBuffers moved by transfer, two 4 MiB slabs to a worker and back per job, drove the
 * server's main thread into a mark-compact every few jobs ("external memory pressure": 16-39 in one cold
 * 256 MiB snapshot, 2 with shared slabs; bench/RESULTS.md, issue 12, session 12). Copy into and out
 * of the slabs with copyBytes (src/util/shared-bytes.ts): TypedArray.set on shared memory goes a byte
 * at a time when the two sides are not equally aligned, about 6 times slower than memcpy.
 */
export class SlabPool {
  private readonly free: (ArrayBuffer | SharedArrayBuffer)[] = [];

  constructor(
    /** Size of a pooled slab; larger requests get a one-off buffer. */
    readonly slabBytes: number,
    /** Slabs kept for reuse at most (the rest are left to the garbage collector). */
    private readonly keep: number,
    /** SharedArrayBuffer slabs, lent to workers without a transfer (see above). */
    readonly shared = false,
  ) {}

  /** A view of exactly `bytes` bytes at the start of a slab. Its contents are whatever the last user left. */
  take(bytes: number): Uint8Array {
    if (bytes > this.slabBytes) return new Uint8Array(bytes);
    const slab = this.free.pop() ?? (this.shared ? new SharedArrayBuffer(this.slabBytes) : new ArrayBuffer(this.slabBytes));
    return new Uint8Array(slab, 0, bytes);
  }

  /**
   * Returns the slab under `view` (as handed back by a worker, or never sent); the caller must not
   * use it afterwards. Detached, one-off and foreign buffers are ignored. A shared slab must come
   * back as the view this pool lent (PagePool hands results back on the lent views, not on a
   * worker's copies of the SharedArrayBuffer object, which this identity check could not match).
   */
  give(view: Uint8Array | undefined): void {
    const ab = view?.buffer;
    if (
      (ab instanceof ArrayBuffer || ab instanceof SharedArrayBuffer) &&
      ab.byteLength === this.slabBytes &&
      this.free.length < this.keep &&
      !this.free.includes(ab)
    ) {
      this.free.push(ab);
    }
  }
}

/** The transfer list for lending `view`'s slab to another thread (empty when there is none, or it is shared). */
export function slabTransfer(view: Uint8Array | undefined): ArrayBuffer[] {
  const ab = view?.buffer;
  return ab instanceof ArrayBuffer && ab.byteLength > 0 ? [ab] : [];
}
