/**
 * Restore: manifest → chunk locations (format 3: by number, exactly; formats 1/2: the in-memory
 * table, the exact index when ambiguous) → pack reads sorted by (pack, offset) and coalesced →
 * decode + BLAKE3 verify in the page workers → bytes in page order. Every chunk is verified before
 * the sink gets it, unless the sink verifies every page itself (RestoreSink.readerVerifies, format 3).
 */
import { packFileName } from '../format/pack.js';
import { TOC_DIGEST_BYTES } from '../format/pack-v3.js';
import { DIGEST_BYTES, PAGE_SIZE, PageKind, PageTable } from '../format/pages.js';
import type { ChunkLocation } from '../index/chunk-table.js';
import { imageDigest, hex } from '../chunk/hash.js';
import { CorruptError, FIND_DAMAGE_ADVICE, fromSystemError } from '../util/errors.js';
import type { Store } from './store.js';
import type { SnapshotRecord } from './db.js';
import { RESTORE_WINDOWS_IN_FLIGHT, SLAB_PAGES, WINDOW_PAGES } from './job-sizes.js';
import { zeroFill } from '../util/shared-bytes.js';

const COALESCE_GAP_BYTES = 16 * 1024;
const MAX_READ_BYTES = 8 * 1024 * 1024;

export interface RestoreSink {
  /**
   * Receives verified bytes in order; may apply backpressure by returning a promise. The chunk is
   * lent: restore reuses its memory once the returned promise settles (or write returns), so a sink
   * that keeps bytes beyond that must copy them. `digests` (lent as well) holds each page's digest
   * as computed from its verified bytes (32 B a page, zero for a zero page): what a stream that sends
   * digests sends (a format-3 TOC keeps only 24 bytes of each).
   */
  write(chunk: Uint8Array, digests: Uint8Array, kinds: Uint8Array): Promise<void> | void;
  /**
   * The reader hashes every page itself and checks the image digest (a streaming restore to a client
   * that verifies: protocol version 2). On format 3 the page workers then only read and decode, and
   * `digests` holds the TOC's 24-byte prefix of each page (the rest zero): one hash per page, at the
   * end that needs the bytes right, instead of one at each end. Formats 1/2 verify regardless (their
   * chunks are located by fingerprint hints, which only the hash confirms).
   */
  readerVerifies?: boolean;
  /**
   * Optional, for seekable outputs (a new file): write `chunk` at `position`. When present, runs of
   * zero pages are not written at all (the file gets holes, which read back as zeros) and `setLength`
   * fixes the final size; `write` is then not called.
   */
  writeAt?(chunk: Uint8Array, position: number): Promise<void>;
  setLength?(length: number): Promise<void>;
  /**
   * Optional, with writeAt: the output is this new regular file, and the page workers may write
   * verified windows into it themselves (parallel writes, no copy back to the main thread).
   */
  filePath?: string;
  /** Pages per restore window (default WINDOW_PAGES; at most SLAB_PAGES): a long-lived server's are larger. */
  windowPages?: number;
  /** How errors name the output (the file the user asked for, not its temp name). */
  name?: string;
}

export interface RestoreProgress {
  (bytesDone: number, bytesTotal: number): void;
}

export async function restoreSnapshot(
  store: Store,
  record: SnapshotRecord,
  sink: RestoreSink,
  onProgress?: RestoreProgress,
): Promise<void> {
  store.assertChunkTable('a restore');
  // Format 3: pages are located by number (exact, no fingerprint hint to confirm).
  const numbered = store.isNumbered ? await store.loadNumberedPages(record.id) : undefined;
  const pages = numbered?.pages ?? (await store.loadPages(record.id));
  const chunkNumbers = numbered?.numbers.numbers;
  const header = await store.readManifestHeader(record.id);
  if (header.byteLength !== record.byteLength || pages.pageCount !== record.pageCount) {
    throw new CorruptError(`snapshot ${record.id}: manifest disagrees with the catalog about the image size`);
  }
  // Formats 1/2: the page digest list must be the one committed: check it before a single byte goes
  // out. Format 3's TOCs keep 24 bytes of each digest: pages are checked against those as they are
  // decoded, and the image digest over the digests of the decoded pages once all are (below).
  const expected = Buffer.from(header.imageDigest).toString('hex');
  if (expected !== record.imageDigest || (!numbered && imageDigest(pages, header.byteLength).toString('hex') !== expected)) {
    throw new CorruptError(`snapshot ${record.id}: manifest does not match its image digest`);
  }
  // Unverified here (the reader verifies): no whole digests to check the image digest with.
  const unverified = numbered !== undefined && sink.readerVerifies === true;
  const decoded = numbered && !unverified && new PageTable(pages.pageCount);
  if (decoded) decoded.kinds.set(pages.kinds.subarray(0, pages.pageCount));
  const windows: { pages: number; out: Promise<WindowResult> }[] = [];
  let done = 0;
  const total = header.byteLength;
  const direct = sink.filePath !== undefined && sink.writeAt !== undefined;
  const windowPages = Math.min(SLAB_PAGES, Math.max(1, sink.windowPages ?? WINDOW_PAGES));
  for (let first = 0; first < pages.pageCount || windows.length > 0;) {
    while (first < pages.pageCount && windows.length < RESTORE_WINDOWS_IN_FLIGHT) {
      const n = Math.min(windowPages, pages.pageCount - first);
      const output = direct
        ? { path: sink.filePath!, name: sink.name ?? sink.filePath!, position: first * PAGE_SIZE, limit: total }
        : undefined;
      const w = restoreWindow(store, record.id, pages, first, n, output, chunkNumbers, unverified);
      w.catch(() => undefined); // surfaced when awaited, in order
      windows.push({ pages: n, out: w });
      first += n;
    }
    const windowFirst = done / PAGE_SIZE;
    const next = windows.shift()!;
    const { out, actual } = await next.out;
    if (decoded) decoded.digests.set(actual.subarray(0, next.pages * DIGEST_BYTES), windowFirst * DIGEST_BYTES);
    const windowBytes = Math.min(next.pages * PAGE_SIZE, total - done);
    if (out.length > 0 || !direct) {
      // Not written by a worker (no file output, or a page needed the main thread's retry path).
      const bytes = out.subarray(0, windowBytes);
      if (sink.writeAt) await writeNonZeroRuns(sink.writeAt.bind(sink), pages, windowFirst, bytes, done);
      else await sink.write(bytes, actual, pages.kinds.subarray(windowFirst, windowFirst + next.pages));
      store.slabs.give(out); // written: the slab (if it is one) can take the next window
    }
    done += windowBytes;
    onProgress?.(done, total);
  }
  // Every page matched its TOC prefix; the whole digests must make the committed image digest.
  if (decoded && imageDigest(decoded, header.byteLength).toString('hex') !== expected) {
    throw new CorruptError(`snapshot ${record.id}: the restored pages do not make its image digest`);
  }
  await sink.setLength?.(total);
}

/**
 * Format 3: the whole digests (32 B a page, zero for a zero page) of the pages of snapshot `id`
 * whose window holds a page `wanted` names, computed from their bytes by the page workers as a
 * restore decodes them (each checked against its TOC prefix). What a session inheriting pages from
 * a format-3 parent needs for its image digest: a TOC keeps 24 bytes of each digest.
 */
export async function wholeDigests(
  store: Store,
  id: string,
  pages: PageTable,
  numbers: { numbers: ArrayLike<number> },
  wanted: Uint8Array,
): Promise<Uint8Array> {
  const out = new Uint8Array(pages.pageCount * DIGEST_BYTES);
  const chunkNumbers = numbers.numbers;
  const inFlight: { first: number; n: number; result: Promise<WindowResult> }[] = [];
  const settle = async () => {
    const w = inFlight.shift()!;
    const { out: bytes, actual } = await w.result;
    out.set(actual.subarray(0, w.n * DIGEST_BYTES), w.first * DIGEST_BYTES);
    store.slabs.give(bytes);
  };
  for (let first = 0; first < pages.pageCount; first += WINDOW_PAGES) {
    const n = Math.min(WINDOW_PAGES, pages.pageCount - first);
    if (!wanted.subarray(first, first + n).includes(1)) continue;
    const result = restoreWindow(store, id, pages, first, n, undefined, chunkNumbers);
    result.catch(() => undefined); // surfaced when settled, in order
    inFlight.push({ first, n, result });
    if (inFlight.length >= RESTORE_WINDOWS_IN_FLIGHT) await settle();
  }
  while (inFlight.length > 0) await settle();
  return out;
}

/** Writes the runs of non-zero pages of one window at their positions; zero runs stay holes. */
async function writeNonZeroRuns(
  writeAt: (b: Uint8Array, pos: number) => Promise<void>,
  pages: PageTable,
  firstPage: number,
  bytes: Uint8Array,
  position: number,
): Promise<void> {
  const n = Math.ceil(bytes.length / PAGE_SIZE);
  for (let i = 0; i < n;) {
    if (pages.kinds[firstPage + i] === PageKind.Zero) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < n && pages.kinds[firstPage + j] !== PageKind.Zero) j++;
    await writeAt(bytes.subarray(i * PAGE_SIZE, Math.min(bytes.length, j * PAGE_SIZE)), position + i * PAGE_SIZE);
    i = j;
  }
}

type WindowOutput = { path: string; name: string; position: number; limit: number };
/** A window's bytes (empty when a worker wrote them), and the digests computed from them (32 B a page). */
type WindowResult = { out: Uint8Array; actual: Uint8Array };
/**
 * Format 3: each page's chunk number, located in the index as it is when asked. Data, not a locator
 * closure: a closure made per restore and called in restoreWindowOnce's loop was inlined into its
 * optimised code as a constant, and when the restore ended and it was collected V8 threw that code
 * away ("weak objects") and compiled the function again on the next restore: 40-104 ms of compiler
 * thread each time (bench/RESULTS.md, issue 12, session 14).
 */
type ChunkNumbers = ArrayLike<number>;

async function restoreWindow(
  store: Store,
  snapshotId: string,
  pages: PageTable,
  first: number,
  n: number,
  output?: WindowOutput,
  chunkNumbers?: ChunkNumbers,
  unverified = false,
): Promise<WindowResult> {
  try {
    return await restoreWindowOnce(store, snapshotId, pages, first, n, false, output, chunkNumbers, unverified);
  } catch (err) {
    // gc may have moved chunks and deleted their old pack after we located them: locate again,
    // exactly, and retry once before calling it corruption.
    if (!(err instanceof PackReadError)) throw err;
    return restoreWindowOnce(store, snapshotId, pages, first, n, true, output, chunkNumbers, unverified);
  }
}

class PackReadError extends CorruptError {}

async function restoreWindowOnce(
  store: Store,
  snapshotId: string,
  pages: PageTable,
  first: number,
  n: number,
  exactOnly: boolean,
  output?: WindowOutput,
  chunkNumbers?: ChunkNumbers,
  /** Decode only (the reader verifies): only with chunkNumbers, whose locations are exact. */
  unverified = false,
): Promise<WindowResult> {
  const slots: number[] = [];
  for (let i = 0; i < n; i++) if (pages.kinds[first + i] === PageKind.Digest) slots.push(i);
  if (slots.length === 0) {
    // All zero: nothing to read.
    const out = output ? new Uint8Array(0) : store.slabs.take(n * PAGE_SIZE);
    zeroFill(out);
    return { out, actual: new Uint8Array(n * DIGEST_BYTES) };
  }
  const digestOf = (slot: number) => pages.digests.subarray((first + slot) * DIGEST_BYTES, (first + slot + 1) * DIGEST_BYTES);

  // Locate every chunk: the table hint, or the exact index when the hint is missing or ambiguous.
  const locs: (ChunkLocation | undefined)[] = new Array(slots.length);
  const exact: number[] = [];
  for (let k = 0; k < slots.length; k++) {
    if (chunkNumbers) {
      locs[k] = store.numbered!.locate(chunkNumbers[first + slots[k]])?.location;
      continue;
    }
    const hit = exactOnly ? undefined : store.table.get(pages.digests, (first + slots[k]) * DIGEST_BYTES);
    if (hit && !hit.ambiguous) locs[k] = hit.location;
    else exact.push(k);
  }
  if (exact.length > 0) {
    const found = await store.lookupExact(exact.map((k) => digestOf(slots[k])));
    exact.forEach((k, j) => (locs[k] = found[j]));
  }
  for (let k = 0; k < slots.length; k++) {
    if (!locs[k])
      throw new CorruptError(
        `snapshot ${snapshotId}: chunk ${hex(digestOf(slots[k]))} (page ${first + slots[k]}) is not in the index; run 'vnstore check'`,
      );
  }

  // Plan reads in (pack, offset) order, coalescing near neighbours; a worker reads, decodes, verifies.
  const order = slots.map((_, k) => k).sort((a, b) => locs[a]!.pack - locs[b]!.pack || locs[a]!.offset - locs[b]!.offset);
  const readPack: number[] = [];
  const readOffset: number[] = [];
  const readLength: number[] = [];
  const m = order.length;
  const chunkRead = new Uint32Array(m);
  const chunkOffset = new Uint32Array(m);
  const lengths = new Uint32Array(m);
  const codecs = new Uint8Array(m);
  let members: Uint8Array | undefined;
  const chunkSlots = new Uint32Array(m);
  const digests = new Uint8Array(m * DIGEST_BYTES);
  for (let a = 0; a < m;) {
    const start = locs[order[a]]!;
    let end = start.offset + start.storedLength;
    let b = a + 1;
    while (b < m) {
      const l = locs[order[b]]!;
      if (l.pack !== start.pack || l.offset > end + COALESCE_GAP_BYTES || l.offset + l.storedLength - start.offset > MAX_READ_BYTES) break;
      end = Math.max(end, l.offset + l.storedLength);
      b++;
    }
    const r = readPack.length;
    readPack.push(start.pack);
    readOffset.push(start.offset);
    readLength.push(end - start.offset);
    for (let c = a; c < b; c++) {
      const k = order[c];
      const l = locs[k]!;
      chunkRead[c] = r;
      chunkOffset[c] = l.offset - start.offset;
      lengths[c] = l.storedLength;
      codecs[c] = l.codec;
      if (l.member !== undefined) (members ??= new Uint8Array(m))[c] = l.member;
      chunkSlots[c] = slots[k];
      digests.set(digestOf(slots[k]), c * DIGEST_BYTES);
    }
    a = b;
  }
  const result = await store.pool.restore({
    kind: 'restore',
    packsDir: store.packs.packsDir,
    windowPages: n,
    readPack: Uint32Array.from(readPack),
    readOffset: Float64Array.from(readOffset),
    readLength: Uint32Array.from(readLength),
    chunkRead,
    chunkOffset,
    lengths,
    codecs,
    members,
    slots: chunkSlots,
    digests,
    // Format 3 (located by number): compare the TOC's 24-byte prefix.
    digestBytes: chunkNumbers ? TOC_DIGEST_BYTES : undefined,
    verify: !unverified,
    output,
    window: output ? undefined : store.slabs.take(n * PAGE_SIZE),
  });
  if (result.writeError) {
    throw fromSystemError(
      Object.assign(new Error(result.writeError.message), { code: result.writeError.code }),
      `writing ${output?.name ?? 'output'}`,
    );
  }
  if (result.readError) {
    throw new PackReadError(
      `snapshot ${snapshotId}: pack ${packFileName(result.readError.pack)}: ${result.readError.message}; run 'vnstore check'`,
    );
  }
  for (const c of result.bad) {
    const k = order[c];
    // A table hint can point at the wrong chunk only through a fingerprint clash: retry exactly once.
    const [loc] = chunkNumbers ? [undefined] : await store.lookupExact([digestOf(slots[k])]);
    const prev = locs[k]!;
    if (loc && (loc.pack !== prev.pack || loc.offset !== prev.offset)) {
      const page = await store.packs.readVerified(loc, digestOf(slots[k]));
      if (page) {
        result.out.set(page, slots[k] * PAGE_SIZE);
        result.actual!.set(digestOf(slots[k]), slots[k] * DIGEST_BYTES); // a whole digest: formats 1/2 only come here
        continue;
      }
    }
    throw new CorruptError(
      `snapshot ${snapshotId}: chunk ${hex(digestOf(slots[k]))} (page ${first + slots[k]}) in pack ${packFileName(prev.pack)} is corrupt (${unverified ? 'it does not decode' : 'digest mismatch'}); ${FIND_DAMAGE_ADVICE}`,
    );
  }
  return { out: result.out, actual: result.actual! };
}
